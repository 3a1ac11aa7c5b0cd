"""The text-env contract: `Env`, its `TextSpace`, and stable state keys.

An envgym env is a `gymnasium.Env` whose observations and actions are `str`:

    reset(seed=None, options=None) -> (obs, info)
    step(action) -> (obs, reward, terminated, truncated, info)

`info` always carries `state_key` (a canonical `str`: equal states give equal
keys in every process) and, after `step`, `invalid_action` (bool). Where they
mean something it also carries `admissible_actions`, `answer` (the gold
answer), `won`.

Tasks come in splits. `reset(options={"split": "test", "task": k})` plays task
k of the test split; without `task`, a task of the split is drawn from the
env's own RNG (seeded by `seed`); without `split`, the train split is used.
Train and test task sets are disjoint: `task_key(split, k)` names a task by its
content so the checker can prove it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import gymnasium
import numpy as np

SPLITS = ("train", "test")
T = TypeVar("T")


class RunFailed(RuntimeError):
    """A run (training, evaluation) stopped for a reason its message states; the CLI prints it and exits 1."""


class ReplayDiverged(RuntimeError):
    """`Env.fork` replayed an episode on a fresh env and got a different result: the env is not deterministic
    under replay, so it cannot be forked that way (give it a `fork` that copies its state)."""


class TextSpace(gymnasium.spaces.Space[str]):
    """Any UTF-8 encodable `str` of at most `max_length` characters.

    `sample()` draws printable text (letters, digits, punctuation, spaces and a
    few non-ASCII letters) so that random play exercises the invalid-action path.
    """

    _alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'-éüßλ中"))

    def __init__(self, max_length: int = 4096, seed: int | np.random.Generator | None = None):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        length = int(self.np_random.integers(1, min(self.max_length, 32) + 1))
        return "".join(self.np_random.choice(self._alphabet, size=length))

    def contains(self, x: Any) -> bool:
        if not isinstance(x, str) or len(x) > self.max_length:
            return False
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return False
        return True

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


def stable_hash(key: str) -> int:
    """A signed 64-bit hash of `key` that is the same in every process (unlike `hash`)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def task_seed(env_name: str, split: str, index: int, attempt: int = 0) -> int:
    """A 63-bit seed that names task `index` of `split` for the env family `env_name`.

    Procedural envs generate task k of a split from this seed, so a task is a pure
    function of (family, split, index) and never depends on the episode seed;
    `attempt` numbers the redraws of `draw_task`.
    """
    name = f"{env_name}|{split}|{index}" + (f"|{attempt}" if attempt else "")
    return stable_hash(name) & 0x7FFF_FFFF_FFFF_FFFF


