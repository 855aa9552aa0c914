# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3

# tox needs Python 3.11 (Django 5.2 LTS) and 3.12+ (newest Django). Interpreters
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
# The suite on the newest Django (SQLite and PostgreSQL) and on 5.2 LTS (both databases).
TOX_ENVS ?= lint,py312-django61-sqlite,py312-django61-postgres,py311-django52-sqlite,py311-django52-postgres

.PHONY: test demo bench clean

$(TOX):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip "tox>=4.20" "tox-uv>=1.11"

test: $(TOX)
	$(TOX) run -e $(TOX_ENVS)

clean:
	rm -rf $(TOOLS) .tox build dist *.egg-info
