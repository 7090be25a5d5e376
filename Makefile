# slaflow: the two commands are `make demo` and `make test`; the rest are helpers.
# Every target installs what it needs first (a venv in .venv, reused while pyproject.toml
# is unchanged; pip's wheel cache makes a reinstall fast).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slaflow-installed
PYTEST_ARGS ?=

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install browser-deps test-browser rollback undeploy demo test test-quick test-fast \
        test-integration test-e2e test-cluster lint docs ray-up ray-down \
        mlflow-ui airflow chaos bench-lifecycle bench-data bench-training bench-sim bench-federated bench-spark bench-spark-sim bench-serving clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]" \
	    --config-settings editable_mode=compat
	@if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then \
	  echo "[slaflow] nvidia-smi lists a GPU: installing TensorFlow's CUDA build (extra 'gpu')"; \
	  $(PY) -m pip install --disable-pip-version-check -q -e ".[dev,gpu]" \
	    --config-settings editable_mode=compat; fi
	@touch $(STAMP)

install: $(STAMP)

## Run ml_lifecycle end to end on the embedded defaults; last stdout line is a JSON summary.
## CONF=contract.json for your own contract fields, VERBOSE=1 to see the logs live.
demo: install
	$(PY) -m slaflow.cli demo $(if $(CONF),--conf $(CONF)) $(if $(VERBOSE),--verbose)

## The suite: unit, integration (real Ray/Spark/MLflow/Serve), end-to-end DAG runs, and the
## production topology (PostgreSQL, MLflow server, 3-node Ray, Spark standalone, Airflow
## services as real processes), in that order.
test: install browser-deps
	$(PY) -m pytest $(PYTEST_ARGS)

## Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser-deps:
	@test -x /usr/bin/chromium || { echo "[slaflow] installing Debian's chromium for the browser tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q chromium >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

test-browser: install browser-deps
	$(PY) -m pytest -m browser -s $(PYTEST_ARGS)

## The inner loop: unit tests and the integration tests of one engine without Ray (a few min).
test-quick: install
	$(PY) -m pytest -m "unit or quick" $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

test-cluster: install
	$(PY) -m pytest -m cluster -s $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy policies

## Regenerate the reference generated from code (docs/contract.md; a test checks it).
docs: install
	$(PY) -m slaflow.cli contract-docs > docs/contract.md

## Roll MODEL's champion back to previous_champion (registry and serving): make rollback MODEL=slaflow-digits
rollback: install
	$(PY) -m slaflow.cli rollback --model "$(MODEL)"

## Take MODEL off the Serve endpoint; its CPUs return to the cluster, the registry stays.
undeploy: install
	$(PY) -m slaflow.cli undeploy --model "$(MODEL)"

## The embedded, long-lived Ray cluster (Serve applications live on it).
ray-up: install
	$(PY) -m slaflow.cli ray-up

ray-down: install
	$(PY) -m slaflow.cli ray-down

## MLflow UI on the same store the DAGs write to: http://127.0.0.1:5000
mlflow-ui: install
	eval "$$($(PY) -m slaflow.cli env)" && $(VENV)/bin/mlflow ui \
	    --backend-store-uri "$$SLAFLOW_MLFLOW_TRACKING_URI" --host 127.0.0.1 --port 5000

## Airflow UI with the DAGs loaded (standalone, SQLite): http://127.0.0.1:8080
airflow: install ray-up
	eval "$$($(PY) -m slaflow.cli env)" && $(VENV)/bin/airflow standalone

## Stage timings of ml_lifecycle: a first run from an empty SLAFLOW_HOME, then 2 warm runs
## -> benchmarks/results/lifecycle.json (stops the embedded Ray cluster first)
bench-lifecycle: install
	$(PY) benchmarks/lifecycle.py --runs 3 --clean

## Serving under the contract: overhead, bursty (slaflow vs static peak vs Serve default),
## mixed (router vs single tiers) on real Serve + the cluster-scale simulation
## -> benchmarks/results/serving.json (about 15 min on 2 cores)
bench-serving: install
	$(PY) benchmarks/serving.py

## The fault and fuzz tests (marker chaos: faults injected, hostile input fuzzed, on the real
## engines and the cluster topology) -> benchmarks/results/reliability.json (`make test`
## writes the same figures to test-artifacts/reliability.json)
chaos: install browser-deps
	SLAFLOW_RELIABILITY_OUT=benchmarks/results/reliability.json $(PY) -m pytest -m chaos $(PYTEST_ARGS)

## The data path at scale: prepare + train 5 M rows x 32 features, next to a plain Ray Train +
## Ray Data loop -> benchmarks/results/data_scale.json (ROWS=, FEATURES= to change the table)
bench-data: install
	$(PY) benchmarks/data_scale.py $(if $(ROWS),--rows $(ROWS)) $(if $(FEATURES),--features $(FEATURES))

## Training under the contract: real contracts + simulator -> benchmarks/results/training_deadline.json
bench-training: install
	$(PY) benchmarks/training.py

## Only the cluster simulator (seconds; no engines needed)
bench-sim: install
	$(PY) benchmarks/training.py --skip-real

## Federated training: static E vs hyperFL linear/quadratic, 5 seeds -> benchmarks/results/federated.json
bench-federated: install
	$(PY) benchmarks/federated.py --seeds 5

## dynaSpark on a real Spark standalone master (0/20/40% slack vs static) + the simulated case.
bench-spark: install
	$(PY) benchmarks/spark_deadline.py --out benchmarks/results/spark_deadline.json

## dynaSpark's policy on a simulated multi-application Spark cluster (no Spark needed).
bench-spark-sim: install
	$(PY) benchmarks/spark_sim.py --seeds 3 --out benchmarks/results/spark_simulated.json

clean: ray-down
	rm -rf .slaflow
