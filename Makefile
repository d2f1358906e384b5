# One entry point for people and CI. `make demo` sets up and runs the main job on built-in sample data;
# `make test` runs the test suite and `make runtime-check` the torch-free install (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c .ci/constraints.txt

.PHONY: setup test runtime-check lint demo bench gpu-check gpu-wheels clean

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the pinned CPU wheel, so nothing can pull the multi-GB CUDA build.
	$(PIP) torch==2.13.0
	# Every extra that runs on a CPU machine (train, export); gpu and tensorrt are for NVIDIA machines.
	$(PIP) -e ".[all,dev]"
	touch $@

setup: $(VENV)/.installed

# pytest exits 5 when a selection collects nothing (e.g. `make test ARGS="-m gpu"` on a CPU box):
# that is said plainly and not treated as a failure.
# Tests run on every core (pytest-xdist): each test is independent (own tmp folders, own Ray instance
# per worker process).
test: setup
	@$(PY) -m pytest -n auto $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected for this selection"; rc=0; fi; exit $$rc

# `pip install .` alone (no extras) into a fresh venv must bring no torch and must map a raster with an
# ONNX model exported by the full environment, as the full environment maps it (.ci/runtime-check.sh).
runtime-check: setup
	.ci/runtime-check.sh $(PY) build/runtime-check

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src

demo: setup
	$(VENV)/bin/flair-deploy demo --out demo-output

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only -p no:cacheprovider

# The whole GPU check in one call (benchmarks/gpu_check.py; docs/benchmarks.md, "GPU check"): CUDA when
# torch sees a GPU, else its CPU mode. Report in OUT: gpu-check.json/.md, logs.txt, the tools' own reports.
# No `setup` dependency: on the device machine (no network, no .venv) it runs under the image's python3.
OUT ?= build/gpu-check
GPU_CHECK_ARGS ?=
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_CHECK_PY) benchmarks/gpu_check.py --out $(OUT) $(GPU_CHECK_ARGS)

# Wheels of the project's dependencies that the GPU machine's image lacks (KINDS.md's package list), for
# Python 3.12 x86-64, pinned to the versions this project is tested with: about 37 MiB, which travel in
# .whl/ with the working tree (64 MiB in all). typing-extensions: pydantic 2.14 needs >= 4.16.
GPU_WHEELS := rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2 pydantic==2.14.4 \
	pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
	array-api-compat==1.16.0 segmentation-models-pytorch==0.6.0 onnxslim==0.1.98
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	@dups=$$(ls .whl | sed 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d); \
	if [ -n "$$dups" ]; then echo "two versions of: $$dups (keep one: pip on the device refuses both)"; exit 1; fi
	@du -sh .whl

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
