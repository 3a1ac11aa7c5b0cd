"""`EnvPool`: N envs stepped concurrently, in-process, in worker processes or in Ray actors.

Every call on an env goes through `EnvHost`, which checks what the env
returns (a `str` observation, a real-number reward, bool flags, an info dict
with a `str` `state_key`) and turns any exception or malformed result into an
`EnvResult` with `error` set, naming the cause. A slot whose env failed is
rebuilt (a fresh env; a fresh worker if the old one died or hung) on its next
`reset`. Backends:

- ``"sync"``: the envs live in this process and step one after another. A
  step that runs past `step_timeout` is reported as failed once it returns
  (a hung env cannot be interrupted in-process: use another backend).
- ``"process"``: one worker process per slot (multiprocessing, pipes); steps
  run concurrently, a step past `step_timeout` kills and restarts its worker,
  and a crashed worker is restarted the same way.
- ``"ray"``: one Ray actor per slot (optional extra `envgym[ray]`), with the
  same timeout and restart behaviour. The actors are spread over the nodes of
  the Ray cluster (`ray_address`: "auto" or a head's "HOST:PORT"; default a
  local Ray started in this process); an env that starts a sandbox starts it
  on its actor's node. An actor lost with its node fails only its episode.
- ``"auto"``: ``"process"`` for envs whose steps cost more than a pipe round
  trip is worth (the spec declares `step_seconds` above
  `PROCESS_STEP_SECONDS`: TextWorld, sandboxed tools) when there are two or
  more slots and cores, else ``"sync"``. `backend` is then the choice and
  `choice` says why. (A worker holds one env: 40-70 MB each here.)

Each backend is a `PoolBackend` in a module of its own (`envgym.pool.sync`,
`.process`, `.ray`; Ray is imported only when used), found by name in
`BACKENDS`; the pool keeps what they share: episode clocks and timeouts, the
slots' bookkeeping, the auto choice.

`episode_timeout` bounds the seconds from the end of `reset` to the end of
an episode's last step in every backend (worker start-up does not count).
Close the pool (or use it as a context manager): every env is closed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

from envgym.pool.backend import PoolBackend, WorkerOptions
from envgym.pool.host import EnvFactory, EnvHost, EnvResult, EnvSource, fork_error
from envgym.pool.process import ProcessBackend, describe_exit
from envgym.pool.ray import RayBackend
from envgym.pool.sync import SyncBackend

Backend = Literal["sync", "process", "ray", "auto"]
#: The backends by name; each keeps the envs of its slots in its own place (see `PoolBackend`).
BACKENDS: dict[str, type[PoolBackend]] = {"sync": SyncBackend, "process": ProcessBackend, "ray": RayBackend}

__all__ = ["BACKENDS", "PROCESS_STEP_SECONDS", "Backend", "EnvFactory", "EnvHost", "EnvPool", "EnvResult",
           "PoolBackend", "cores_of_this_process", "default_num_envs", "describe_exit"]

log = logging.getLogger(__name__)

#: Steps slower than this go to worker processes under backend="auto". Measured here (benchmarks/rollout.py):
#: the pipe round trip adds ~0.13 ms to a step (Maze: 0.12 ms in-process, 0.24 ms in workers), and steps of
#: 1-3 ms run 2x faster in workers on 2 cores (TextWorld: 2.6 ms in-process, 1.3 ms in 4 workers).
PROCESS_STEP_SECONDS = 5e-4


def cores_of_this_process() -> int:
    """The CPU cores this process may count on: the machine's, shared among the ranks torchrun started on it
    (LOCAL_WORLD_SIZE), at least 1."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(1, (os.cpu_count() or 1) // max(1, ranks_here))


