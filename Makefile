# One entry point for people and CI. `make demo` sets up and runs the main job on built-in sample data;
# `make test` runs the test suite and `make runtime-check` the torch-free install (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c .ci/constraints.txt

.PHONY: setup test runtime-check lint demo bench clean

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
test: setup
	@$(PY) -m pytest $(ARGS); rc=$$?; \
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

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
