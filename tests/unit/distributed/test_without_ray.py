"""``detect --workers`` without the distributed extra: one line naming it; the single path unchanged."""

from __future__ import annotations

import sys

import numpy as np

from flair_deploy.cli import main


def test_workers_without_ray_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path, write_geotiff):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    src = write_geotiff(np.zeros((5, 64, 64), np.uint8))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    try:
        main(["detect", str(src), "-m", str(model), "--out", str(tmp_path / "map.tif"), "--workers", "2"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1
    assert "flair-deploy[distributed]" in err[0]
    assert not list(tmp_path.glob("map*"))
