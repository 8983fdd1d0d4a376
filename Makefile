# cowrie-stats: the two README commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS_VENV := .venv-tools
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
GRPC_PORT ?= 50051
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install tools run test test-long lint typecheck proto proto-lint unit bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Tools the quality gates need beyond the app venv: buf (npm) and the
# container/cluster validators (their own venv: their pins must not touch ours).
tools: $(BUF) $(TOOLS_VENV)/.installed

$(BUF):
	mkdir -p .tools
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(TOOLS_VENV)/.installed: deploy/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet -r deploy/tools-requirements.txt
	touch $@

run: install
	$(BIN)/cowrie-stats sample var/sample/cowrie.json
	$(BIN)/cowrie-stats migrate
	$(BIN)/cowrie-stats ingest --json var/sample
	COWRIE_STATS_GRPC_PORT=$(GRPC_PORT) $(BIN)/cowrie-stats serve

proto: install
	$(BIN)/python scripts/gen_protos.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict cowrie_stats tests scripts bench

proto-lint: tools
	$(BUF) lint
	@tag=$$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true); \
	if [ -n "$$tag" ]; then \
		echo "buf breaking against $$tag"; $(BUF) breaking --against ".git#tag=$$tag"; \
	else echo "buf breaking: no release tag yet, nothing to compare against"; fi

unit: install tools
	COWRIE_STATS_REQUIRE_POSTGRES=1 COWRIE_STATS_REQUIRE_TOOLS=1 \
		$(BIN)/pytest --cov --cov-branch --cov-report=term $(PYTEST_ARGS)

test: install tools lint typecheck proto-lint
	./scripts/ensure-postgres.sh >/dev/null
	$(MAKE) --no-print-directory unit

# The long variants of the load, overload, fuzz and chaos tests (minutes, not seconds),
# with the figures they print (-rA). The chaos test prints its seed;
# COWRIE_STATS_CHAOS_SEED=N replays that schedule.
test-long:
	COWRIE_STATS_LONG_TESTS=1 $(MAKE) --no-print-directory test PYTEST_ARGS="-rA $(PYTEST_ARGS)"

bench: install
	./scripts/ensure-postgres.sh >/dev/null
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
