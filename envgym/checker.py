"""`check_env`: Gymnasium's own checker, then the checks a multi-turn text env must pass.

Each check returns a `CheckResult`; `check_env` gathers them in a `CheckReport`
that renders as a readable table and says `ok` only if every check passed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
from gymnasium.utils.env_checker import check_env as gymnasium_check_env

from envgym.core import Env, fork_env
from envgym.registration import make, spec

BAD_ACTIONS: list[tuple[str, Any]] = [
    ("empty string", ""),
    ("1 MB string", "go north " * 116_509),
    ("binary junk", "\x00\xff\x1b[31m\ud7ff\x7f" * 64),
    ("bytes", b"go north"),
    ("None", None),
    ("int", 42),
    ("list", ["go", "north"]),
]
STEP_SECONDS = 10.0


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class CheckReport:
    env_id: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def render(self) -> str:
        lines = [f"envgym check {self.env_id}"]
        for r in self.results:
            lines.append(f"  {'PASS' if r.passed else 'FAIL'}  {r.name}" + (f": {r.detail}" if r.detail else ""))
        verdict = "all checks passed" if self.ok else f"{len(self.failures)} of {len(self.results)} checks failed"
        lines.append(f"  -> {verdict}")
        return "\n".join(lines)


class CheckFailure(AssertionError):
    """A text-env check found a contract violation; the message says which and how to fix it."""


@contextmanager
def _deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise CheckFailure if the block runs past `seconds` (enforced only on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckFailure(f"{what} did not return within {seconds:.0f} s (a hang)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _pick_action(env: gymnasium.Env, info: dict[str, Any], rng: np.random.Generator) -> str:
    """A plausible next action: a seeded choice of the admissible ones, else the oracle's, else random text."""
    admissible = info.get("admissible_actions")
    if admissible:
        return str(admissible[int(rng.integers(len(admissible)))])
    if rng.random() < 0.7:
        try:
            return env.unwrapped.oracle_action()
        except NotImplementedError:
            pass
    return env.action_space.sample()


