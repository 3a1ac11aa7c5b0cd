"""The subprocess sandbox: a plain child process with the rlimits, timeout and output cap of the other
backends, and no isolation (it warns once)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings

from envgym.tools.sandbox import Limits, Sandbox, SandboxProcess, check_files, popen_limited


class SubprocessSandbox(Sandbox):
    """A plain child process with rlimits, a timeout and an output cap, in a fresh temporary directory.

    It does NOT isolate: the program can read, write and connect to whatever
    the caller can, and a child that calls setsid survives. Use it only where
    neither bubblewrap nor Docker exists, for trusted code.
    """

    name = "subprocess"
    _warned = False

    def __init__(self, limits: Limits | None = None, python: str | None = None):
        super().__init__(limits, python or sys.executable)
        if not SubprocessSandbox._warned:
            SubprocessSandbox._warned = True
            warnings.warn("the subprocess sandbox does not isolate programs (no filesystem, network or "
                          "process isolation); install bubblewrap or Docker for untrusted code", stacklevel=2)

    def spawn(self, argv, *, files=None, limits=None, env=None) -> SandboxProcess:
        workdir = tempfile.mkdtemp(prefix="envgym-sandbox-")
        for name, content in check_files(files).items():
            with open(os.path.join(workdir, name), "wb") as f:
                f.write(content)
        try:
            popen = popen_limited(argv, cwd=workdir, limits=limits or self.limits, env={"HOME": workdir, **(env or {})})
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return SandboxProcess(popen, lambda: shutil.rmtree(workdir, ignore_errors=True))
