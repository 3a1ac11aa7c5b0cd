"""Guess the number: a known-answer game where each guess is told "higher" or "lower".

Every guess halves what is left to know, so information-gain turn rewards have
something to measure. The state key is the interval of numbers still possible,
so two different guess orders that leave the same interval share an anchor.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from envgym.core import Env, partition_tasks

_INTEGER = re.compile(r"-?\d+")


class GuessNumber(Env):
    episode_state = ("secret", "interval", "won")  # fork copies these (see Env.fork)
    knobs = {
        "low": "smallest possible secret (default 1)",
        "high": "largest possible secret (default 100); the range sets the horizon, log2(high-low+1) turns",
    }

    def __init__(self, low: int = 1, high: int = 100):
        if high <= low:
            raise ValueError(f"high must be > low, got low={low}, high={high}")
        self.low, self.high = int(low), int(high)
        secrets = range(self.low, self.high + 1)
        self._secrets = partition_tasks(secrets, lambda n: f"guess|{n}", 0.2)
        self.num_tasks = {s: len(v) for s, v in self._secrets.items()}
        self.instructions = (
            f"I am thinking of a secret integer between {self.low} and {self.high} inclusive. "
            "Guess it. After each wrong guess I say whether the secret is higher or lower. "
            "Reply with a single integer."
        )
        example = (self.low + self.high) // 2
        self.action_format = f"a single integer between {self.low} and {self.high}, e.g. '{example}'"
        self.secret = self.low
        self.interval = (self.low, self.high)

    def task_key(self, split: str, index: int) -> str:
        return f"guess|{self._secrets[split][index]}"

    def _info(self, **extra: Any) -> dict[str, Any]:
        lo, hi = self.interval
        return {"state_key": f"{lo}-{hi}", "answer": str(self.secret), "won": self.won, **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.secret = self._secrets[split][task]
        self.interval = (self.low, self.high)
        self.won = False
        return f"Guess the secret integer between {self.low} and {self.high}.", self._info()

    def step(self, action: str):
        action = self.check_action(action)
        match = _INTEGER.search(action)
        guess = int(match.group()) if match else None
        if guess is None or not self.low <= guess <= self.high:
            said = "no integer" if guess is None else f"{guess}, which is out of range"
            obs = f"Invalid guess: I read {said}. Reply with a single integer between {self.low} and {self.high}."
            return obs, 0.0, False, False, self._info(invalid_action=True)
        lo, hi = self.interval
        if guess == self.secret:
            self.won = True
            self.interval = (guess, guess)
            return f"{guess} is correct!", 1.0, True, False, self._info(invalid_action=False)
        if guess < self.secret:
            self.interval = (max(lo, guess + 1), hi)
            obs = f"{guess} is too low. The secret is higher."
        else:
            self.interval = (lo, min(hi, guess - 1))
            obs = f"{guess} is too high. The secret is lower."
        return obs, 0.0, False, False, self._info(invalid_action=False)

    def oracle_action(self) -> str:
        lo, hi = self.interval
        return str((lo + hi) // 2)

    def sample_action(self, rng: np.random.Generator) -> str:
        """Any integer of the range, uniformly (not only those still possible)."""
        return str(int(rng.integers(self.low, self.high + 1)))
