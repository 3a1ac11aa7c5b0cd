"""`PoolBackend`: where an `EnvPool`'s slots keep their envs, and how calls reach them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envgym.pool.host import EnvResult


@dataclass(frozen=True)
class WorkerOptions:
    """How slots outside this process start: the multiprocessing start method, the seconds a worker may take
    to build its env, a worker's address-space cap in MB (None: no cap), and the Ray cluster's address (None:
    a local Ray). Each backend reads what applies to it."""

    start_method: str = "forkserver"
    startup_timeout: float = 120.0
    memory_limit_mb: int | None = None
    ray_address: str | None = None


class PoolBackend(ABC):
    """A pool's slots, numbered from 0, each holding one `EnvHost`; a call is `(method, *args)` of `EnvHost`.

    Constructed as `Backend(source: EnvSource, num_envs, options: WorkerOptions)`: every slot's host is
    started (its env built where that does not count against a call's timeout) before the constructor
    returns; a constructor that fails stops what it started. `restarts` counts the workers or actors
    replaced (after a timeout, a crash or `restart`).
    """

    restarts: int = 0

    @abstractmethod
    def call(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        """Run `calls[slot]` on each slot, concurrently where the backend can, each within `timeouts[slot]`
        seconds. Never raises for what an env did: a slot that timed out or died gets an `EnvResult` whose
        `error` says so, and is replaced."""

    @abstractmethod
    def ask(self, slot: int, call: tuple, timeout: float) -> Any:
        """What `call` on slot `slot`'s host returns; raises what it raised, TimeoutError past `timeout` seconds
        (where the backend can stop a call)."""

    @abstractmethod
    def restart(self, slot: int) -> None:
        """Make the slot's next reset start from a fresh env."""

    @abstractmethod
    def add_slot(self) -> None:
        """Start one more slot, numbered after the others."""

    @abstractmethod
    def close(self) -> None:
        """Close every env and stop what the backend started (called once)."""

    def fork(self, source: int, target: int, timeout: float) -> EnvResult:
        """Put a fork of slot `source`'s env into slot `target` (see `EnvPool.fork`); may raise.

        Here the fork travels as a `ForkRecipe`, built in `target`'s process."""
        return self.ask(target, ("adopt", self.ask(source, ("fork_recipe",), timeout)), timeout)
