#!/usr/bin/env bash
# The runtime install, for real: `pip install .` (no extras) into a fresh venv must not bring PyTorch,
# and must map a raster with an ONNX model exported by the full environment, pixel for pixel as the
# full environment maps it. Called by `make runtime-check` (and so by .ci/run).
#
#   .ci/runtime-check.sh FULL_PYTHON WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
full_python=$1
work=$2
rt="$work/venv"

rm -rf "$work"
mkdir -p "$work"
start=$SECONDS

python3 -m venv "$rt"
# From a clean copy of the sources: setuptools' build/ in the checkout can hold modules since removed.
mkdir -p "$work/source"
tar -c --exclude=__pycache__ --exclude='*.egg-info' pyproject.toml README.md src | tar -x -C "$work/source"
# The base install only: the constraints pin what the extras would bring, should anything pull them.
"$rt/bin/python" -m pip install -q -c .ci/constraints.txt "$work/source"
echo "runtime check: bare venv installed ($((SECONDS - start)) s)"

# Torch (or anything else of the extras) in the bare venv fails the check.
env -u PYTHONPATH "$rt/bin/python" - <<'EOF'
import importlib.util
import sys

from flair_deploy._optional import EXTRAS

found = sorted(m for modules in EXTRAS.values() for m in modules if importlib.util.find_spec(m) is not None)
if found:
    sys.exit(f"runtime check: `pip install .` brought {', '.join(found)}; the base install must not")
EOF

# A small network exported by the full environment (the exporter `flair-deploy export` uses), and a
# 5-band GeoTIFF of 320 x 240 px.
"$full_python" - "$work" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from flair_deploy.description import ArchitectureSpec, ModelDescription, class_preset
from flair_deploy.exports.onnx import export_onnx
from flair_deploy.models import build_model

work = Path(sys.argv[1])
desc = ModelDescription(
    name="runtime-check",
    tile_size=64,
    overlap=16,
    architecture=ArchitectureSpec(arch="unet", encoder="resnet18", encoder_depth=3),
    classes=class_preset("flair15"),
)
export_onnx(build_model(desc), desc, work / "model.onnx", dynamic_hw=True)
data = np.random.default_rng(0).integers(0, 255, (5, 240, 320), dtype=np.uint8)
profile = {"driver": "GTiff", "width": 320, "height": 240, "count": 5, "dtype": "uint8"}
with rasterio.open(
    work / "ortho.tif", "w", crs="EPSG:2154", transform=from_origin(650000, 6860000, 0.2, 0.2), **profile
) as dst:
    dst.write(data)
EOF

# The bare venv runs its installed copy, whatever PYTHONPATH says.
echo "runtime check: model exported by the full environment ($((SECONDS - start)) s)"
bare="env -u PYTHONPATH $rt/bin/flair-deploy"
$bare inspect "$work/model.onnx" > /dev/null
$bare detect "$work/ortho.tif" -m "$work/model.onnx" -o "$work/map-runtime.tif"
$bare benchmark -m "$work/model.onnx" --raster "$work/ortho.tif" --backends onnxruntime --batch 1 \
    --min-time 0.5 --min-iters 3 --warmup 1 --parity-tiles 2 --json "$work/bench.json" > /dev/null
"$full_python" -m flair_deploy detect "$work/ortho.tif" -m "$work/model.onnx" -o "$work/map-full.tif" > /dev/null

"$full_python" - "$work" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import rasterio

work = Path(sys.argv[1])
with rasterio.open(work / "map-runtime.tif") as a, rasterio.open(work / "map-full.tif") as b:
    if a.shape != (240, 320) or not np.array_equal(a.read(), b.read()):
        sys.exit("runtime check: the bare install's map differs from the full environment's")
EOF

rt_mb=$(du -sm "$rt" | cut -f1)
full_mb=$(du -sm "$(dirname "$(dirname "$full_python")")" | cut -f1)
echo "runtime check passed in $((SECONDS - start)) s: bare install ${rt_mb} MB (no torch), full environment ${full_mb} MB"
rm -rf "$work"
