# `make test` and `make quickstart` set themselves up on a fresh machine (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.envgym-setup

.PHONY: setup test quickstart clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

test: setup
	$(PY) -m pytest -q

quickstart: setup
	$(VENV)/bin/envgym train trainers/recipes/quickstart.yaml --overwrite

clean:
	rm -rf $(VENV) build *.egg-info runs reports
