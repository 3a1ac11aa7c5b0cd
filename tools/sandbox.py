"""The sandbox contract (`Sandbox`, `Limits`, `ExecResult`) and what its backends share.

Every backend has one interface:

    sandbox = make_sandbox("auto")            # bwrap where usable, else Docker, else subprocess (warned)
    result = sandbox.run(code="print(1)", timeout=5)
    result.status, result.stdout               # ExecStatus.OK, "1\\n"

`run` never raises for anything the program does: a crash, a timeout, a memory
blow-up or an output flood all come back as an `ExecResult` with a status.

The backends live in modules of their own, none importing another:
`bwrap_sandbox` (bubblewrap), `docker_sandbox` (Docker) and `subprocess_sandbox`
(rlimits only); `make_sandbox` (`sandbox_kinds`) finds them by name. Each
module's docstring says what enforces what there.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import functools
import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PYTHON_FLAGS = ("-E", "-s", "-B")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: The environment of every sandboxed program; a call's `env` adds to it.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


class ExecStatus(str, enum.Enum):
    """How a sandboxed run ended."""

    OK = "ok"  # exit code 0
    ERROR = "error"  # non-zero exit code (an exception, a failed test)
    TIMEOUT = "timeout"  # wall-clock timeout or CPU-time limit
    MEMORY = "memory"  # ran out of its memory limit
    OUTPUT_LIMIT = "output_limit"  # wrote more than max_output_bytes; killed
    KILLED = "killed"  # ended by a signal for another reason (or the sandbox could not start)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run (a session shares one set over its lifetime)."""

    cpu_seconds: int = 10  # RLIMIT_CPU; in a session, CPU time of the whole session
    memory_bytes: int = 1 << 30  # RLIMIT_AS, address space
    max_processes: int = 32  # RLIMIT_NPROC, processes and threads
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE, largest file the program may write
    tmp_bytes: int = 64 << 20  # size of the private /tmp (bwrap) or tmpfs (Docker)
    max_output_bytes: int = 64 << 10  # stdout + stderr kept; more kills the run

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {value!r}")

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """The (soft, hard) rlimits these limits set, keyed by the name of the `resource` constant."""
        return {"RLIMIT_CPU": (self.cpu_seconds, self.cpu_seconds + 1),
                "RLIMIT_AS": (self.memory_bytes, self.memory_bytes),
                "RLIMIT_NPROC": (self.max_processes, self.max_processes),
                "RLIMIT_FSIZE": (self.file_size_bytes, self.file_size_bytes),
                "RLIMIT_CORE": (0, 0)}

    def apply(self) -> None:
        """Set these limits on the current process (called in the child between fork and exec)."""
        for name, pair in self.rlimits().items():
            resource.setrlimit(getattr(resource, name), pair)


@dataclass(frozen=True)
class ExecResult:
    """What a sandboxed run did. `duration` is wall-clock seconds; `message` explains a non-ok status."""

    stdout: str
    stderr: str
    exit_code: int | None  # None when the run was killed before it exited on its own
    timed_out: bool
    status: ExecStatus
    duration: float
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.OK

    def render(self, max_chars: int = 4000) -> str:
        """The result as text for an agent: status line, then stdout and stderr (each cut to `max_chars`).

        Deterministic for a deterministic program (no timings), so equal runs give equal observations.
        """
        head = f"[{self.status.value}, exit code {self.exit_code}]"
        parts = [head + (f" {self.message}" if self.message else "")]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                more = len(text) - max_chars
                cut = text if more <= 0 else text[:max_chars] + f"\n... ({more} more characters)"
                parts.append(f"{name}:\n{cut.rstrip()}")
        if len(parts) == 1:
            parts.append("(no output)")
        return "\n".join(parts)


class SandboxProcess:
    """A started sandboxed process: `popen` with piped stdin/stdout/stderr, and `kill()`, which ends
    it with everything it started and releases what the sandbox set up for it (idempotent).

    `out_of_memory` is set by `kill()` where the backend can tell that the kernel's OOM killer
    ended the program (a container's memory limit); rlimits show up as MemoryError instead.
    """

    out_of_memory = False

    def __init__(self, popen: subprocess.Popen, cleanup: Callable[[], None] | None = None):
        self.popen = popen
        self._cleanup = cleanup

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the process group of bwrap or the program
        except ProcessLookupError:
            pass
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()
        if self._cleanup is not None:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()


