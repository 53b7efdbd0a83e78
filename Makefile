# cvdeploy developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
EXTRAS ?= all,dev
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint layers typecheck unit bench bench-table soak load fuzz \
	reliability clean container-tools base-image package-test bench-deploy

# torch is pinned first (the CPU wheel), then every other package is installed under a
# constraint that keeps that torch: nothing may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e '.[$(EXTRAS)]'
	$(PY) -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/cvdeploy demo --out demo-out

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The layering of the architecture ([tool.importlinter] in pyproject.toml): cli > workflows >
# stages > zoo > pipeline > runtime > core, no cycles, stages used only through their __init__.
layers: venv
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy src/cvdeploy

unit: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint layers typecheck unit

# The inner loop: everything not marked slow (make test still runs everything).
test-fast: lint layers typecheck
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The benchmarks write benchmarks/results/*.json (each skips with a message without
# ../shared/realworld); the last step regenerates README.md's performance table from them.
# BENCH_QUANTIZE_ARGS= (empty) adds the long --max-drop runs of the quantize benchmark.
BENCH_QUANTIZE_ARGS ?= --skip-budget

bench: venv
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/e2e_vs_naive.py
	$(PY) benchmarks/quantize.py $(BENCH_QUANTIZE_ARGS)
	$(PY) benchmarks/quantize.py --model zoo $(BENCH_QUANTIZE_ARGS)
	$(PY) benchmarks/ort_placement.py
	$(PY) benchmarks/bench_repeat.py
	$(PY) benchmarks/update_readme.py

# Only the README table, from the JSON results already there (nothing is timed).
bench-table: venv
	$(PY) benchmarks/update_readme.py

# Reliability (benchmarks/reliability.py, benchmarks/results/reliability.json, README
# "Reliability"). `make reliability`: the counts (fuzzing, attacks, faults; ~15 min, any
# machine). `make load`: mixed valid and invalid traffic at 32 in flight for LOAD_SECONDS
# (10 min). `make soak`: the same mix for SOAK_SECONDS (1 hour), RSS flat within 5 %.
# Timing figures need a quiet machine. `make fuzz`: the fuzz and property tests, 20x longer.
# (benchmarks/serve_soak.py is the earlier valid-traffic-only soak, run directly.)
SOAK_SECONDS ?= 3600
LOAD_SECONDS ?= 600
FUZZ_EXAMPLES ?= 500

soak: venv
	$(PY) benchmarks/reliability.py soak --soak-seconds $(SOAK_SECONDS)

load: venv
	$(PY) benchmarks/reliability.py load --load-seconds $(LOAD_SECONDS)

reliability: venv
	$(PY) benchmarks/reliability.py fuzz attacks faults --fuzz-examples $(FUZZ_EXAMPLES)

fuzz: venv
	CVDEPLOY_FUZZ=long $(PY) -m pytest tests/reliability/test_fuzz_api.py tests/reliability/test_properties.py $(PYTEST_ARGS)

# The container image, built and run for real (tests/deploy/test_container.py): podman (with
# runc, the cgroupfs manager and catatonit for pods) from Debian, and a local base image made
# with debootstrap (no registry is reachable for python:3.11-slim). About 3 minutes the first
# time (the base image), then about 1 minute.
container-tools:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v catatonit >/dev/null || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends podman runc debootstrap catatonit >/dev/null || \
	    { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman runc debootstrap catatonit >/dev/null; }; }

base-image: container-tools
	sh tests/deploy/base_image.sh

package-test: venv base-image
	$(PY) -m pytest -m slow tests/deploy/test_container.py -s $(PYTEST_ARGS)

# Ray Data vs in-process batch throughput and the served image's start-up time: writes
# benchmarks/results/deploy.json (see the README's "Deploying" section).
bench-deploy: venv
	$(PY) benchmarks/deploy.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