class Env(gymnasium.Env[str, str]):
    """Base class of every envgym environment.

    Subclasses set the class attributes below, fill `self.num_tasks` in
    `__init__`, and implement `reset`, `step` and `task_key`. `reset` starts with
    `split, task = self.select_task(seed, options)`; `step` starts with
    `action = self.check_action(action)`.
    """

    #: The system prompt an agent needs: rules, goal, and how to answer.
    instructions: str = ""
    #: One line saying what a valid action looks like.
    action_format: str = ""
    #: Constructor arguments that change difficulty, with one line each; the env keeps each
    #: knob's value in an attribute of the same name (`envgym info` shows it).
    knobs: ClassVar[Mapping[str, str]] = {}
    #: Extra `options` keys a subclass's `reset` understands besides split and task.
    reset_options: ClassVar[tuple[str, ...]] = ()

    #: Number of tasks per split, e.g. {"train": 10_000, "test": 500}.
    num_tasks: Mapping[str, int]

    observation_space = TextSpace(8192)
    action_space = TextSpace(1024)

    split: str = "train"
    task: int = 0

    #: Attributes that `reset` and `step` change (the episode's state). An env that names them forks by copying
    #: them (and its random stream) instead of replaying the episode; everything else is shared with the fork.
    episode_state: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Env:
        env = super().__new__(cls)
        env._constructor_args = (args, kwargs)  # what a replay fork builds its fresh env from
        env._replay = None
        env._recording = 0
        return env

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "reset" in cls.__dict__:
            cls.reset = _recording_reset(cls.__dict__["reset"])
        if "step" in cls.__dict__:
            cls.step = _recording_step(cls.__dict__["step"])

    def fork(self) -> Env:
        """An independent env in exactly this state: the same future under the same actions (random stream
        included), and stepping either leaves the other untouched.

        Envs that name their `episode_state` fork by copying it; others by replay: a fresh env built with the
        same constructor arguments, reset with the same seed and options, then stepped with the same actions.
        A replay whose observations, rewards or flags differ from the original's raises `ReplayDiverged`
        naming the env and the first step that differed. Envs with a cheaper native copy override this.
        """
        if self.episode_state:
            return self.fork_by_copy()
        return self.fork_by_replay()

    def fork_by_copy(self) -> Env:
        """A shallow copy with `episode_state`, the random stream and the replay record copied deeply."""
        twin = copy.copy(self)
        for name in (*self.episode_state, "_np_random", "_replay"):
            if name in self.__dict__:
                twin.__dict__[name] = copy.deepcopy(self.__dict__[name])
        return twin

    def fork_by_replay(self) -> Env:
        """A fresh env driven to this state by replaying the episode's reset and actions (see `fork`)."""
        return replay(type(self), self._constructor_args, self.spec, self._replay)

    def select_task(self, seed: int | None, options: Mapping[str, Any] | None) -> tuple[str, int]:
        """Seed the env's RNG and resolve `options` to `(split, task)`; raises ValueError on bad options."""
        super().reset(seed=seed)
        options = dict(options or {})
        split = options.pop("split", "train")
        if split not in self.num_tasks:
            raise ValueError(f"unknown split {split!r}; this env has splits {sorted(self.num_tasks)}")
        n = self.num_tasks[split]
        task = options.pop("task", None)
        if task is None:
            task = int(self.np_random.integers(n))
        elif isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < n:
            raise ValueError(f"task must be an int in [0, {n}) for split {split!r}, got {task!r}")
        unknown = set(options) - set(self.reset_options)
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; known: {sorted(('split', 'task', *self.reset_options))}"
            )
        self.split, self.task = split, int(task)
        return self.split, self.task

    def check_action(self, action: Any) -> str:
        """Return `action` as a `str`, or raise TypeError naming what was passed instead."""
        if isinstance(action, bytes):
            raise TypeError(f"action must be str, got bytes ({action[:40]!r}); decode it first")
        if not isinstance(action, str):
            raise TypeError(f"action must be str, got {type(action).__name__}")
        return action

    def task_key(self, split: str, index: int) -> str:
        """A string naming the content of task `index` of `split` (equal content, equal key).

        Must be cheap: the checker calls it for up to 2000 tasks of each split to
        prove the splits disjoint (name the generator's inputs rather than build
        an expensive task).
        """
        raise NotImplementedError

    def oracle_action(self) -> str:
        """The next action of an expert (walkthrough or solver) from the current state.

        Scripted baselines and supervised warm starts use it; envs without an
        oracle leave it unimplemented.
        """
        raise NotImplementedError(f"{type(self).__name__} has no oracle")

    def sample_action(self, rng: np.random.Generator) -> str:
        """A legal action from the current state, drawn with `rng` (the `random` baseline plays it).

        Envs whose legal actions form a known set that `info` does not list
        (a range of integers, a word list) implement it; envs that list
        `admissible_actions` need not, and others leave it unimplemented
        (`action_space.sample()` is any text, mostly invalid).
        """
        raise NotImplementedError(f"{type(self).__name__} has no sample_action")


@dataclass
class _Replay:
    """What a replay fork needs: reset's seed, options and random stream (when unseeded), its observation, and
    per step the action and what the step returned (observation, reward, terminated, truncated)."""

    seed: int | None
    options: Any
    rng: np.random.Generator | None
    observation: Any = None
    steps: list[tuple[Any, Any, float, bool, bool]] = field(default_factory=list)