def write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write all of `data` to the pipe `fd` (made non-blocking) by `deadline` (time.monotonic()).

    Raises TimeoutError when the reader has not taken it all by then, BrokenPipeError when it is gone.
    """
    os.set_blocking(fd, False)
    pending = memoryview(data)
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_WRITE)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError("the sandboxed process did not read its input within the time allowed")
            try:
                pending = pending[os.write(fd, pending):]
            except BlockingIOError:
                continue


def check_files(files: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    """`files` as name -> bytes; raises ValueError on a name that is not a plain file name."""
    checked = {}
    for name, content in (files or {}).items():
        if not isinstance(name, str) or not _FILE_NAME.match(name):
            raise ValueError(f"file name {name!r} must be a plain name like 'main.py' (letters, digits, _ . -)")
        if not isinstance(content, (str, bytes)):
            raise TypeError(f"content of file {name!r} must be str or bytes, got {type(content).__name__}")
        checked[name] = content.encode("utf-8") if isinstance(content, str) else content
    return checked


class Sandbox(ABC):
    """Runs programs in isolation. Subclasses implement `spawn`; `run` is built on it.

    `python` is the interpreter `run(code=...)` uses inside the sandbox; `limits`
    are the defaults that a call's `limits` replace.
    """

    name: str = "sandbox"

    def __init__(self, limits: Limits | None = None, python: str | None = None):
        self.limits = limits or Limits()
        self.python = python or default_python()

    @classmethod
    def problem(cls) -> str | None:
        """None where this backend can run here (with its defaults); otherwise why not."""
        return None

    @abstractmethod
    def spawn(self, argv: Sequence[str], *, files: Mapping[str, str | bytes] | None = None,
              limits: Limits | None = None, env: Mapping[str, str] | None = None) -> SandboxProcess:
        """Start `argv` in the sandbox with `files` in its working directory; pipes on stdin/stdout/stderr."""

    def python_argv(self, script: str, *args: str) -> list[str]:
        """The command line that runs `script` (a file in the working directory) with the sandbox's Python."""
        return [self.python, *PYTHON_FLAGS, script, *args]

    def prepare(self, argv: Sequence[str] | None, code: str | None, files: Mapping[str, str | bytes] | None,
                timeout: float) -> tuple[list[str], dict[str, str | bytes]]:
        """Check `run`'s arguments; `code` becomes main.py and the argv that runs it."""
        if (argv is None) == (code is None):
            raise ValueError("pass exactly one of argv (a command line) or code (a Python program)")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        files = dict(files or {})
        if code is not None:
            if not isinstance(code, str):
                raise TypeError(f"code must be str, got {type(code).__name__}")
            files["main.py"] = code
            argv = self.python_argv("main.py")
        elif isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a sequence of str such as ['ls', '-l'], got {argv!r}")
        return list(argv), files

    def run(self, argv: Sequence[str] | None = None, *, code: str | None = None, stdin: str | bytes = b"",
            files: Mapping[str, str | bytes] | None = None, timeout: float = 10.0,
            limits: Limits | None = None, env: Mapping[str, str] | None = None) -> ExecResult:
        """Run `argv`, or the Python program `code` (as main.py), to completion or `timeout` seconds.

        `timeout` counts from the moment the sandbox is up (starting a container is not charged to
        the program); `ExecResult.duration` is the whole call. Never raises for what the program
        does; raises ValueError/TypeError for bad arguments.
        """
        argv, files = self.prepare(argv, code, files, timeout)
        limits = limits or self.limits
        start = time.monotonic()
        try:
            proc = self.spawn(argv, files=files, limits=limits, env=env)
        except OSError as exc:
            return ExecResult("", f"{type(exc).__name__}: {exc}", None, False, ExecStatus.KILLED,
                              time.monotonic() - start, f"the {self.name} sandbox could not start the program")
        stdin_bytes = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        return collect(proc, stdin_bytes, time.monotonic() + timeout, timeout, limits.max_output_bytes, start)

    def close(self) -> None:
        """Release anything the sandbox holds across calls (a no-op unless a backend pools resources)."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(proc: SandboxProcess, stdin: bytes, deadline: float, timeout: float, max_output: int,
            start: float) -> ExecResult:
    """Feed `stdin`, read stdout/stderr until both close, `deadline` (time.monotonic(); `timeout` is
    the seconds it stands for), or `max_output` bytes; then kill whatever is left of the process and
    classify how it ended. `start` is when the call began (for `ExecResult.duration`)."""
    popen = proc.popen
    out = {popen.stdout.fileno(): bytearray(), popen.stderr.fileno(): bytearray()}
    selector = selectors.DefaultSelector()
    for fd in out:
        selector.register(fd, selectors.EVENT_READ)
    if stdin:
        os.set_blocking(popen.stdin.fileno(), False)
        selector.register(popen.stdin.fileno(), selectors.EVENT_WRITE)
    else:
        popen.stdin.close()
    pending = memoryview(stdin)
    timed_out = flooded = False
    exited_at = None
    while selector.get_map():
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if exited_at is None and popen.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 0.2:
            break  # the program exited; pipes still open belong to leftovers that kill() ends
        for key, _ in selector.select(min(deadline - now, 0.05)):  # wake up to notice the exit
            if key.events & selectors.EVENT_WRITE:
                try:
                    written = os.write(key.fd, pending[:65536])
                except BrokenPipeError:
                    written = len(pending)
                pending = pending[written:]
                if not pending:
                    selector.unregister(key.fd)
                    popen.stdin.close()
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
                continue
            out[key.fd] += chunk
            if sum(len(b) for b in out.values()) > max_output:
                flooded = True
                break
        if flooded:
            break
    selector.close()
    if not timed_out and not flooded:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    exit_code = popen.poll()
    proc.kill()
    stdout, stderr = (_decode(b, max_output) for b in out.values())
    return classify(stdout, stderr, exit_code, timed_out, flooded, time.monotonic() - start, timeout, max_output,
                    out_of_memory=proc.out_of_memory)


def _decode(data: bytes, limit: int) -> str:
    return bytes(data[:limit]).decode("utf-8", errors="replace")


def _signal_of(exit_code: int) -> int | None:
    """The signal that ended a process: Popen reports -N; bwrap's init reports 128+N."""
    if exit_code < 0:
        return -exit_code
    if 128 < exit_code < 128 + 65:
        return exit_code - 128
    return None


