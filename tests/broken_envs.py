"""Envs that break one rule of the contract each, for the checker's tests (importable by a subprocess)."""

import random

from envgym.envs.games.guess import GuessNumber
from envgym.envs.games.wordle import Wordle


class NonDeterministic(GuessNumber):
    """Feedback depends on the global `random` module, not on the env's seeded RNG."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return f"{obs} ({random.random():.6f})", reward, terminated, truncated, info


class CarriesStateOver(GuessNumber):
    """The turn counter shown in observations is never reset."""

    turns_ever = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.turns_ever += 1
        return f"{obs} [{self.turns_ever}]", reward, terminated, truncated, info


class SaltedStateKey(GuessNumber):
    """state_key built with Python's salted str hash: differs between processes."""

    def _info(self, **extra):
        info = super()._info(**extra)
        info["state_key"] = str(hash(info["state_key"] + "salt"))
        return info


class CrashesOnEmpty(GuessNumber):
    def step(self, action):
        self.check_action(action)
        action.split()[0]  # IndexError on an empty action
        return super().step(action)


class OverlappingSplits(GuessNumber):
    def task_key(self, split, index):
        return f"guess|{index}"


class SamplesIllegalMoves(GuessNumber):
    """sample_action draws past the range, which the env flags invalid."""

    def sample_action(self, rng):
        return str(self.high + 1 + int(rng.integers(10)))


class SamplesWithoutTheRng(GuessNumber):
    """sample_action ignores the generator it is given."""

    def sample_action(self, rng):
        return str(random.randint(self.low, self.high))


class ReplaysDifferently(NonDeterministic):
    """Forks by replay (no `episode_state`), but its feedback draws from the global `random` module."""

    episode_state = ()


class ForkSharesHistory(Wordle):
    """Its `episode_state` leaves out `history`, a list steps append to: a fork shares it with the original."""

    episode_state = ("answer", "won")