def _recording_reset(reset: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(reset)
    def recorded(self: Env, *, seed: int | None = None, options: Mapping[str, Any] | None = None, **kwargs: Any):
        if self._recording:  # a subclass's reset calling its base's: the outer call records
            return reset(self, seed=seed, options=options, **kwargs)
        record = _Replay(seed, dict(options) if options else options,
                         copy.deepcopy(self.np_random) if seed is None else None)
        self._recording += 1
        try:
            obs, info = reset(self, seed=seed, options=options, **kwargs)
        finally:
            self._recording -= 1
        record.observation = obs
        self._replay = record
        return obs, info

    return recorded


def _recording_step(step: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(step)
    def recorded(self: Env, action: Any):
        if self._recording:
            return step(self, action)
        self._recording += 1
        try:
            result = step(self, action)
        finally:
            self._recording -= 1
        if self._replay is not None:
            obs, reward, terminated, truncated, _ = result
            self._replay.steps.append((action, obs, float(reward), terminated, truncated))
        return result

    return recorded


def replay(cls: type[Env], constructor_args: tuple[tuple, dict], spec: Any, record: _Replay | None) -> Env:
    """A fresh `cls(*args, **kwargs)` driven through `record` (reset, then its actions); raises ReplayDiverged
    at the first observation, reward or end flag that differs from the record's."""
    args, kwargs = constructor_args
    twin = cls(*args, **kwargs)
    twin.spec = spec
    if record is None:  # never reset: a fresh env is in the same state
        return twin
    name = spec.id if spec is not None else cls.__name__
    if record.rng is not None:  # reset(seed=None) drew from the stream as it was then
        twin._np_random = copy.deepcopy(record.rng)
    obs, _ = twin.reset(seed=record.seed, options=copy.deepcopy(record.options))
    _check_replay(name, "reset", obs, record.observation)
    for i, (action, *expected) in enumerate(record.steps):
        obs, reward, terminated, truncated, _ = twin.step(action)
        _check_replay(name, f"step {i} (action {_short(action, 40)})", (obs, float(reward), terminated, truncated),
                      tuple(expected))
    return twin


def _check_replay(name: str, where: str, got: Any, expected: Any) -> None:
    if got != expected:
        raise ReplayDiverged(
            f"cannot fork {name}: replaying its episode on a fresh env diverged at {where}: got {_short(got)}, "
            f"the original had {_short(expected)}; the env is not deterministic under replay (draw randomness "
            "from self.np_random, seeded by reset, or give the env a fork() that copies its state)")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _copied_wrappers(env: gymnasium.Env) -> tuple[list[gymnasium.Wrapper], Env]:
    """Copies of `env`'s wrappers, outermost first, each with its own state copied deeply and no env inside
    yet; and the envgym `Env` they wrap. Raises TypeError for an env that is not an envgym `Env` underneath."""
    wrappers = []
    while isinstance(env, gymnasium.Wrapper):
        twin = copy.copy(env)
        for name, value in env.__dict__.items():
            if name != "env":
                twin.__dict__[name] = copy.deepcopy(value)
        twin.env = None
        wrappers.append(twin)
        env = env.env
    if not isinstance(env, Env):
        raise TypeError(f"{type(env).__name__} is not an envgym Env, so it cannot be forked")
    return wrappers, env


def _rewrap(wrappers: list[gymnasium.Wrapper], env: gymnasium.Env) -> gymnasium.Env:
    for wrapper in reversed(wrappers):
        wrapper.env, env = env, wrapper
    return env


def fork_env(env: gymnasium.Env) -> gymnasium.Env:
    """`env.fork()` through any wrappers: each wrapper is copied (its own state deeply) around the fork of the
    env it wraps. Raises TypeError for an env that is not an envgym `Env` underneath."""
    wrappers, inner = _copied_wrappers(env)
    return _rewrap(wrappers, inner.fork())


@dataclass
class ForkRecipe:
    """A fork of an env that can travel to another process (pickled) and be built there: copies of its
    wrappers around either a copy of the env (envs that declare `episode_state`) or a replay of its episode."""

    wrappers: list[gymnasium.Wrapper]
    copied: Env | None
    env_class: type[Env] | None = None
    constructor_args: tuple[tuple, dict] = ((), {})
    spec: Any = None
    record: _Replay | None = None

    @classmethod
    def of(cls, env: gymnasium.Env) -> ForkRecipe:
        wrappers, inner = _copied_wrappers(env)
        if inner.episode_state:
            return cls(wrappers, inner.fork_by_copy())
        return cls(wrappers, None, type(inner), inner._constructor_args, inner.spec, copy.deepcopy(inner._replay))

    def build(self) -> gymnasium.Env:
        """The forked env (raises ReplayDiverged where a replay differs from the original episode)."""
        inner = self.copied or replay(self.env_class, self.constructor_args, self.spec, self.record)
        return _rewrap(self.wrappers, inner)


def split_of(key: str, test_fraction: float = 0.1) -> str:
    """The split a task with content `key` belongs to: a fixed hash partition, so
    train and test are disjoint by construction and stable across processes."""
    bucket = (stable_hash("split|" + key) & 0xFFFF_FFFF) / 2**32
    return "test" if bucket < test_fraction else "train"


def partition_tasks(items: Iterable[T], key: Callable[[T], str], test_fraction: float = 0.1) -> dict[str, list[T]]:
    """A fixed list of tasks split by content: `{"train": [...], "test": [...]}`, each item placed by
    `split_of(key(item), test_fraction)`, order kept."""
    tasks: dict[str, list[T]] = {split: [] for split in SPLITS}
    for item in items:
        tasks[split_of(key(item), test_fraction)].append(item)
    return tasks


def draw_task(family: str, split: str, index: int, make: Callable[[int], T | None], key: Callable[[T], str], *,
              accept: Callable[[T], bool] | None = None, test_fraction: float = 0.1) -> T:
    """Task `index` of `split` of a procedural family: the first `make(seed)` that is not None,
    whose content `key` falls in `split` (`split_of`) and that `accept` takes, over the seeds
    `task_seed(family, split, index, attempt)` for attempt = 0, 1, ...

    Train and test never share content, and a task is a pure function of the arguments.
    `accept` runs after the split test, so an expensive filter (a solver) runs on few draws.
    """
    for attempt in itertools.count():
        task = make(task_seed(family, split, index, attempt))
        if task is not None and split_of(key(task), test_fraction) == split and (accept is None or accept(task)):
            return task
    raise AssertionError("unreachable")
