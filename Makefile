# SayPI: every target creates the virtualenv and installs what it needs when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint migrate bench fleet fuzz venv clean

run: $(STAMP)        ## serve on :8080 (embedded PostgreSQL when DATABASE_URL is unset)
	$(BIN)/python run.py serve

test: $(STAMP)       ## the whole suite against a real PostgreSQL and real gunicorn
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

migrate: $(STAMP)    ## apply migrations and exit
	$(BIN)/python run.py migrate

bench: $(STAMP)      ## throughput and latency against reference apps, scale-out and tracing rows; see bench-results/
	$(BIN)/python -m bench
	$(BIN)/python -m bench tracing
	$(BIN)/python -m bench events

fleet: $(STAMP)      ## 3 instances behind HAProxy: rolling restart, crash, database restart
	$(BIN)/python -m bench fleet

fuzz: $(STAMP)       ## a longer schema-driven fuzzing campaign than the test suite runs
	SAYPI_FUZZ_EXAMPLES=$${SAYPI_FUZZ_EXAMPLES:-500} $(BIN)/python -m pytest -q tests/test_schema_fuzz.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[embedded,client,test,bench]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
