"""Shared test set-up: offline model hubs, skips for hardware and packages this machine lacks, and a
private Docker engine for the `docker` tests (helpers for the sandbox tests are in sandboxes.py)."""

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


@pytest.fixture(scope="session")
def docker_engine():
    """A private Docker engine (containerd + dockerd on a temporary socket) holding the sandbox image,
    with DOCKER_HOST pointing at it for the session; stopped at the end, after checking that no
    sandbox container outlived its test. Skips, saying why, where it cannot start (needs root and
    docker.io). The machine's own Docker, if any, is never used."""
    from envgym.tools.docker_engine import PrivateDockerd, private_dockerd_problem
    from envgym.tools.docker_image import ImageError, ensure_image
    from envgym.tools.docker_sandbox import engine_client
    from sandboxes import sandbox_containers

    problem = private_dockerd_problem()
    if problem:
        pytest.skip(f"no private Docker engine: {problem}")
    saved = os.environ.get("DOCKER_HOST")
    with PrivateDockerd() as engine:
        os.environ["DOCKER_HOST"] = engine.host
        try:
            client = engine_client(engine.host)
            try:
                ensure_image(client)
            except ImageError as exc:
                pytest.skip(f"no sandbox image: {exc}")
            yield engine
            leftovers = [(c["Names"], c["Labels"]) for c in sandbox_containers(client)]
            assert not leftovers, f"sandbox containers outlived the tests: {leftovers}"
        finally:
            if saved is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved
