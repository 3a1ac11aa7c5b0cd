"""What the adapters of seeded game packages (GEM, TextArena) share.

Such packages draw from the global `random` and `numpy.random` generators and
seed them in `reset`, so two of their envs in one process would draw from each
other's stream. `PrivateRandom` gives each adapted env streams of its own.
Their games have no task lists: task k of a split is a reset seed
(`game_seed`), even for train and odd for test, so the splits never share a
seed (a game with few distinct boards can still deal the same board to both).
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from envgym.core import Env, stable_hash, task_seed


class PrivateRandom:
    """The global `random` and `numpy.random` states of one env, swapped in around each call into its package."""

    def __init__(self) -> None:
        self._python = random.Random(0).getstate()
        self._numpy = np.random.RandomState(0).get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block on this env's streams; the caller's streams are restored after it."""
        python, numpy = random.getstate(), np.random.get_state()
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        try:
            yield
        finally:
            self._python, self._numpy = random.getstate(), np.random.get_state()
            random.setstate(python)
            np.random.set_state(numpy)

    @contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Run the block on fresh streams seeded with `seed`, leaving this env's streams where they were."""
        with self.active():
            python, numpy = random.getstate(), np.random.get_state()
            random.seed(seed)
            np.random.seed(seed)
            try:
                yield
            finally:
                random.setstate(python)
                np.random.set_state(numpy)


def game_seed(family: str, split: str, index: int) -> int:
    """The reset seed of task `index` of `split`: even for train, odd for test, below 2**31."""
    return (task_seed(family, split, index) % 2**30) * 2 + (split == "test")


class SeededGame(Env):
    """Base of the adapted games whose tasks are reset seeds: the task key, the seed and the private streams."""

    def __init__(self, family: str):
        self.family = family  # the game and its options: tasks of two families never share a key
        self.num_tasks = {"train": 1_000_000, "test": 10_000}
        self._random = PrivateRandom()
        self.won = False

    def game_seed(self, split: str, index: int) -> int:
        return game_seed(self.family, split, index)

    def task_key(self, split: str, index: int) -> str:
        return f"{self.family}|seed {self.game_seed(split, index)}"


def canonical(value: Any, depth: int = 0) -> Any:
    """`value` as JSON-able data that is equal in every process for equal states.

    Sets are sorted, arrays listed, and objects without a plain representation
    (an RNG, a function) reduced to their type's name, so no address or
    hash-order leaks into a state key.
    """
    if depth > 6:
        return type(value).__name__
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return sorted(([canonical(k, depth + 1), canonical(v, depth + 1)] for k, v in value.items()), key=repr)
    if isinstance(value, (list, tuple)):
        return [canonical(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v, depth + 1) for v in value), key=repr)
    text = repr(value)
    return type(value).__name__ if " at 0x" in text or "object at" in text else text


def state_key(prefix: str, state: Any) -> str:
    """A short key for `state` (hashed canonical JSON), readable as which env it belongs to."""
    text = json.dumps(canonical(state), sort_keys=True, default=str)
    return f"{prefix}|{stable_hash(text) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def first_words(error: BaseException, limit: int = 160) -> str:
    """The start of `error`'s message on one line (nltk's messages open with a row of asterisks)."""
    return " ".join(re.sub(r"\*{3,}|\x1b\[[0-9;]*m", " ", str(error)).split())[:limit]


def check_known(what: str, name: str, known: Iterable[str], rest: str) -> None:
    """Raise ValueError for a `name` not in `known`: "unknown WHAT 'NAME'; did you mean ...? REST"."""
    known = list(known)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown {what} {name!r}; {hint}{rest}")