def play(env: gymnasium.Env, seed: int, options: dict[str, Any] | None, steps: int,
         actions: list[str] | None = None) -> dict[str, Any]:
    """Reset with `seed`/`options` and play `actions` (or seeded plausible ones); return the transcript."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed, options=options)
    transcript: dict[str, Any] = {"observations": [obs], "rewards": [], "state_keys": [info.get("state_key")],
                                  "actions": [], "done": []}
    chosen = list(actions) if actions is not None else None
    for t in range(steps if chosen is None else len(chosen)):
        action = chosen[t] if chosen is not None else _pick_action(env, info, rng)
        with _deadline(STEP_SECONDS, f"step({action[:30]!r})"):
            obs, reward, terminated, truncated, info = env.step(action)
        transcript["actions"].append(action)
        transcript["observations"].append(obs)
        transcript["rewards"].append(float(reward))
        transcript["state_keys"].append(info.get("state_key"))
        transcript["done"].append(bool(terminated or truncated))
        if terminated or truncated:
            break
    return transcript


def _entry_point_path(env_id: str) -> str | None:
    """`"module:Name"` for the entry point of `env_id`, or None if another process could not import it."""
    entry = spec(env_id).entry_point
    if isinstance(entry, str):
        return entry
    module = sys.modules.get(entry.__module__)
    if entry.__module__ == "__main__" or getattr(module, "__file__", None) is None or "<" in entry.__qualname__:
        return None
    return f"{entry.__module__}:{entry.__qualname__}"


def _transcript_in_subprocess(env_id: str, make_kwargs: dict[str, Any], seed: int,
                              actions: list[str]) -> list:
    """The state keys of the same episode replayed in a fresh Python process (same import path)."""
    code = (
        "import json, sys, envgym\n"
        "from envgym.checker import play\n"
        "a = json.loads(sys.stdin.read())\n"
        "env = envgym.make(a['id'], **a['kwargs'])\n"
        "print(json.dumps(play(env, a['seed'], None, 0, a['actions'])['state_keys']))\n"
    )
    entry = _entry_point_path(env_id)
    # an id registered only in this process (a test, a notebook) is registered there too; others resolve there
    prelude = (f"import envgym\ntry:\n    envgym.spec({env_id!r})\nexcept KeyError:\n    envgym.register({env_id!r}, "
               f"{entry!r}, max_turns={spec(env_id).max_turns!r}, kwargs={dict(spec(env_id).kwargs)!r})\n")
    payload = json.dumps({"id": env_id, "kwargs": make_kwargs, "seed": seed, "actions": actions})
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", prelude + code], input=payload, capture_output=True, text=True,
                         timeout=300, env=environ)
    if out.returncode != 0:
        raise CheckFailure(f"replaying in a second process failed (exit {out.returncode}): {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_gymnasium(env: gymnasium.Env, env_id: str | None) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env.unwrapped, skip_render_check=True)
    notes = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    return f"{len(notes)} warning(s): {'; '.join(notes)}" if notes else ""


def check_declarations(env: gymnasium.Env, env_id: str | None) -> str:
    base = env.unwrapped
    if not isinstance(base, Env):
        raise CheckFailure(f"{type(base).__name__} is not an envgym.Env; subclass envgym.Env")
    if not base.instructions.strip():
        raise CheckFailure("instructions are empty; set `instructions` to the system prompt an agent needs")
    if not base.action_format.strip():
        raise CheckFailure("action_format is empty; say in one line what a valid action looks like")
    if set(base.num_tasks) != {"train", "test"} or min(base.num_tasks.values()) < 1:
        raise CheckFailure(f"num_tasks must give >= 1 task for 'train' and 'test', got {dict(base.num_tasks)}")
    return f"tasks: {dict(base.num_tasks)}"


def check_info_contract(env: gymnasium.Env, env_id: str | None) -> str:
    obs, info = env.reset(seed=0)
    if "state_key" not in info:
        raise CheckFailure("reset info has no 'state_key'")
    steps = 0
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(_pick_action(env, info, rng))
        steps += 1
        for key, kind in (("state_key", str), ("invalid_action", bool)):
            if not isinstance(info.get(key), kind):
                raise CheckFailure(f"step info[{key!r}] must be a {kind.__name__}, got {info.get(key)!r}")
        if not isinstance(obs, str):
            raise CheckFailure(f"step returned a {type(obs).__name__} observation; observations are str")
        if terminated or truncated:
            break
    return f"{steps} steps"


def check_determinism(env: gymnasium.Env, env_id: str | None) -> str:
    for seed in (0, 7):
        first = play(env, seed, None, 20)
        second = play(env, seed, None, 0, first["actions"])
        if first != second:
            diff = next(k for k in first if first[k] != second[k])
            raise CheckFailure(f"same seed {seed} and same actions gave a different episode ({diff} differ)")
    return "2 seeds replayed"


def check_reset_isolation(env: gymnasium.Env, env_id: str | None, fresh: Callable[[], gymnasium.Env]) -> str:
    play(env, 3, {"split": "test"}, 15)
    after_other = play(env, 11, None, 15)
    other = fresh()
    try:
        clean = play(other, 11, None, 0, after_other["actions"])
    finally:
        other.close()
    if after_other != clean:
        raise CheckFailure("an episode played after another differs from the same episode in a fresh env: "
                           "reset carries state over")
    return ""


def check_state_keys(env: gymnasium.Env, env_id: str | None, make_kwargs: dict[str, Any]) -> str:
    transcript = play(env, 5, None, 15)
    keys = transcript["state_keys"]
    if any(not isinstance(k, str) for k in keys):
        raise CheckFailure(f"state_key must be a str, got {[type(k).__name__ for k in keys][:5]}")
    if env_id is None:
        return "cross-process check skipped (env has no registered id)"
    if _entry_point_path(env_id) is None:
        return "cross-process check skipped (the entry point is not importable by another process)"
    remote = _transcript_in_subprocess(env_id, make_kwargs, 5, transcript["actions"])
    if remote != keys:
        raise CheckFailure("state keys differ between two processes for the same episode; "
                           "build state_key from canonical state, never from Python's hash() or id()")
    return f"{len(keys)} keys equal across processes"


def check_bad_actions(env: gymnasium.Env, env_id: str | None) -> str:
    handled = []
    for label, action in BAD_ACTIONS:
        env.reset(seed=1)
        try:
            with _deadline(STEP_SECONDS, f"step({label})"):
                obs, reward, terminated, truncated, info = env.step(action)
        except TypeError as exc:
            if isinstance(action, str):
                raise CheckFailure(f"a str action ({label}) raised TypeError: {exc}") from exc
            handled.append(f"{label}: TypeError")
            continue
        except CheckFailure:
            raise
        except Exception as exc:
            raise CheckFailure(f"step({label}) raised {type(exc).__name__}: {exc}; return an invalid-action "
                               "observation (str actions) or raise TypeError (non-str actions)") from exc
        if not isinstance(obs, str):
            raise CheckFailure(f"step({label}) returned a {type(obs).__name__} observation")
        if not isinstance(action, str):
            raise CheckFailure(f"step({label}) accepted a non-str action; raise TypeError naming the type")
        handled.append(f"{label}: {'invalid' if info.get('invalid_action') else 'accepted'}")
    return "; ".join(handled)


def check_sampled_actions(env: gymnasium.Env, env_id: str | None, episodes: int = 3, steps: int = 20) -> str:
    """`sample_action` (where implemented) draws str actions the env accepts, the same ones for the same seed."""
    base = env.unwrapped
    drawn = 0
    for seed in range(episodes):
        env.reset(seed=seed)
        try:
            first = base.sample_action(np.random.default_rng(seed))
        except NotImplementedError:
            return "not implemented (the random baseline plays listed admissible actions, else random letters)"
        if first != base.sample_action(np.random.default_rng(seed)):
            raise CheckFailure("sample_action gave two actions for one rng seed in one state; draw only from rng")
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            action = base.sample_action(rng)
            if not isinstance(action, str):
                raise CheckFailure(f"sample_action returned a {type(action).__name__}, not a str")
            with _deadline(STEP_SECONDS, f"step({action[:30]!r})"):
                _, _, terminated, truncated, info = env.step(action)
            drawn += 1
            if info.get("invalid_action"):
                raise CheckFailure(f"sample_action drew {action[:60]!r}, which the env flagged invalid; it must "
                                   "draw legal actions only")
            if terminated or truncated:
                break
    return f"{drawn} sampled actions over {episodes} episodes, none invalid"


def check_splits(env: gymnasium.Env, env_id: str | None, max_tasks: int = 2000) -> str:
    base = env.unwrapped
    keys = {}
    for split in ("train", "test"):
        n = min(base.num_tasks[split], max_tasks)
        keys[split] = {base.task_key(split, k) for k in range(n)}
    shared = keys["train"] & keys["test"]
    if shared:
        raise CheckFailure(f"{len(shared)} task(s) are in both train and test, e.g. {sorted(shared)[0][:80]!r}")
    try:
        env.reset(seed=0, options={"split": "validation"})
    except ValueError:
        pass
    else:
        raise CheckFailure("reset(options={'split': 'validation'}) was accepted; unknown splits must raise ValueError")
    env.reset(seed=0, options={"split": "test", "task": 0})
    return f"train and test disjoint over {len(keys['train'])} + {len(keys['test'])} tasks"


def _continue(env: gymnasium.Env, actions: list[str]) -> dict[str, list[Any]]:
    """Step `env` with `actions` (stopping where the episode ends); observations, rewards, state keys, ends."""
    future: dict[str, list[Any]] = {"observations": [], "rewards": [], "state_keys": [], "done": []}
    for action in actions:
        with _deadline(STEP_SECONDS, f"step({action[:30]!r})"):
            obs, reward, terminated, truncated, info = env.step(action)
        for key, value in zip(future, (obs, float(reward), info.get("state_key"), bool(terminated or truncated))):
            future[key].append(value)
        if terminated or truncated:
            break
    return future


def check_fork(env: gymnasium.Env, env_id: str | None, forks_timed: int = 5) -> str:
    """Fork mid-episode: the fork, a fork of the fork and the original (stepped after both) have the future
    of the unforked episode under the same actions; the detail gives what one fork costs."""
    seed = 13
    episode = play(env, seed, None, 12)
    actions, middle = episode["actions"], len(episode["actions"]) // 2
    expected = {"observations": episode["observations"][middle + 1:], "rewards": episode["rewards"][middle:],
                "state_keys": episode["state_keys"][middle + 1:], "done": episode["done"][middle:]}
    play(env, seed, None, 0, actions[:middle])
    started = time.perf_counter()
    timed = [fork_env(env) for _ in range(forks_timed)]
    cost = (time.perf_counter() - started) / forks_timed
    for spare in timed[1:]:
        spare.close()
    fork = timed[0]
    fork_of_fork = fork_env(fork)
    try:
        for who, twin in (("the fork", fork), ("a fork of the fork", fork_of_fork), ("the original", env)):
            future = _continue(twin, actions[middle:])
            if future != expected:
                diff = next(k for k in expected if future[k] != expected[k])
                after = " after its fork was stepped" if twin is env else ""
                raise CheckFailure(f"forked at step {middle}, {who}{after} has a different future than the "
                                   f"unforked episode under the same actions ({diff} differ)")
    finally:
        fork.close()
        fork_of_fork.close()
    return f"forked at step {middle} of {len(actions)}; a fork costs {cost * 1e3:.2f} ms"


def check_close(env: gymnasium.Env, env_id: str | None) -> str:
    env.close()
    env.close()
    return ""


def check_env(env_or_id: str | gymnasium.Env, **make_kwargs: Any) -> CheckReport:
    """Check an env (or a registered id, made with `make_kwargs`) and return the report.

    The env is closed at the end. A check that raises is reported as failed with
    its error; the other checks still run.
    """
    if isinstance(env_or_id, str):
        env_id = env_or_id
        fresh: Callable[[], gymnasium.Env] = lambda: make(env_id, **make_kwargs)  # noqa: E731
        env = fresh()
    else:
        env = env_or_id
        env_id = env.spec.id if env.spec is not None and not make_kwargs else None
        fresh = (lambda: make(env_id)) if env_id else (lambda: type(env.unwrapped)())  # noqa: E731
    report = CheckReport(env_id or type(env.unwrapped).__name__)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("declarations", lambda: check_declarations(env, env_id)),
        ("gymnasium checker", lambda: check_gymnasium(env, env_id)),
        ("info contract", lambda: check_info_contract(env, env_id)),
        ("determinism", lambda: check_determinism(env, env_id)),
        ("reset isolation", lambda: check_reset_isolation(env, env_id, fresh)),
        ("state keys", lambda: check_state_keys(env, env_id, make_kwargs)),
        ("bad actions", lambda: check_bad_actions(env, env_id)),
        ("sampled actions", lambda: check_sampled_actions(env, env_id)),
        ("splits", lambda: check_splits(env, env_id)),
        ("fork", lambda: check_fork(env, env_id)),
        ("close", lambda: check_close(env, env_id)),
    ]
    for name, run in checks:
        try:
            report.results.append(CheckResult(name, True, run()))
        except CheckFailure as exc:
            report.results.append(CheckResult(name, False, str(exc)))
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            report.results.append(CheckResult(
                name, False, f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"))
    return report
