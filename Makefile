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
	$(VENV)/bin/envgym eval --env games/Maze-v0 --policy scripted --policy random --episodes 20 --out reports/quickstart
	$(VENV)/bin/envgym eval --env games/Maze-v0 --policy hf:default --episodes 2 --max-turns 3 --context window \
		--window 1 --max-new-tokens 8 --out reports/quickstart-smollm2

clean:
	rm -rf $(VENV) build *.egg-info runs reports
