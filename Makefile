# Data Exchange — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
UV_VERSION := 0.9.30
export TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/exchange
export TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.DEFAULT_GOAL := help
.PHONY: help venv run migrate demo test lint format check clean bench bench-search bench-webhooks bench-download bench-pipeline bench-settlement bench-load

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# uv installs the pinned requirements into the venv (about a minute faster than pip on a fresh machine).
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the pinned requirements

migrate: venv ## apply database migrations
	$(PY) manage.py migrate --noinput

demo: migrate ## load the demo users and products (idempotent)
	$(PY) manage.py seed_demo

run: demo ## serve the demo: web server, Celery worker and beat (Ctrl-C stops all)
	$(PY) scripts/devserver.py

test: venv ## run the whole test suite against PostgreSQL and Redis
	@$(PY) scripts/check_services.py
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv ## ruff lint and format check, and no missing migrations
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_ENV=test $(PY) manage.py makemigrations --check --dry-run

format: venv ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-search: venv ## catalog search at 100k listings vs raw SQL, trivial endpoint, icontains (SEARCH_ARGS=--million)
	$(PY) -m bench.search $(SEARCH_ARGS)

bench-webhooks: venv ## 3 bursts of 1,000 signed webhooks on gunicorn vs a trivial endpoint, then processed exactly once (WEBHOOKS_ARGS=--worker-during-burst)
	$(PY) -m bench.webhooks $(WEBHOOKS_ARGS)

bench-download: venv ## a 1 GiB purchased file: gunicorn streaming, X-Accel-Redirect behind nginx, nginx direct (DOWNLOAD_ARGS=--rounds 5)
	$(PY) -m bench.download $(DOWNLOAD_ARGS)

bench-pipeline: venv ## sandbox trades through the webhook to a ready download: 50/s for 20 s (p50/p99), a burst of 1,000 (trades/s)
	$(PY) -m bench.pipeline $(PIPELINE_ARGS)

bench-settlement: venv ## 100,000 delivered trades over 1,000 merchants settled with 1 and 2 workers vs COPY (SETTLEMENT_ARGS=--rounds 3)
	$(PY) -m bench.settlement $(SETTLEMENT_ARGS)

bench-load: venv ## locust mixed profile (browse, search, listings, checkout, webhooks, downloads) stepped to the break point, then 60 s at 70% of it (LOAD_ARGS=--steady-seconds 120)
	$(PY) -m bench.load $(LOAD_ARGS)

bench: bench-search bench-webhooks bench-download bench-pipeline bench-settlement bench-load ## run every benchmark (each prints one JSON line)

clean: ## remove the virtualenv and local state (var/)
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
