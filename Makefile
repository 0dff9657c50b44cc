# SayPI: every target creates the virtualenv and installs what it needs when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint migrate bench fleet fuzz venv clean

run: $(STAMP)        ## serve on :8080 and a relay beside it (embedded PostgreSQL when DATABASE_URL is unset)
	RELAY_BESIDE=$${RELAY_BESIDE:-true} $(BIN)/python run.py serve

test: lint           ## lint, then every tier: unit, in-process and end to end (real PostgreSQL, gunicorn, Redis, proxies)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## the unit and in-process tiers (and the benchmark's own tests): no PostgreSQL, seconds
	$(BIN)/python -m pytest -q -p no:schemathesis tests/unit tests/inprocess bench/tests

lint: $(STAMP)       ## ruff, the import contract (tests/unit/test_layers.py), the prose rules (test_docs.py), mypy
	$(BIN)/ruff check .
	$(BIN)/python tests/unit/test_layers.py
	$(BIN)/python tests/unit/test_docs.py
	$(BIN)/mypy

migrate: $(STAMP)    ## apply migrations and exit
	$(BIN)/python run.py migrate

bench: $(STAMP)      ## throughput and latency against reference apps, scale-out, tracing, overload and heavy-user rows; see bench-results/
	$(BIN)/python -m bench
	$(BIN)/python -m bench tracing
	$(BIN)/python -m bench overload
	$(BIN)/python -m bench heavy
	$(BIN)/python -m bench events
	$(BIN)/python -m bench peer

fleet: $(STAMP)      ## 3 instances behind HAProxy: rolling restart, crash, database restart
	$(BIN)/python -m bench fleet

fuzz: $(STAMP)       ## a longer schema-driven fuzzing campaign than the test suite runs
	SAYPI_FUZZ_EXAMPLES=$${SAYPI_FUZZ_EXAMPLES:-500} $(BIN)/python -m pytest -q tests/e2e/test_schema_fuzz.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[embedded,client,test,bench]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
