# Two commands matter: `make run` (add FEED=sim for the offline simulator) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FEED ?= live
PORT ?= 8000
export PORT FEED

.PHONY: run test lint demo bench clean venv fuzz-long

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

fuzz-long: $(STAMP)  # every fuzz property with 2000 examples and no fixed seed (docs/fuzzing.md)
	FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest --timeout=3600 tests/test_fuzz_rest.py tests/test_fuzz_rest_nasty.py \
		tests/test_hostile_http.py tests/test_fuzz_ws.py tests/test_fuzz_frames.py

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)  # against a running `make run FEED=sim` (same PORT)
	$(BIN)/python -m client.demo --url http://127.0.0.1:$(PORT)

bench: $(STAMP)
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
