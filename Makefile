# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3

# tox needs Python 3.11 (Django 5.2 LTS), 3.12 and 3.13 (Django 6.x). Interpreters
# installed with pyenv are not on PATH by their version name, so add their folders.
PYENV_BINS := $(wildcard $(HOME)/.pyenv/versions/3.1[1-3]*/bin)
empty :=
space := $(empty) $(empty)
ifneq ($(PYENV_BINS),)
export PATH := $(subst $(space),:,$(PYENV_BINS)):$(PATH)
endif
# Never let uv fetch interpreters from the network: use the ones found above.
export UV_PYTHON_DOWNLOADS := never

TOOLS := .venv-tools
TOX := $(TOOLS)/bin/tox
# The CI matrix: every Python (3.11-3.13), Django (5.2 LTS, 6.0, 6.1) and database
# (SQLite, PostgreSQL, MariaDB) at least once, not every combination (tox.ini lists them all).
TOX_ENVS ?= lint,py312-django61-sqlite,py312-django61-postgres,py312-django61-mariadb,py313-django60-sqlite,py311-django52-sqlite,py311-django52-postgres
# Environments run side by side; each prints its whole output when it ends.
TOX_PARALLEL ?= 2

.PHONY: test demo bench bench-peers clean

$(TOX):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip "tox>=4.20" "tox-uv>=1.11"

# An environment whose database server (or, for MariaDB, client headers) this machine
# lacks is left out with the reason, printed again at the end; under CI=true it runs and fails.
test: $(TOX)
	@envs="$$($(PYTHON) scripts/test_envs.py $(TOX_ENVS))"; \
	$(TOX) run-parallel --parallel $(TOX_PARALLEL) --parallel-no-spinner -e "$$envs"; status=$$?; \
	$(PYTHON) scripts/test_envs.py $(TOX_ENVS) >/dev/null; \
	exit $$status

# make demo: the example project (example_project/README.md) with the documentation of
# Python's standard library, embedded by the built-in model, served on http://$(DEMO_ADDR)/.
# A second run reuses the virtualenv, the database and the vectors, and starts in seconds.
DEMO_VENV := .venv-demo
DEMO_PYTHON := $(DEMO_VENV)/bin/python
DEMO_MANAGE := $(DEMO_PYTHON) example_project/manage.py
DEMO_ADDR ?= 127.0.0.1:8000

$(DEMO_VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "make demo needs Python 3.11 or newer, e.g. make demo PYTHON=python3.12")'
	@echo "==> Creating $(DEMO_VENV) and installing django_embeddings into it (pip install -e '.[rest]')"
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[rest]'
	@touch $@

demo: $(DEMO_VENV)/.installed
	@echo "==> Migrating the SQLite database (example_project/db.sqlite3)"
	@$(DEMO_MANAGE) migrate --noinput --verbosity 0
	@echo "==> Loading the documentation of Python's standard library"
	@$(DEMO_MANAGE) load_stdlib_docs
	@echo "==> Embedding the documents with the built-in local model"
	@$(DEMO_MANAGE) embeddings_backfill docs.Document
	@$(DEMO_MANAGE) demo_user
	@echo "==> Search: http://$(DEMO_ADDR)/  Admin: http://$(DEMO_ADDR)/admin/  API: http://$(DEMO_ADDR)/api/search?q=read+a+csv+file  REST API: http://$(DEMO_ADDR)/api/documents/?search=read+a+csv+file"
	@$(DEMO_MANAGE) runserver $(DEMO_ADDR)

# make bench: what a user's calls cost next to the same written by hand, on SQLite and
# PostgreSQL (bench/endtoend.py), in a virtualenv of its own. `make bench QUICK=1` runs 5k and
# 100k rows in about ten minutes; the full run adds 1M rows (an hour or more, ~15 GB of temp disk).
# make bench-peers: the store side by side with popoto, numpy and FAISS (bench/run.py).
# Results: bench/results/. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (set on some machines for old
# OpenBLAS builds) slow a current numpy, so they are unset for these commands alone.
BENCH_VENV := .venv-bench
BENCH_PYTHON := $(BENCH_VENV)/bin/python
BENCH_ARGS ?=

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PYTHON) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BENCH_PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[bench,test]'
	@touch $@

bench: $(BENCH_VENV)/.installed
	@env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BENCH_PYTHON) -m bench.endtoend $(if $(QUICK),--quick) $(BENCH_ARGS)

bench-peers: $(BENCH_VENV)/.installed
	@env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BENCH_PYTHON) -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(TOOLS) $(DEMO_VENV) $(BENCH_VENV) .tox build dist *.egg-info
	rm -rf example_project/db.sqlite3 example_project/embeddings
