# Every target sets up what it needs: a .venv with the project and its extras, made on first use
# and refreshed when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo scale-demo soak test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kairos-core needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m kairos_core $(ARGS)

# Offline: the bundled simulator on 127.0.0.1:$(DEMO_PORT), and the service pointed at it. ARGS
# reach both, so --symbols is served by the simulator and streamed by the service.
DEMO_PORT ?= 9443
demo: $(STAMP)
	@if $(BIN)/python -c 'import socket, sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", $(DEMO_PORT))) != 0)'; then \
		echo "port $(DEMO_PORT) is in use: run make demo DEMO_PORT=<a free port>"; exit 1; fi
	@$(BIN)/python -m kairos_core simulate --port $(DEMO_PORT) --rate 20 $(ARGS) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT; \
	until $(BIN)/python -c 'import socket, sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", $(DEMO_PORT))))'; do \
		kill -0 $$sim 2>/dev/null || { echo "the simulator did not start (is port $(DEMO_PORT) free? set DEMO_PORT=...)"; exit 1; }; \
		sleep 0.1; \
	done; \
	$(BIN)/python -m kairos_core --binance-url ws://127.0.0.1:$(DEMO_PORT)/stream \
		--binance-rest-url http://127.0.0.1:$(DEMO_PORT) --okx-rest-url http://127.0.0.1:$(DEMO_PORT) \
		--okx-url ws://127.0.0.1:$(DEMO_PORT)/ws/v5/public $(ARGS)

# Scale-out on NATS JetStream (docs/scaling.md): simulators, 2 ingest and 2 persist processes, one
# of each killed mid-run; prints sent / stored / missing / duplicated. NATS: 127.0.0.1:4222, else
# the nats-server of the test extra; PostgreSQL: 127.0.0.1:5432 (or ARGS="--database-url URL").
scale-demo: $(STAMP)
	$(BIN)/python -m tests.e2e.scale_out $(ARGS)

# The soak (tests/proof/soak.py): 1,000,000 trades over 20 symbols with every simulator fault on and
# a database outage; prints sent / stored / missing / duplicated / backfilled / reconnects / rotations.
soak: $(STAMP)
	$(BIN)/python -m tests.proof.soak $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/persistence.py
	$(BIN)/python bench/scale_out.py
	$(BIN)/python bench/metrics.py

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .mypy_cache .ruff_cache .hypothesis
