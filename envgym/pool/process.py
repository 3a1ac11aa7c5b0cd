"""The "process" backend: one worker process per slot (multiprocessing, pipes).

Steps run concurrently; a call past its timeout kills and restarts its worker, and a crashed worker is
restarted the same way, its exit (a signal, the OOM killer) named in the slot's error.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import time
from collections.abc import Mapping
from typing import Any

from envgym.pool.backend import PoolBackend, WorkerOptions
from envgym.pool.host import EnvResult, EnvSource, describe_exception


def describe_exit(code: int | None) -> str:
    """A worker's exit code in words: 'exit code 3', 'killed by SIGSEGV (segmentation fault)', ...

    A SIGKILL that the kernel's OOM killer sent is reported as 'killed: out of memory' when the
    cgroup's memory.events counts a new OOM kill (cgroup v2); see `_oom_kills`.
    """
    if code is None:
        return "no exit code"
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    meaning = {"SIGSEGV": "segmentation fault", "SIGABRT": "aborted", "SIGBUS": "bus error",
               "SIGKILL": "killed", "SIGFPE": "arithmetic error"}.get(name)
    return f"killed by {name}" + (f" ({meaning})" if meaning else "")


def _oom_kills() -> int | None:
    """The OOM kills counted in this process's cgroup (cgroup v2 memory.events), or None where unreadable."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            path = f.read().strip().rsplit(":", 1)[-1]
        with open(f"/sys/fs/cgroup{path}/memory.events", encoding="utf-8") as f:
            counts = dict(line.split() for line in f if line.strip())
        return int(counts["oom_kill"])
    except (OSError, KeyError, ValueError):
        return None


def _limit_memory(megabytes: int | None) -> None:
    """Cap this process's address space, so an env that allocates without bound gets a MemoryError."""
    if megabytes:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker_main(conn: multiprocessing.connection.Connection, source: EnvSource, environ: dict[str, str],
                 memory_limit_mb: int | None) -> None:
    """Serve one EnvHost over a pipe: ("reset", seed, options) | ("step", action) | ("oracle_action",) |
    ("sample_action", seed) | ("fork_recipe",) | ("adopt", recipe) | ("close",)."""
    # A forkserver child inherits the server's environment, not the pool owner's: use the owner's, as it is now.
    os.environ.clear()
    os.environ.update(environ)
    _limit_memory(memory_limit_mb)
    host = source.host()
    try:
        try:
            host.build()  # imports and construction do not count against the first reset's timeout
        except Exception:  # the first reset rebuilds and reports the cause
            pass
        conn.send("ready")
        while True:
            command, *args = conn.recv()
            if command == "close":
                break
            try:
                reply = getattr(host, command)(*args)
            except Exception as exc:  # oracle_action may raise; send the cause back
                reply = RuntimeError(f"{command} raised {describe_exception(exc)}")
            conn.send(reply)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        host.close()
        conn.close()


class ProcessBackend(PoolBackend):
    """One worker process per slot, each serving an `EnvHost` over a pipe (`_worker_main`)."""

    def __init__(self, source: EnvSource, num_envs: int, options: WorkerOptions):
        self.source, self.options = source, options
        self._context = multiprocessing.get_context(options.start_method)
        self._oom_kills_seen = _oom_kills()
        self.workers: list[tuple[Any, Any]] = []  # (process, the pool's end of its pipe) per slot
        try:
            for slot in range(num_envs):
                self.workers.append(self._start_worker(slot))
            for slot in range(num_envs):
                self._wait_until_ready(slot)
        except BaseException:
            self.close()
            raise

    def call(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        results: dict[int, EnvResult] = {}
        waiting: dict[Any, int] = {}
        start = time.monotonic()
        for slot, call in calls.items():
            process, conn = self.workers[slot]
            try:
                conn.send(call)
                waiting[conn] = slot
            except (BrokenPipeError, OSError):
                results[slot] = self._worker_died(slot, call[0])
        while waiting:
            next_deadline = start + min(timeouts[slot] for slot in waiting.values())
            ready = multiprocessing.connection.wait(list(waiting), timeout=max(0.0, next_deadline - time.monotonic()))
            for conn in ready:
                slot = waiting.pop(conn)
                try:
                    results[slot] = conn.recv()
                except (EOFError, OSError):
                    results[slot] = self._worker_died(slot, calls[slot][0])
            now = time.monotonic()
            for conn, slot in [(c, s) for c, s in waiting.items() if now >= start + timeouts[s]]:
                del waiting[conn]
                self.restart(slot)
                results[slot] = EnvResult(error=f"{calls[slot][0]} timed out after {timeouts[slot]:g}s; "
                                                "the worker was killed and restarted", seconds=timeouts[slot])
        return results

    def ask(self, slot: int, call: tuple, timeout: float) -> Any:
        conn = self.workers[slot][1]
        conn.send(call)
        if not conn.poll(timeout):
            self.restart(slot)
            raise TimeoutError(f"{call[0]} of slot {slot} took longer than {timeout:g}s")
        reply = conn.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def restart(self, slot: int) -> None:
        """Kill the slot's worker and start a fresh one."""
        process, conn = self.workers[slot]
        process.kill()
        process.join(timeout=5)
        conn.close()
        self.workers[slot] = self._start_worker(slot)
        self._wait_until_ready(slot)
        self.restarts += 1

    def add_slot(self) -> None:
        self.workers.append(self._start_worker(len(self.workers)))
        self._wait_until_ready(len(self.workers) - 1)

    def close(self) -> None:
        for slot in range(len(self.workers)):
            self._stop_worker(slot)

    def _start_worker(self, slot: int) -> tuple[Any, Any]:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child, self.source, dict(os.environ), self.options.memory_limit_mb),
            daemon=True, name=f"envgym-env-{slot}")
        process.start()
        child.close()
        return process, parent

    def _wait_until_ready(self, slot: int) -> None:
        process, conn = self.workers[slot]
        timeout = self.options.startup_timeout
        try:
            if conn.poll(timeout) and conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        raise RuntimeError(f"env worker {slot} did not start within {timeout:g}s "
                           f"(exit code {process.exitcode}); is the env importable in a fresh process?")

    def _stop_worker(self, slot: int) -> None:
        process, conn = self.workers[slot]
        try:
            conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
        conn.close()

    def _worker_died(self, slot: int, command: str) -> EnvResult:
        process, _ = self.workers[slot]
        process.join(timeout=5)
        how = describe_exit(process.exitcode)
        kills = _oom_kills()
        if process.exitcode == -signal.SIGKILL and kills is not None and kills > (self._oom_kills_seen or 0):
            how = "killed: out of memory (the kernel's OOM killer)"
            self._oom_kills_seen = kills
        self.restart(slot)
        return EnvResult(error=f"the worker process died during {command} ({how}); restarted")
