"""Python executors: a fresh sandboxed process per call, or a persistent session across turns.

    executor = PythonExecutor()                  # stateless: nothing carries over
    executor.run("print(2 + 2)").stdout          # "4\\n"

    with PythonSession() as session:             # one interpreter, state kept between calls
        session.run("x = 21")
        session.run("x * 2").stdout              # "42\\n" (a final expression is echoed)

A session runs `session_server.py` inside the sandbox and talks to it over a
framed protocol on stdin/stdout in which every reply carries its request's id.
A call that outlives its timeout, an interpreter that dies, or a reply that
breaks the protocol kills the whole sandbox and starts a fresh one; the result
says so, because the variables of earlier calls are gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import struct
import subprocess
import time
from pathlib import Path

from envgym.tools.calls import Tool
from envgym.tools.sandbox import (
    ExecResult,
    ExecStatus,
    Limits,
    Sandbox,
    SandboxProcess,
    classify,
    write_all,
)
from envgym.tools.sandbox_kinds import make_sandbox

_SERVER_NAME = "session_server.py"
_SERVER_SOURCE = (Path(__file__).parent / _SERVER_NAME).read_text()
_RESTARTED = "the session was restarted, so variables from earlier calls are gone"


def _as_sandbox(sandbox: Sandbox | str) -> Sandbox:
    return make_sandbox(sandbox) if isinstance(sandbox, str) else sandbox


class PythonExecutor:
    """Runs each snippet as a fresh `python main.py` in `sandbox` (a Sandbox or a `make_sandbox` kind)."""

    def __init__(self, sandbox: Sandbox | str = "auto", timeout: float = 10.0, limits: Limits | None = None):
        self.sandbox = _as_sandbox(sandbox)
        self.timeout, self.limits = timeout, limits

    def run(self, code: str, stdin: str = "", files: dict[str, str] | None = None) -> ExecResult:
        """Run `code` with `stdin` and extra `files` beside it; see `Sandbox.run`."""
        return self.sandbox.run(code=code, stdin=stdin, files=files, timeout=self.timeout, limits=self.limits)

    def close(self) -> None:
        self.sandbox.close()


class _SessionExited(Exception):
    """The session's interpreter closed its reply pipe (it exited, or the code in it closed the pipe)."""


class _ProtocolError(Exception):
    """The session answered outside the protocol: a bad length, unreadable JSON, a wrong id, stray bytes."""


#: The fields of a reply to a request, and their types (see session_server.py).
_REPLY_FIELDS = {"stdout": str, "stderr": str, "error": bool, "truncated": bool}


