# `make test` and `make quickstart` set themselves up on a fresh machine (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.envgym-setup
# vLLM pins its own torch and transformers, so its tests run from a venv of their own.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.envgym-setup

.PHONY: setup setup-vllm test test-vllm quickstart gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml setup.py scripts/setup_vllm.sh
	bash scripts/setup_vllm.sh $(VLLM_VENV)
	touch $@

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q
	$(MAKE) test-vllm

# The tests marked vllm (real engines and `vllm serve` on the embedded SmolLM2); the main suite skips them.
test-vllm: setup-vllm
	ENVGYM_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm.py tests/test_endpoint_vllm.py

quickstart: setup
	$(VENV)/bin/envgym train trainers/recipes/quickstart.yaml --overwrite

# The GPU check (one table, about 5 minutes on one GPU, no download): see docs/scaling.md.
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-gpu-check build *.egg-info runs reports
