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

`episode_timeout` bounds the seconds from the end of `reset` to the end of
an episode's last step in every backend (worker start-up does not count).
Close the pool (or use it as a context manager): every env is closed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium
import numpy as np

from envgym.core import ForkRecipe, ReplayDiverged, fork_env

Backend = Literal["sync", "process", "ray", "auto"]
EnvFactory = Callable[[], gymnasium.Env]

log = logging.getLogger(__name__)

#: Steps slower than this go to worker processes under backend="auto". Measured here (benchmarks/rollout.py):
#: the pipe round trip adds ~0.13 ms to a step (Maze: 0.12 ms in-process, 0.24 ms in workers), and steps of
#: 1-3 ms run 2x faster in workers on 2 cores (TextWorld: 2.6 ms in-process, 1.3 ms in 4 workers).
PROCESS_STEP_SECONDS = 5e-4


@dataclass(frozen=True)
class EnvResult:
    """What one `reset` or `step` of a slot produced.

    After `reset`, `reward` is 0, `instructions` holds the env's system
    prompt and `task` the task index it drew. `seconds` is the env's own time. When `error` is set the other
    fields are meaningless and the slot must be reset before it is stepped again.
    """

    observation: str = ""
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    instructions: str = ""
    task: int | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    if isinstance(exc, MemoryError):
        return f"out of memory (MemoryError{where})"
    return f"{type(exc).__name__}: {exc}{where}"


def _fork_error(exc: BaseException) -> str:
    """Why a fork failed: a diverged replay's own message, else the exception and where it was raised."""
    return f"fork: {exc if isinstance(exc, ReplayDiverged) else _describe(exc)}"


def _check_info(info: Any) -> str | None:
    if not isinstance(info, dict):
        return f"info must be a dict, got {type(info).__name__}"
    if not isinstance(info.get("state_key"), str):
        return f"info['state_key'] must be a str, got {type(info.get('state_key')).__name__}"
    return None


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


