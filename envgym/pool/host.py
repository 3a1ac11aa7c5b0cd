"""`EnvHost`: one env and checked calls on it, wherever a pool's slot keeps it; `EnvResult`: what a call returned."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

from envgym.core import ForkRecipe, ReplayDiverged

EnvFactory = Callable[[], gymnasium.Env]


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


def describe_exception(exc: BaseException) -> str:
    """`exc` in one line: its type, message and where it was raised; a MemoryError as 'out of memory'."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    if isinstance(exc, MemoryError):
        return f"out of memory (MemoryError{where})"
    return f"{type(exc).__name__}: {exc}{where}"


def fork_error(exc: BaseException) -> str:
    """Why a fork failed: a diverged replay's own message, else the exception and where it was raised."""
    return f"fork: {exc if isinstance(exc, ReplayDiverged) else describe_exception(exc)}"


def _check_info(info: Any) -> str | None:
    if not isinstance(info, dict):
        return f"info must be a dict, got {type(info).__name__}"
    if not isinstance(info.get("state_key"), str):
        return f"info['state_key'] must be a str, got {type(info.get('state_key')).__name__}"
    return None


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
            problem = f"reset raised {describe_exception(exc)}"
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
            problem = f"step({action[:40]!r}) raised {describe_exception(exc)}"
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
            return EnvResult(error=fork_error(exc), seconds=time.perf_counter() - start)
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


@dataclass(frozen=True)
class EnvSource:
    """What every slot of a pool builds its env from: an env id or factory, the keyword arguments for
    `envgym.make`, and the id's spec (None for a plain factory), which a process where the id is not
    registered adopts. Picklable, so it travels to workers and actors."""

    make_env: str | EnvFactory
    make_kwargs: Mapping[str, Any]
    spec: Any = None

    def host(self) -> EnvHost:
        """A new host of this env, not built yet (its first reset builds it)."""
        return EnvHost(self.make_env, self.make_kwargs, self.spec)