def classify(stdout: str, stderr: str, exit_code: int | None, timed_out: bool, flooded: bool,
             duration: float, timeout: float, max_output: int, out_of_memory: bool = False) -> ExecResult:
    """The `ExecResult` of a run that ended with `exit_code` (None: still running when killed);
    `out_of_memory`: the kernel's OOM killer ended it."""
    def result(status: ExecStatus, message: str = "", code: int | None = exit_code, late: bool = timed_out):
        return ExecResult(stdout, stderr, code, late, status, duration, message)

    if flooded:
        return result(ExecStatus.OUTPUT_LIMIT, f"output exceeded {max_output} bytes; the rest was dropped")
    if timed_out:
        return result(ExecStatus.TIMEOUT, f"killed: wall-clock timeout of {timeout:g} s", code=None)
    signum = _signal_of(exit_code)
    if signum == signal.SIGXCPU:
        return result(ExecStatus.TIMEOUT, "killed: CPU time limit reached", late=True)
    if out_of_memory:
        return result(ExecStatus.MEMORY, "killed: out of memory (the sandbox's memory limit)")
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail:
        return result(ExecStatus.MEMORY, "ran out of memory (the sandbox's memory limit)")
    if signum is not None:
        return result(ExecStatus.KILLED, f"killed by signal {signal.Signals(signum).name}"
                      if signum in signal.valid_signals() else f"killed by signal {signum}")
    if exit_code == 0:
        return result(ExecStatus.OK)
    return result(ExecStatus.ERROR, f"exited with code {exit_code}")


@functools.cache
def default_python() -> str:
    """The system's /usr/bin/python3 (needs no host paths in the sandbox), else this interpreter."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


def popen_limited(argv: Sequence[str], *, cwd: str | None, limits: Limits, env: Mapping[str, str] | None,
           pass_fds: Sequence[int] = (), uid: int | None = None, die_with_caller: bool = False) -> subprocess.Popen:
    """Start `argv` in a session of its own under `limits`, with piped stdin/stdout/stderr.

    `uid`: run as that uid and gid, with no groups, no capabilities and no new privileges.
    `die_with_caller`: SIGKILL it when the calling thread ends, armed before exec so that no
    instant is left uncovered before the program (bwrap) arms its own.
    """
    caller = os.getpid()

    def child_setup() -> None:  # in the child, after the uid change, before exec
        limits.apply()
        if uid is not None:
            _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if die_with_caller:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != caller:  # the caller died before the signal was armed
                os._exit(1)

    drop = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    return subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
        env={**BASE_ENV, **(env or {})}, start_new_session=True, preexec_fn=child_setup,
        pass_fds=tuple(pass_fds), close_fds=True, **drop,
    )


class DeathWatch:
    """A shell that outlives this process to act for it once it ends, however it ends (even by SIGKILL).

    The shell reads lines this process `send`s over a pipe whose only write end this process holds; at
    EOF (this process gone, or `release`d) it runs the rest of `script`. `script` is sh: it reads its
    lines with `read` and gets `args` as $0, $1, ... A forked child does not share it: the child's
    copy of the write end is closed at once (see `_forget_after_fork`).
    """

    _open: list[DeathWatch] = []

    def __init__(self, script: str, args: Sequence[str] = ("sh",), env: Mapping[str, str] | None = None):
        read_end, self._write_end = os.pipe()  # non-inheritable: no other child holds the write end
        try:
            self._shell = subprocess.Popen(["sh", "-c", script, *args], stdin=read_end, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, env=None if env is None else dict(env),
                                           start_new_session=True)
        finally:
            os.close(read_end)
        self._lock = threading.Lock()
        DeathWatch._open.append(self)

    @property
    def watching(self) -> bool:
        """Whether this process still holds the pipe (not yet released, not a forked child's copy)."""
        return self._write_end is not None

    def send(self, line: str) -> None:
        """Tell the shell `line` (one line, no newline in it)."""
        with self._lock:
            if self._write_end is not None:
                os.write(self._write_end, line.encode() + b"\n")

    def release(self, timeout: float = 30.0) -> None:
        """Let the shell act now, and wait up to `timeout` seconds for it (idempotent)."""
        with self._lock:
            if self._write_end is None:
                return
            os.close(self._write_end)
            self._write_end = None
        try:
            self._shell.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    @classmethod
    def _forget_after_fork(cls) -> None:
        for watch in cls._open:
            if watch._write_end is not None:
                os.close(watch._write_end)
                watch._write_end = None
        cls._open = []


os.register_at_fork(after_in_child=DeathWatch._forget_after_fork)
