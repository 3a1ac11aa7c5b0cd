"""Helpers of the sandbox tests: fixtures over backends, and finding processes and containers a sandbox left behind."""

import os
import time
import uuid
import warnings
from pathlib import Path

import pytest


def sandbox_backends(*kinds: str) -> list:
    """Parameters for a fixture over sandbox `kinds`: bwrap skips where unusable, docker is marked `docker`."""
    from envgym.tools.bwrap_sandbox import bwrap_usable

    marks = {"bwrap": pytest.mark.skipif(bwrap_usable() is not None, reason=f"bwrap unusable: {bwrap_usable()}"),
             "docker": pytest.mark.docker}
    return [pytest.param(kind, marks=marks.get(kind, ())) for kind in kinds]


def open_sandbox(request):
    """The sandbox of kind `request.param` (starting the Docker engine first if needed); closed after use."""
    from envgym.tools import make_sandbox

    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the subprocess backend's warning is tested on its own
        sandbox = make_sandbox(request.param)
    yield sandbox
    sandbox.close()


def processes_with(marker: str) -> list[str]:
    """Host processes whose command line contains `marker` (sandboxed ones included)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"{pid}: {cmdline}")
    return found


def wait_until(condition, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def assert_nothing_survives(marker: str, seconds: float = 5.0) -> None:
    # killing a PID namespace (or removing a container) is asynchronous to our wait, so give it a moment
    assert wait_until(lambda: not processes_with(marker), seconds), "a sandboxed process outlived its call"


def sandbox_containers(client, owner: str | None = None) -> list[dict]:
    """The engine's sandbox containers (of the process whose token is `owner`, if given), as the engine lists
    them: dicts with "Id", "Labels", "State" (no per-container inspect, so none vanishes mid-listing)."""
    from envgym.tools.docker_sandbox import LABEL, OWNER_LABEL

    labels = [f"{k}={v}" for k, v in LABEL.items()] + ([f"{OWNER_LABEL}={owner}"] if owner else [])
    return client.api.containers(all=True, filters={"label": labels})


def unique_sleep() -> str:
    """A sleep duration nobody else uses, so `ps` finds exactly our process."""
    return f"{777 + uuid.uuid4().int % 10_000}.{uuid.uuid4().int % 1000:03d}"
