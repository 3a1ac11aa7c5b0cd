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

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import gymnasium
import numpy as np

SPLITS = ("train", "test")
T = TypeVar("T")


class RunFailed(RuntimeError):
    """A run (training, evaluation) stopped for a reason its message states; the CLI prints it and exits 1."""


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
