# Taskplane: the targets a newcomer would guess. Every target installs what it needs.
SHELL := /bin/bash
VENV  ?= .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install run monitor check test chaos bench unit integration lint docs chart manifests lock clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install Taskplane with dev and test extras (pinned)
	@scripts/bootstrap.sh

run: install  ## start Redis, the API on :8000, a worker and the scheduler (free ports when taken); writes .run/env; Ctrl-C stops them all
	@$(BIN)/taskplane dev

monitor: install  ## the local stack plus a Prometheus loaded with the rules; prints its URL
	@scripts/monitoring-tools.sh
	@$(BIN)/taskplane dev --monitor

check: install  ## the fast loop (well under a minute): lint, types, unit tests, direct lifecycle tests
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/mypy
	$(BIN)/pytest -q tests/unit tests/lifecycle tests/workflows $(PYTEST_ARGS)

test: install  ## the whole suite: lint, unit, integration, monitoring, chart, chaos, fuzz and bench smoke (small sizes)
	@bench/install-tools.sh
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/mypy
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

unit: install  ## unit tests only (no services)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install  ## integration tests: real redis-server, Celery workers, gunicorn
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

chaos: install  ## the fault suite, the API fuzzing and the lifecycle model search at full size; prints the summary table
	CHAOS_SCALE=10 FUZZ_EXAMPLES=3000 MODEL_EXAMPLES=2000 CHAOS_RESULTS=bench/results/chaos-latest.json $(BIN)/pytest tests/chaos tests/security tests/lifecycle/test_model.py -p no:cacheprovider $(PYTEST_ARGS)

bench: install  ## every benchmark and the autoscaling experiment (~15 min): bench/results/, BENCHMARKS.md
	@bench/install-tools.sh
	$(BIN)/python -m bench

lint: install  ## ruff and mypy (the [tool.mypy] section of pyproject.toml)
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/mypy

docs: install  ## regenerate the settings table in README.md
	$(BIN)/python scripts/update_docs.py

chart: install  ## helm lint/template, schema and security checks of the chart and images
	@scripts/chart-tools.sh
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/pytest tests/chart -q

manifests: install  ## render k8s/ and the chart's generated files from the chart
	@scripts/chart-tools.sh
	PATH="$(CURDIR)/.tools/bin:$$PATH" scripts/render-manifests.sh

.PHONY: images
images:  ## build taskplane-api:local and taskplane-worker:local with Docker, podman or buildah
	@scripts/images.sh

lock:  ## re-pin requirements.lock and requirements-build.lock (hashed, for images) and requirements-dev.lock
	scripts/lock.sh
	rm -rf /tmp/taskplane-lock && python3 -m venv /tmp/taskplane-lock
	/tmp/taskplane-lock/bin/pip install -q '.[dev,test]'
	(echo "# Every dependency of development and tests (runtime included), pinned. Regenerate with: make lock"; \
	 /tmp/taskplane-lock/bin/pip freeze --exclude taskplane) > requirements-dev.lock

clean:  ## remove the virtualenv, tool cache and local stack data
	rm -rf $(VENV) .tools .run .pytest_cache .ruff_cache

.PHONY: flower celery
flower: install  ## Flower on 127.0.0.1:5555 (a free port if taken) for the stack `make run` runs here (.run/env); FLOWER_BASIC_AUTH=user:pass asks a login
	@. scripts/stack-env.sh && \
	port="$${FLOWER_PORT:-$$($(BIN)/python -c 'from taskplane.localproc import port_or_free; print(port_or_free(5555))')}" && \
	echo "Flower: http://127.0.0.1:$$port" && \
	$(BIN)/celery --broker="$$REDIS_URL" --config=taskplane.flowerconfig flower \
	  --address=127.0.0.1 --port="$$port" \
	  --conf="$$($(BIN)/python -c 'import taskplane.flowerconfig as c; print(c.__file__)')"

celery: install  ## Celery's own CLI against the stack `make run` runs here (.run/env), e.g. make celery ARGS="inspect ping"
	@. scripts/stack-env.sh && $(BIN)/celery --broker="$$REDIS_URL" $(ARGS)
