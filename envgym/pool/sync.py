"""The "sync" backend: the envs live in this process and step one after another."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envgym.core import fork_env
from envgym.pool.backend import PoolBackend, WorkerOptions
from envgym.pool.host import EnvHost, EnvResult, EnvSource


class SyncBackend(PoolBackend):
    """One `EnvHost` per slot, in this process. A call that runs past its timeout is reported as failed once it
    returns (a hung env cannot be interrupted in-process). `first`, an env host already built here (the auto
    choice's probe), becomes slot 0."""

    def __init__(self, source: EnvSource, num_envs: int, options: WorkerOptions, first: EnvHost | None = None):
        self.source = source
        self.hosts = [source.host() for _ in range(num_envs)]
        if first is not None:
            self.hosts[0] = first

    def call(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        return {slot: self._call(slot, call, timeouts[slot]) for slot, call in calls.items()}

    def _call(self, slot: int, call: tuple, timeout: float) -> EnvResult:
        command, *args = call
        result = getattr(self.hosts[slot], command)(*args)
        if result.error is None and result.seconds > timeout:
            self.hosts[slot].broken = True
            return EnvResult(error=f"{command} took {result.seconds:.2f}s, past the timeout of {timeout:g}s",
                             seconds=result.seconds)
        return result

    def ask(self, slot: int, call: tuple, timeout: float) -> Any:
        method, *args = call
        return getattr(self.hosts[slot], method)(*args)

    def fork(self, source: int, target: int, timeout: float) -> EnvResult:
        """In-process the env's own `fork` runs."""
        return self.hosts[target].adopt(fork_env(self.hosts[source].env))

    def restart(self, slot: int) -> None:
        self.hosts[slot].broken = True

    def add_slot(self) -> None:
        self.hosts.append(self.source.host())

    def close(self) -> None:
        for host in self.hosts:
            host.close()
