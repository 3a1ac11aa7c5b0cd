"""Shared test set-up: offline model hubs, and skips for hardware and packages this machine lacks."""

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if any(item.get_closest_marker("vllm") for item in items) and importlib.util.find_spec("vllm") is None:
        if os.environ.get("ENVGYM_REQUIRE_VLLM"):  # `make test-vllm`: a broken .venv-vllm must fail, not skip
            raise pytest.UsageError("ENVGYM_REQUIRE_VLLM is set but vllm is not importable; rebuild .venv-vllm "
                                    "(rm -r .venv-vllm && make test-vllm)")
        skip = pytest.mark.skip(reason="needs vLLM, which lives in its own venv: run `make test-vllm`")
        for item in items:
            if item.get_closest_marker("vllm"):
                item.add_marker(skip)
