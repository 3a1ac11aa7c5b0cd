# `make test` and `make quickstart` set themselves up on a fresh machine (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.envgym-setup

.PHONY: setup test quickstart gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

test: setup
	$(PY) -m pytest -q

quickstart: setup
	$(VENV)/bin/envgym train trainers/recipes/quickstart.yaml --overwrite

# The GPU check (one table, about 5 minutes on one GPU, no download): see README "From a laptop to a cluster".
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .venv-gpu-check build *.egg-info runs reports
