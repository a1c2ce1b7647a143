# Two commands do all set-up on a fresh machine:
#   make demo   the main job, embedded (SQLite, in-memory channel layer, eth-tester): no service needed
#   make test   lint, then the whole suite against real PostgreSQL, Redis and anvil
# and while working:
#   make test-fast  the tests that need no service (every service address points nowhere), in under a minute
#   make lint       ruff (lint + format check), mypy, import-linter
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

# Tests use their own Redis database and a Postgres database that pytest-django creates.
TEST_ENV := DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/dfl} \
            REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/9} \
            CELERY_BROKER_URL=$${TEST_CELERY_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/dfl-test} \
            SECRET_KEY=test-secret-key-not-for-production

.PHONY: venv npm browser broker demo demo-headless test test-fast lint format bench clean contracts

venv: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[platform,peer,test]"
	touch $(STAMP)

npm: $(NPM_STAMP)
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NPM_STAMP)

# The browser test drives Debian's Chromium (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Celery's broker for the tests: a RabbitMQ virtual host of their own (created once; idempotent).
broker:
	@command -v rabbitmqctl >/dev/null 2>&1 || { echo "RabbitMQ (rabbitmqctl) is needed: Celery's broker"; exit 1; }
	@rabbitmqctl -q list_vhosts | grep -qx dfl-test || rabbitmqctl -q add_vhost dfl-test
	@rabbitmqctl -q set_permissions -p dfl-test guest ".*" ".*" ".*"

demo: venv
	DFL_EMBEDDED=1 DEBUG=1 $(PY) manage.py demo

demo-headless: venv
	DFL_EMBEDDED=1 $(PY) manage.py demo --headless --rounds 3 --peers 4

test: lint npm browser broker
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# Pure tests only: with Postgres and Redis addresses that cannot answer, a test that needs a
# service without being marked `services` fails here instead of passing by luck.
test-fast: venv
	DATABASE_URL=postgres://nobody@127.0.0.1:9/none REDIS_URL=redis://127.0.0.1:9/0 SECRET_KEY=fast \
	  $(PY) -m pytest -q -m "not services and not slow" -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DFL_EMBEDDED=1 $(VENV)/bin/mypy
	PYTHONPATH=platform:. $(VENV)/bin/lint-imports --no-cache

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

contracts: npm
	node contracts/compile.js

clean:
	rm -rf $(VENV) node_modules var staticfiles .pytest_cache