def default_num_envs(backend: Backend, episodes: int, env: str | EnvFactory | None = None) -> int:
    """Slots for `episodes` episodes: all at once in-process (cheap, and every episode joins each batched
    policy call), at most 4 per core of `cores_of_this_process` in workers (a process each). For "auto",
    in-process when `env`'s spec declares steps cheaper than PROCESS_STEP_SECONDS or none (as `EnvPool`
    then decides)."""
    if backend == "auto":
        env_id = env if isinstance(env, str) else getattr(env, "env_id", None)
        if isinstance(env_id, str):
            import envgym

            declared = envgym.spec(env_id).step_seconds
            backend = "sync" if declared is None or declared <= PROCESS_STEP_SECONDS else "process"
    return max(1, episodes if backend == "sync" else min(episodes, 4 * cores_of_this_process()))


class EnvPool:
    """`num_envs` env slots of one env id (or factory), stepped concurrently."""

    def __init__(self, make_env: str | EnvFactory, num_envs: int, *, backend: Backend = "sync",
                 step_timeout: float = 60.0, episode_timeout: float | None = None,
                 make_kwargs: Mapping[str, Any] | None = None, start_method: str = "forkserver",
                 startup_timeout: float = 120.0, memory_limit_mb: int | None = None,
                 ray_address: str | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if backend not in (*BACKENDS, "auto"):
            raise ValueError(f"backend must be 'sync', 'process', 'ray' or 'auto', got {backend!r}")
        if step_timeout <= 0 or (episode_timeout is not None and episode_timeout <= 0):
            raise ValueError("step_timeout and episode_timeout must be positive seconds")
        self.make_env, self.make_kwargs = make_env, dict(make_kwargs or {})
        self.num_envs = num_envs
        self.step_timeout, self.episode_timeout = float(step_timeout), episode_timeout
        if memory_limit_mb is not None and backend not in ("process", "auto"):
            raise ValueError(f"memory_limit_mb caps a worker process: it needs backend='process', not {backend!r}")
        if ray_address is not None and backend != "ray":
            raise ValueError(f"ray_address names a Ray cluster for backend='ray', not {backend!r}")
        self._spec = None
        env_id = make_env if isinstance(make_env, str) else getattr(make_env, "env_id", None)
        if isinstance(env_id, str):  # an id, or a factory of one (EnvMaker): its spec travels to the workers
            import envgym

            self._spec = envgym.spec(env_id)  # fails fast on an unknown id
        probe = None
        if backend == "auto" and memory_limit_mb is not None:
            backend, self.choice = "process", "worker processes (a memory cap needs them)"
        elif backend == "auto":
            backend, self.choice, probe = self._choose_backend()
            log.info("EnvPool of %d: %s", num_envs, self.choice)
        else:
            self.choice = f"{backend} (asked for)"
        self.backend = backend
        self._episode_start = [0.0] * num_envs
        self._closed = True  # until the backend has started: it stops what it started if it fails
        source = EnvSource(make_env, self.make_kwargs, self._spec)
        options = WorkerOptions(start_method, float(startup_timeout), memory_limit_mb, ray_address)
        # the auto choice's probe, an env built in this process, is kept only for the in-process backend
        self._backend = (BACKENDS[backend](source, num_envs, options) if probe is None
                         else SyncBackend(source, num_envs, options, first=probe))
        self._closed = False

    def _choose_backend(self) -> tuple[Backend, str, EnvHost | None]:
        """For backend="auto": (backend, why, the env built to read a factory's spec, to reuse as slot 0).

        A factory's env id is read from one env built here (`env.spec.id`, set by `envgym.make`).
        """
        import envgym

        spec, probe = self._spec, None
        if spec is None:
            probe = EnvHost(self.make_env, self.make_kwargs)
            try:
                probe.build()
                spec = envgym.spec(probe.env.spec.id)
            except Exception:  # not an envgym env, or it fails to build: the first reset reports any failure
                pass
        declared = spec.step_seconds if spec is not None else None
        name = spec.id if spec is not None else "this env"
        threshold = f"worker processes pay for steps over {PROCESS_STEP_SECONDS * 1e3:g} ms"
        if declared is None:
            return "sync", f"in-process ({name} declares no step_seconds; {threshold})", probe
        if declared <= PROCESS_STEP_SECONDS:
            return "sync", f"in-process (steps of {name} take ~{declared * 1e3:g} ms; {threshold})", probe
        cores = cores_of_this_process()
        if self.num_envs < 2 or cores < 2:
            return "sync", f"in-process ({self.num_envs} slot(s) on {cores} core(s) cannot step in parallel)", probe
        if probe is not None:
            probe.close()
        self._spec = spec  # workers register it before calling the factory, should it be registered only here
        return "process", f"worker processes (steps of {name} take ~{declared * 1e3:g} ms)", None

    # -- public -------------------------------------------------------------------------------------

    @property
    def restarts(self) -> int:
        """Workers or actors replaced so far (after a timeout, a crash or an episode timeout)."""
        return self._backend.restarts

    def reset(self, requests: Mapping[int, tuple[int | None, Mapping[str, Any] | None]]) -> dict[int, EnvResult]:
        """Reset each slot `i` of `requests` with `(seed, options)`; a failed slot is rebuilt first."""
        results = self._call({slot: ("reset", seed, options) for slot, (seed, options) in requests.items()},
                             dict.fromkeys(requests, self.step_timeout))
        now = time.monotonic()
        for slot in requests:
            self._episode_start[slot] = now
        return results

    def step(self, actions: Mapping[int, str]) -> dict[int, EnvResult]:
        """Step each slot `i` of `actions` with its action, concurrently where the backend allows."""
        now = time.monotonic()
        results: dict[int, EnvResult] = {}
        calls, timeouts = {}, {}
        for slot, action in actions.items():
            timeouts[slot] = self.step_timeout
            if self.episode_timeout is not None:
                left = self.episode_timeout - (now - self._episode_start[slot])
                if left <= 0:
                    results[slot] = EnvResult(error=f"episode ran past its timeout of {self.episode_timeout:g}s")
                    self._backend.restart(slot)
                    continue
                timeouts[slot] = min(self.step_timeout, left)
            calls[slot] = ("step", action)
        results.update(self._call(calls, timeouts))
        return results

    def fork(self, source: int, target: int) -> EnvResult:
        """Put a fork of slot `source`'s env (mid-episode) into slot `target`, which can then be stepped on its own.

        In-process the env's own `fork` runs; with workers or actors the fork travels as a `ForkRecipe`: a copy
        of envs that declare `episode_state`, else a replay of the episode in `target`'s process. The target's
        episode clock starts from the source's. `error` is set (and `target` left as it was) when the fork
        failed, e.g. an env whose replay diverged from its episode.
        """
        if source == target:
            raise ValueError(f"cannot fork slot {source} into itself")
        start = time.perf_counter()
        try:
            result = self._backend.fork(source, target, self.step_timeout)
        except Exception as exc:
            result = EnvResult(error=fork_error(exc))
        self._episode_start[target] = self._episode_start[source]
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    def add_slot(self) -> int:
        """One more slot (a fresh env; with workers or actors, a new one started); its index."""
        if self._closed:
            raise RuntimeError("the EnvPool is closed")
        self._backend.add_slot()
        self._episode_start.append(0.0)
        self.num_envs += 1
        return self.num_envs - 1

    def oracle_action(self, slot: int) -> str:
        """`env.unwrapped.oracle_action()` of slot `slot`, computed where the env lives."""
        return self._backend.ask(slot, ("oracle_action",), self.step_timeout)

    def sample_action(self, slot: int, seed: int) -> str | None:
        """`env.unwrapped.sample_action(rng)` of slot `slot` with `rng` seeded by `seed`, computed where the env
        lives; None where the env does not implement it."""
        return self._backend.ask(slot, ("sample_action", seed), self.step_timeout)

    def close(self) -> None:
        """Close every env and stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._backend.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def _call(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        """Run `calls[slot]` = (method, *args) on each slot, each within `timeouts[slot]` seconds."""
        if self._closed:
            raise RuntimeError("the EnvPool is closed")
        if not calls:
            return {}
        return self._backend.call(calls, timeouts)
