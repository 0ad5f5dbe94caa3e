# Two commands matter: `make run` (add FEED=sim for the offline simulator, CLUSTER=1 for a Redis Cluster) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FEED ?= live
PORT ?= 8000
CLUSTER ?=
export PORT FEED

.PHONY: run test test-cluster bench-cluster bench-fanout bench-fanout-tail bench-memory bench-ingest-ratio bench-orders lint demo bench clean venv soak-ws soak-faults soak-model fuzz-long

$(STAMP): pyproject.toml gateway/web/package-lock.json
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# The dashboard's charting library (gateway/web/package-lock.json); without npm the page says so.
	if command -v npm >/dev/null 2>&1; then \
	  cd gateway/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
	    || echo "npm ci failed: the dashboard will run without its chart"; \
	else echo "npm not found: the dashboard will run without its chart (gateway/web)"; fi
	touch $(STAMP)

venv: $(STAMP)

# CLUSTER=1: the same system on an embedded 3-master Redis Cluster (data/cluster), two gateways (PORT, PORT+1) and
# two matchers; CLUSTER_REPLICAS=1 adds a replica per master (docs/operations.md "make run CLUSTER=1").
# FEED=replay [FROM=2026-11-30T10:00] [TO=...] [SPEED=10] [REPLAY=path ...]: a recorded period (python -m recorder ls)
# through the whole system, in the space 'replay' (docs/recording.md); REPLAY=../shared/exchange-captures for those.
run: $(STAMP)
	$(BIN)/python -m launcher --feed $(FEED)$(if $(filter-out 0 no false,$(CLUSTER)), --cluster)$(if $(REPLAY), --replay $(REPLAY))

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy  # the packages checked are [tool.mypy] files in pyproject.toml
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-cluster

# The same suites again with every process on an embedded 3-master Redis Cluster (SR_TEST_CLUSTER=1, tests/servers.py):
# every REST route and WebSocket stream, hostile input, schemathesis, the ledger state machine.
CLUSTER_SUITES = tests/test_trading_api.py tests/test_trading_ws.py tests/test_gateway_ws.py tests/test_auth_http.py \
	tests/test_amounts_json.py tests/test_gateway_health.py tests/test_openapi_info.py tests/test_trading_concurrency.py \
	tests/test_hostile_http.py tests/test_fuzz_rest.py tests/test_fuzz_rest_nasty.py tests/test_fuzz_ws.py \
	tests/test_ws_abuse.py tests/test_ledger_model.py tests/test_matcher.py tests/test_matcher_shards.py tests/test_book_stream.py \
	tests/test_rest_fast.py tests/test_accounts.py
test-cluster: $(STAMP)
	SR_TEST_CLUSTER=1 $(BIN)/python -m pytest $(CLUSTER_SUITES)

# Fault injection in a loop (docs/operations.md): SOAK_ROUNDS (8), SOAK_SEED (1), SOAK_MAX_S (900) bound it.
soak-faults: $(STAMP)
	$(BIN)/python -m pytest -s tests/soak_faults.py

fuzz-long: $(STAMP)  # every fuzz property with 2000 examples and no fixed seed (docs/fuzzing.md)
	FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest --timeout=3600 tests/test_fuzz_rest.py tests/test_fuzz_rest_nasty.py \
		tests/test_hostile_http.py tests/test_fuzz_ws.py tests/test_fuzz_frames.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: $(STAMP)  # against a running `make run FEED=sim` (same PORT)
	$(BIN)/python -m client.demo --url http://127.0.0.1:$(PORT)

soak-model: $(STAMP)  # the ledger state machine, longer: FUZZ_EXAMPLES examples of MODEL_STEPS steps, new seeds
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} MODEL_STEPS=$${MODEL_STEPS:-50} $(BIN)/python -m pytest -s -p no:cacheprovider --timeout 0 tests/test_ledger_model.py

bench: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-memory: $(STAMP)  # gateway RSS per connected client, against a bare websockets server (docs/gateway-ws.md)
	$(BIN)/python -m bench.ws_memory

bench-fanout: $(STAMP)  # pushed messages per CPU-second vs a bare websockets broadcast() server, one run; p99 at 500
	$(BIN)/python -m bench.fanout_ratio

bench-fanout-tail: $(STAMP)  # one client on every stream kind: tick-to-client p99 of its best_touch and trades
	$(BIN)/python -m bench.fanout_tail

bench-orders: $(STAMP)  # REST CPU per request as ratios to a trivial FastAPI route, one run (bench/rest_ratio.py)
	$(BIN)/python -m bench.rest_ratio

bench-cluster: $(STAMP)  # one gateway vs two on an embedded Redis Cluster, one run (docs/scaling.md)
	$(BIN)/python -m bench.cluster_gateways

# A client that stops reading, for minutes: WS_SOAK_STOPPED paused client processes, the feed kept going
# WS_SOAK_S seconds; RSS bounded, every stopped client dropped, a good client gets every trade (tests/test_ws_abuse.py).
WS_SOAK_S ?= 180
WS_SOAK_STOPPED ?= 20
soak-ws: $(STAMP)
	SR_SOAK_WS_SECONDS=$(WS_SOAK_S) SR_SOAK_WS_STOPPED=$(WS_SOAK_STOPPED) $(BIN)/python -m pytest \
		tests/test_ws_abuse.py -k stopped -s --timeout $$(( $(WS_SOAK_S) + 300 ))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

bench-ingest-ratio: $(STAMP)  # our ingestors vs tardis-dev over real sockets, CPU per frame (docs/ingestor.md)
	$(BIN)/python -m bench.ingest_ratio