class PythonSession:
    """A long-lived interpreter in `sandbox` that execs each snippet in one persistent globals dict.

    `timeout` is per call (wall clock) and bounds every wait of the call, whatever the code in the
    session does to the protocol. `limits` hold for the session's life: its CPU limit counts all
    calls together. The interpreter starts on the first `run` (or `start`); `close` ends it and
    everything it started. A timeout, a dead interpreter or a broken protocol (a reply of the wrong
    length, form or request id, or bytes nobody asked for) kills the session; the call's result says
    so, and the next call starts a fresh one.
    """

    def __init__(self, sandbox: Sandbox | str = "auto", timeout: float = 10.0, limits: Limits | None = None,
                 start_timeout: float = 30.0):
        self.sandbox = _as_sandbox(sandbox)
        self.timeout = timeout
        self.limits = limits or self.sandbox.limits
        self.start_timeout = start_timeout
        self._proc: SandboxProcess | None = None
        self._selector: selectors.BaseSelector | None = None
        self._last_id = 0

    def start(self) -> None:
        """Start the interpreter if it is not running; raises RuntimeError if it cannot start."""
        if self._proc is not None:
            return
        self._proc = self.sandbox.spawn(self.sandbox.python_argv(_SERVER_NAME), files={_SERVER_NAME: _SERVER_SOURCE},
                                        limits=self.limits)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._proc.popen.stdout.fileno(), selectors.EVENT_READ)
        self._last_id = 0
        try:
            self._read_reply(time.monotonic() + self.start_timeout, 0)
        except (_SessionExited, _ProtocolError, TimeoutError) as exc:
            os.set_blocking(self._proc.popen.stderr.fileno(), False)
            detail = (self._proc.popen.stderr.read() or b"").decode("utf-8", errors="replace").strip()
            self.close()
            raise RuntimeError(f"the Python session did not start in the {self.sandbox.name} sandbox: {exc}"
                               + (f"; stderr: {detail}" if detail else "")) from None

    def run(self, code: str) -> ExecResult:
        """Exec `code` in the session; returns its stdout/stderr, status and whether it timed out."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        self.start()
        started = time.monotonic()
        deadline = started + self.timeout
        self._last_id += 1
        body = json.dumps({"id": self._last_id, "code": code, "max_output": self.limits.max_output_bytes}).encode()

        def ended(status: ExecStatus, message: str, timed_out: bool = False) -> ExecResult:
            self.close()
            return ExecResult("", "", None, timed_out, status, time.monotonic() - started, f"{message}; {_RESTARTED}")

        try:
            self._check_nothing_pending()
            write_all(self._proc.popen.stdin.fileno(), struct.pack(">Q", len(body)) + body, deadline)
            reply = self._read_reply(deadline, self._last_id)
        except TimeoutError:
            return ended(ExecStatus.TIMEOUT, f"killed: wall-clock timeout of {self.timeout:g} s", timed_out=True)
        except _ProtocolError as exc:
            return ended(ExecStatus.KILLED, f"killed: the session broke its reply protocol ({exc})")
        except (_SessionExited, BrokenPipeError) as exc:
            try:
                exit_code = self._proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return ended(ExecStatus.KILLED, "killed: the session broke its reply protocol (it closed its reply "
                                                "pipe but kept running)")
            self.close()
            lost = classify("", "", exit_code, False, False, time.monotonic() - started, self.timeout,
                            self.limits.max_output_bytes)
            return dataclasses.replace(lost, status=ExecStatus.KILLED if lost.ok else lost.status,
                                       message=f"the interpreter died ({lost.message or exc}); {_RESTARTED}")
        return classify(reply["stdout"], reply["stderr"], 1 if reply["error"] else 0, False, reply["truncated"],
                        time.monotonic() - started, self.timeout, self.limits.max_output_bytes)

    def _check_nothing_pending(self) -> None:
        """Between calls the reply pipe must be silent: bytes there were written by nobody we asked."""
        if self._selector.select(0):
            stray = os.read(self._proc.popen.stdout.fileno(), 65536)
            if not stray:
                raise _SessionExited("the interpreter exited between calls")
            raise _ProtocolError(f"{len(stray)} bytes arrived after the last reply, before this request")

    def _read_reply(self, deadline: float, request_id: int) -> dict:
        """The reply to request `request_id` (0: the ready message), read by `deadline`."""
        size = struct.unpack(">Q", self._read_exact(8, deadline))[0]
        largest = 8 * self.limits.max_output_bytes + 4096  # JSON escapes at most ~6 bytes per byte
        if size > largest:
            raise _ProtocolError(f"a reply claimed {size} bytes, more than the {largest} a reply can have")
        try:
            reply = json.loads(self._read_exact(size, deadline))
        except ValueError as exc:
            raise _ProtocolError(f"an unreadable reply: {exc}") from None
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            got = reply.get("id") if isinstance(reply, dict) else reply
            raise _ProtocolError(f"a reply with id {got!r} to request {request_id}")
        fields = {"ready": bool} if request_id == 0 else _REPLY_FIELDS
        if any(not isinstance(reply.get(name), kind) for name, kind in fields.items()):
            raise _ProtocolError(f"a reply without the fields {sorted(fields)}")
        return reply

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self._proc.popen.stdout.fileno()
        data = bytearray()
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise TimeoutError("no reply in the time allowed")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise _SessionExited("the interpreter exited")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        """End the interpreter and everything it started (idempotent); the next `run` starts a fresh one."""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.kill()

    def __enter__(self) -> PythonSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_proc", None) is not None:
            self.close()


def python_tool(runner: PythonExecutor | PythonSession, description: str = "") -> Tool:
    """A `python` tool (argument `code`) that runs in `runner` and returns `ExecResult.render()`."""
    stateful = isinstance(runner, PythonSession)
    return Tool(
        "python",
        description or ("Run Python code in a sandbox and see its stdout and stderr. "
                        + ("Variables persist between calls; a final expression is echoed."
                           if stateful else "Each call starts fresh; print what you want to see.")),
        {"type": "object", "properties": {"code": {"type": "string", "description": "Python source to run"}},
         "required": ["code"]},
        lambda code: runner.run(code).render(),
    )
