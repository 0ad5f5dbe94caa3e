# Two commands matter: `make run` (add FEED=sim for the offline simulator) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FEED ?= live
PORT ?= 8000
export PORT FEED

.PHONY: run test lint demo bench clean venv soak-model

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m launcher --feed $(FEED)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)  # against a running `make run FEED=sim` (same PORT)
	$(BIN)/python -m client.demo --url http://127.0.0.1:$(PORT)

soak-model: $(STAMP)  # the ledger state machine, longer: FUZZ_EXAMPLES examples of MODEL_STEPS steps, new seeds
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} MODEL_STEPS=$${MODEL_STEPS:-50} $(BIN)/python -m pytest -s -p no:cacheprovider --timeout 0 tests/test_ledger_model.py

bench: $(STAMP)
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