class EnvHost:
    """One env and checked calls on it; lives wherever the env lives (this process, a worker, an actor)."""

    def __init__(self, make_env: str | EnvFactory, make_kwargs: Mapping[str, Any] | None = None,
                 spec: Any = None):
        self.make_env, self.make_kwargs, self.spec = make_env, dict(make_kwargs or {}), spec
        self.env: gymnasium.Env | None = None
        self.broken = True

    def build(self) -> None:
        """Make a fresh env (closing the old one)."""
        import envgym

        self.close()
        if self.spec is not None:  # an id registered only in the pool owner's process (a test, a notebook)
            from envgym.registration import adopt

            try:
                envgym.spec(self.spec.id)
            except KeyError:
                adopt(self.spec)
        if isinstance(self.make_env, str):
            self.env = envgym.make(self.make_env, **self.make_kwargs)
        else:
            self.env = self.make_env()
        self.broken = False

    def reset(self, seed: int | None, options: Mapping[str, Any] | None) -> EnvResult:
        start = time.perf_counter()
        try:
            if self.broken:
                self.build()
            obs, info = self.env.reset(seed=seed, options=dict(options or {}))
            problem = (f"reset must return a str observation, got {type(obs).__name__}"
                       if not isinstance(obs, str) else _check_info(info))
            instructions = getattr(self.env.unwrapped, "instructions", "")
            task = getattr(self.env.unwrapped, "task", None)
        except Exception as exc:  # an env bug must fail its episode, not the run
            problem = f"reset raised {_describe(exc)}"
        if problem:
            self.broken = True
            return EnvResult(error=problem, seconds=time.perf_counter() - start)
        return EnvResult(obs, 0.0, False, False, info, time.perf_counter() - start, instructions, task)

    def step(self, action: str) -> EnvResult:
        start = time.perf_counter()
        try:
            if self.broken:
                raise RuntimeError("the env failed earlier in this episode; reset it first")
            obs, reward, terminated, truncated, info = self.env.step(action)
            problem = self._check_step(obs, reward, terminated, truncated, info)
        except Exception as exc:
            problem = f"step({action[:40]!r}) raised {_describe(exc)}"
        if problem:
            self.broken = True
            return EnvResult(error=problem, seconds=time.perf_counter() - start)
        return EnvResult(obs, float(reward), bool(terminated), bool(truncated), info, time.perf_counter() - start)

    @staticmethod
    def _check_step(obs: Any, reward: Any, terminated: Any, truncated: Any, info: Any) -> str | None:
        if not isinstance(obs, str):
            return f"step must return a str observation, got {type(obs).__name__}"
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(float(reward)):
            return f"step must return a finite real reward, got {reward!r}"
        if not all(isinstance(flag, bool) for flag in (terminated, truncated)):
            return f"terminated and truncated must be bool, got {type(terminated).__name__}, {type(truncated).__name__}"
        return _check_info(info)

    def oracle_action(self) -> str:
        return self.env.unwrapped.oracle_action()

    def fork_recipe(self) -> ForkRecipe:
        """This slot's env as a `ForkRecipe` another process can build (for `EnvPool.fork`)."""
        if self.broken:
            raise RuntimeError("the env failed earlier in this episode; there is nothing to fork")
        return ForkRecipe.of(self.env)

    def adopt(self, fork: ForkRecipe | gymnasium.Env) -> EnvResult:
        """Hold `fork` (an env, or a recipe built here) in place of this slot's env; `error` says why not."""
        start = time.perf_counter()
        try:
            env = fork.build() if isinstance(fork, ForkRecipe) else fork
        except Exception as exc:  # a replay that diverged, an env that cannot be rebuilt
            return EnvResult(error=_fork_error(exc), seconds=time.perf_counter() - start)
        self.close()
        self.env, self.broken = env, False
        return EnvResult(seconds=time.perf_counter() - start)

    def sample_action(self, seed: int) -> str | None:
        """`env.unwrapped.sample_action` with a generator seeded by `seed`; None where the env has none."""
        try:
            return self.env.unwrapped.sample_action(np.random.default_rng(seed))
        except NotImplementedError:
            return None

    def close(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            finally:
                self.env = None


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


def _worker_main(conn: multiprocessing.connection.Connection, make_env: Any, make_kwargs: Any, spec: Any,
                 environ: dict[str, str], memory_limit_mb: int | None) -> None:
    """Serve one EnvHost over a pipe: ("reset", seed, options) | ("step", action) | ("oracle_action",) |
    ("sample_action", seed) | ("fork_recipe",) | ("adopt", recipe) | ("close",)."""
    # A forkserver child inherits the server's environment, not the pool owner's: use the owner's, as it is now.
    os.environ.clear()
    os.environ.update(environ)
    _limit_memory(memory_limit_mb)
    host = EnvHost(make_env, make_kwargs, spec)
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
                reply = RuntimeError(f"{command} raised {_describe(exc)}")
            conn.send(reply)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        host.close()
        conn.close()


class EnvPool:
    """`num_envs` env slots of one env id (or factory), stepped concurrently."""

    def __init__(self, make_env: str | EnvFactory, num_envs: int, *, backend: Backend = "sync",
                 step_timeout: float = 60.0, episode_timeout: float | None = None,
                 make_kwargs: Mapping[str, Any] | None = None, start_method: str = "forkserver",
                 startup_timeout: float = 120.0, memory_limit_mb: int | None = None,
                 ray_address: str | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if backend not in ("sync", "process", "ray", "auto"):
            raise ValueError(f"backend must be 'sync', 'process', 'ray' or 'auto', got {backend!r}")
        if step_timeout <= 0 or (episode_timeout is not None and episode_timeout <= 0):
            raise ValueError("step_timeout and episode_timeout must be positive seconds")
        self.make_env, self.make_kwargs = make_env, dict(make_kwargs or {})
        self.num_envs = num_envs
        self.step_timeout, self.episode_timeout = float(step_timeout), episode_timeout
        self.startup_timeout = float(startup_timeout)
        if memory_limit_mb is not None and backend not in ("process", "auto"):
            raise ValueError(f"memory_limit_mb caps a worker process: it needs backend='process', not {backend!r}")
        self.memory_limit_mb = memory_limit_mb
        if ray_address is not None and backend != "ray":
            raise ValueError(f"ray_address names a Ray cluster for backend='ray', not {backend!r}")
        self._oom_kills_at_start = _oom_kills()
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
        self._closed = False
        self.restarts = 0
        if backend == "process":
            self._context = multiprocessing.get_context(start_method)
            self._workers: list[Any] = [None] * num_envs
            for slot in range(num_envs):
                self._start_worker(slot)
            for slot in range(num_envs):
                self._wait_until_ready(slot)
        elif backend == "ray":
            self._actors: list[Any] = []  # what `close` stops if connecting fails
            self._ray = _import_ray(ray_address)
            self._actor_class = self._ray.remote(num_cpus=0)(EnvHost)
            nodes = self._cpu_nodes()
            self._actors = [self._start_actor(slot, nodes, soft=False) for slot in range(num_envs)]
        else:
            self._hosts = [EnvHost(make_env, self.make_kwargs, self._spec) for _ in range(num_envs)]
            if probe is not None:
                self._hosts[0] = probe

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
                    self._mark_broken(slot)
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
            if self.backend == "sync":
                result = self._hosts[target].adopt(fork_env(self._hosts[source].env))
            else:
                result = self._ask(target, "adopt", self._ask(source, "fork_recipe"))
        except Exception as exc:
            result = EnvResult(error=_fork_error(exc))
        self._episode_start[target] = self._episode_start[source]
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    def add_slot(self) -> int:
        """One more slot (a fresh env; with workers or actors, a new one started); its index."""
        if self._closed:
            raise RuntimeError("the EnvPool is closed")
        slot = self.num_envs
        if self.backend == "sync":
            self._hosts.append(EnvHost(self.make_env, self.make_kwargs, self._spec))
        elif self.backend == "process":
            self._workers.append(None)
            self._start_worker(slot)
            self._wait_until_ready(slot)
        else:
            self._actors.append(self._start_actor(slot, self._cpu_nodes()))
        self._episode_start.append(0.0)
        self.num_envs += 1
        return slot

    def oracle_action(self, slot: int) -> str:
        """`env.unwrapped.oracle_action()` of slot `slot`, computed where the env lives."""
        return self._ask(slot, "oracle_action")

    def sample_action(self, slot: int, seed: int) -> str | None:
        """`env.unwrapped.sample_action(rng)` of slot `slot` with `rng` seeded by `seed`, computed where the env
        lives; None where the env does not implement it."""
        return self._ask(slot, "sample_action", seed)

    def _ask(self, slot: int, method: str, *args: Any) -> Any:
        """`EnvHost.<method>(*args)` of slot `slot`, where the env lives; raises what the env raised."""
        if self.backend == "sync":
            return getattr(self._hosts[slot], method)(*args)
        if self.backend == "ray":
            return self._ray.get(getattr(self._actors[slot], method).remote(*args), timeout=self.step_timeout)
        conn = self._workers[slot][1]
        conn.send((method, *args))
        if not conn.poll(self.step_timeout):
            self._restart_worker(slot)
            raise TimeoutError(f"{method} of slot {slot} took longer than {self.step_timeout:g}s")
        reply = conn.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        """Close every env and stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.backend == "sync":
            for host in self._hosts:
                host.close()
        elif self.backend == "process":
            for slot in range(self.num_envs):
                self._stop_worker(slot)
        else:
            for actor in self._actors:
                try:
                    self._ray.get(actor.close.remote(), timeout=5)
                except Exception:  # a dead actor has nothing left to close
                    pass
                self._ray.kill(actor)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    # -- backends -----------------------------------------------------------------------------------

    def _call(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        """Run `calls[slot]` = (method, *args) on each slot, each within `timeouts[slot]` seconds."""
        if self._closed:
            raise RuntimeError("the EnvPool is closed")
        if not calls:
            return {}
        if self.backend == "sync":
            return {slot: self._call_sync(slot, call, timeouts[slot]) for slot, call in calls.items()}
        if self.backend == "ray":
            return self._call_ray(calls, timeouts)
        return self._call_process(calls, timeouts)

    def _call_sync(self, slot: int, call: tuple, timeout: float) -> EnvResult:
        command, *args = call
        result = getattr(self._hosts[slot], command)(*args)
        if result.error is None and result.seconds > timeout:
            self._hosts[slot].broken = True
            return EnvResult(error=f"{command} took {result.seconds:.2f}s, past the timeout of {timeout:g}s",
                             seconds=result.seconds)
        return result

    def _call_process(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        results: dict[int, EnvResult] = {}
        waiting: dict[Any, int] = {}
        start = time.monotonic()
        for slot, call in calls.items():
            process, conn = self._workers[slot]
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
                self._restart_worker(slot)
                results[slot] = EnvResult(error=f"{calls[slot][0]} timed out after {timeouts[slot]:g}s; "
                                                "the worker was killed and restarted", seconds=timeouts[slot])
        return results

    def _call_ray(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        ray = self._ray
        refs = {getattr(self._actors[slot], call[0]).remote(*call[1:]): slot for slot, call in calls.items()}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=max(timeouts.values()))
        results: dict[int, EnvResult] = {}
        for ref in ready:
            slot = refs[ref]
            try:
                results[slot] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._restart_actor(slot)
                results[slot] = EnvResult(error=f"env actor died during {calls[slot][0]}: {exc}; restarted")
        for ref in pending:
            slot = refs[ref]
            self._restart_actor(slot)
            results[slot] = EnvResult(error=f"{calls[slot][0]} timed out after {timeouts[slot]:g}s; "
                                            "the actor was killed and restarted", seconds=timeouts[slot])
        return results

    def _mark_broken(self, slot: int) -> None:
        """Make the slot's next reset start from a fresh env."""
        if self.backend == "sync":
            self._hosts[slot].broken = True
        elif self.backend == "process":
            self._restart_worker(slot)
        else:
            self._restart_actor(slot)

    def _start_worker(self, slot: int) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child, self.make_env, self.make_kwargs, self._spec, dict(os.environ), self.memory_limit_mb),
            daemon=True, name=f"envgym-env-{slot}")
        process.start()
        child.close()
        self._workers[slot] = (process, parent)

    def _wait_until_ready(self, slot: int) -> None:
        process, conn = self._workers[slot]
        try:
            if conn.poll(self.startup_timeout) and conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        raise RuntimeError(f"env worker {slot} did not start within {self.startup_timeout:g}s "
                           f"(exit code {process.exitcode}); is the env importable in a fresh process?")

    def _stop_worker(self, slot: int) -> None:
        process, conn = self._workers[slot]
        try:
            conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
        conn.close()

    def _restart_worker(self, slot: int) -> None:
        process, conn = self._workers[slot]
        process.kill()
        process.join(timeout=5)
        conn.close()
        self._start_worker(slot)
        self._wait_until_ready(slot)
        self.restarts += 1

    def _worker_died(self, slot: int, command: str) -> EnvResult:
        process, _ = self._workers[slot]
        process.join(timeout=5)
        how = describe_exit(process.exitcode)
        kills = _oom_kills()
        if process.exitcode == -signal.SIGKILL and kills is not None and kills > (self._oom_kills_at_start or 0):
            how = "killed: out of memory (the kernel's OOM killer)"
            self._oom_kills_at_start = kills
        self._restart_worker(slot)
        return EnvResult(error=f"the worker process died during {command} ({how}); restarted")

    def _cpu_nodes(self) -> list[str]:
        """The ids of the cluster's live nodes with CPUs, sorted."""
        return sorted(node["NodeID"] for node in self._ray.nodes()
                      if node["Alive"] and node["Resources"].get("CPU", 0) > 0)

    def _start_actor(self, slot: int, nodes: list[str], soft: bool = True) -> Any:
        """Slot `slot`'s env actor, on the `nodes` in turn (slot i on the i-th, modulo; see `_cpu_nodes`).

        Envs reserve no CPU, so Ray's default policy would pack every actor onto
        this node, and SPREAD is best effort (seen placing 4 of 4 on one of two
        nodes). The pool's first actors hold to their node (a soft affinity fell
        back to this node under load); a restarted one's affinity is soft, so a
        node gone since the list was read leaves the choice to Ray.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(nodes[slot % len(nodes)], soft=soft) if nodes else "DEFAULT"
        return self._actor_class.options(scheduling_strategy=strategy).remote(self.make_env, self.make_kwargs,
                                                                             self._spec)

    def _restart_actor(self, slot: int) -> None:
        self._ray.kill(self._actors[slot])
        self._actors[slot] = self._start_actor(slot, self._cpu_nodes())
        self.restarts += 1


def _import_ray(address: str | None = None):
    """Ray, initialised: connected to the cluster at `address` ("auto", "HOST:PORT"), or a local one if None.

    Raises ConnectionError, naming the address, when no cluster answers there
    (`ray.init` itself would retry for minutes).
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the 'ray' EnvPool backend needs Ray: pip install 'envgym[ray]'") from exc
    if not ray.is_initialized():
        if address is not None:
            _check_ray_answers(address)
        # Actors import env classes the way this process does (a script's folder, a test folder).
        # "local", not None: None would join whatever cluster RAY_ADDRESS or /tmp/ray's address file names
        ray.init(address=address or "local", include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    return ray


def _check_ray_answers(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless a Ray head answers at `address` within `timeout` seconds."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address

    hint = "start one with `ray start --head` and pass its HOST:PORT (or 'auto' on a node of the cluster)"
    try:
        resolved = canonicalize_bootstrap_address(address)
    except ConnectionError as exc:
        raise ConnectionError(f"Ray address {address!r}: no running Ray cluster found ({exc}); {hint}") from None
    if resolved is None:  # "local": Ray starts one here
        return
    host, _, port = resolved.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"Ray address {address!r} ({resolved}) does not answer: {exc}; {hint}") from None
