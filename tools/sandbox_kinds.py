"""`make_sandbox`: a sandbox by kind, its backend found in `SANDBOXES` and imported on first use."""

from __future__ import annotations

import importlib

from envgym.tools.sandbox import Sandbox

#: Each kind's backend, "module:class"; "auto" takes the first of them whose `Sandbox.problem()` is None.
SANDBOXES = {
    "bwrap": "envgym.tools.bwrap_sandbox:BwrapSandbox",
    "docker": "envgym.tools.docker_sandbox:DockerSandbox",
    "subprocess": "envgym.tools.subprocess_sandbox:SubprocessSandbox",
}
SANDBOX_KINDS = ("auto", *SANDBOXES)


def sandbox_class(kind: str) -> type[Sandbox]:
    """The backend class of `kind` (a key of `SANDBOXES`), its module imported now."""
    module, _, name = SANDBOXES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def make_sandbox(kind: str = "auto", **kwargs) -> Sandbox:
    """A sandbox of `kind`: "bwrap", "docker", "subprocess", or "auto" (bwrap where usable, else a
    Docker engine that answers, else subprocess, which warns). `kwargs` go to the backend's constructor."""
    if kind == "auto":
        kind = next(k for k in SANDBOXES if sandbox_class(k).problem() is None)
    elif kind not in SANDBOXES:
        raise ValueError(f"unknown sandbox kind {kind!r}; choose one of {SANDBOX_KINDS}")
    return sandbox_class(kind)(**kwargs)
