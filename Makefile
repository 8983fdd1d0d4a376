# cowrie-stats: the two README commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS_VENV := .venv-tools
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
export PYTHONDONTWRITEBYTECODE := 1
# Errors only: setuptools warns about every editable install (nothing to act on), and a
# pip configuration with unreachable extra indexes warns about each of them.
PIP := PYTHONWARNINGS="ignore:Editable install" $(BIN)/pip --quiet --quiet

# `make run` is a demo: it reads no .env, ignores every database setting of the
# environment (it must never add its demo sensors to a configured database) and
# uses var/demo.db. The listen port follows COWRIE_STATS_GRPC_PORT (default 50051).
DEMO_DATABASE := $(CURDIR)/var/demo.db
DEMO := env -u COWRIE_STATS_DATABASE_URL_FILE -u COWRIE_STATS_DATABASE_PASSWORD \
	-u COWRIE_STATS_DATABASE_PASSWORD_FILE -u COWRIE_STATS_REPLICA_URLS \
	-u COWRIE_STATS_REPLICA_URLS_FILE COWRIE_STATS_ENV_FILE=/dev/null \
	COWRIE_STATS_DATABASE_URL=sqlite:///$(DEMO_DATABASE)

.PHONY: install dev tools buf run test test-long lint typecheck proto proto-lint release-contract unit bench secrets clean

# The runtime only (what `make run` needs); `dev` adds the test and lint tools and the
# mcp extra (its tests drive `cowrie-stats mcp`).
install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -e '.[dev,mcp]'
	touch $@

# Tools the quality gates need beyond the app venv: buf (npm) and the
# container/cluster validators (their own venv: their pins must not touch ours).
tools: dev $(BUF) $(TOOLS_VENV)/.installed

# buf alone, for `buf curl` (docs/api.md): no validators, no dev tools.
buf: $(BUF)

$(BUF):
	mkdir -p .tools
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(TOOLS_VENV)/.installed: deploy/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet -r deploy/tools-requirements.txt
	touch $@

run: install
	@echo "demo: var/sample/cowrie.json into var/demo.db (.env and database settings unused)"
	@$(DEMO) $(BIN)/cowrie-stats sample var/sample/cowrie.json >/dev/null
	@$(DEMO) $(BIN)/cowrie-stats migrate
	@$(DEMO) $(BIN)/cowrie-stats ingest --json var/sample
	@echo "serving; in another terminal: $(BIN)/cowrie-stats query sessions (README: Calling it)"
	@$(DEMO) $(BIN)/cowrie-stats serve

proto: dev
	$(BIN)/python scripts/gen_protos.py

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: dev
	$(BIN)/mypy --strict cowrie_stats tests scripts bench testkit

# The contract only grows: buf breaking compares it with the released one, kept as a buf
# image (protos/released-contract.json). After a release: make release-contract.
RELEASED_CONTRACT := protos/released-contract.json

proto-lint: tools
	$(BUF) lint
	$(BUF) breaking --against $(RELEASED_CONTRACT)

release-contract: tools
	$(BUF) build --exclude-source-info -o $(RELEASED_CONTRACT)

unit: dev tools
	COWRIE_STATS_REQUIRE_POSTGRES=1 COWRIE_STATS_REQUIRE_TOOLS=1 \
		$(BIN)/pytest --cov --cov-branch --cov-report=term $(PYTEST_ARGS)

test: dev tools lint typecheck proto-lint
	./scripts/ensure-postgres.sh >/dev/null
	$(MAKE) --no-print-directory unit

# The long variants of the load, overload, fuzz and chaos tests (minutes, not seconds),
# with the figures they print (-rA). The chaos test prints its seed;
# COWRIE_STATS_CHAOS_SEED=N replays that schedule.
test-long:
	COWRIE_STATS_LONG_TESTS=1 $(MAKE) --no-print-directory test PYTEST_ARGS="-rA $(PYTEST_ARGS)"

bench: dev
	./scripts/ensure-postgres.sh >/dev/null
	$(BIN)/python -m bench $(BENCH_ARGS)

# The Docker secrets files of docker-compose.yml (mode 0600, never overwritten).
secrets:
	./scripts/compose-secrets.sh

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
