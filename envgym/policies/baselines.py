"""Baseline text policies: the env's oracle (`scripted`) and random play (`random`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envgym.policies.base import PolicyError, TextRequest


class ScriptedPolicy:
    """Plays `env.unwrapped.oracle_action()`, computed where the env lives (the pool worker)."""

    def act(self, requests: Sequence[TextRequest]) -> list[str | PolicyError]:
        return [self._oracle(request) for request in requests]

    @staticmethod
    def _oracle(request: TextRequest) -> str | PolicyError:
        try:
            return request.oracle()
        except Exception as exc:  # e.g. an env without an oracle: that episode fails with the cause
            return PolicyError(f"oracle_action failed: {type(exc).__name__}: {exc}")


class RandomPolicy:
    """A uniformly random admissible action from `info["admissible_actions"]`, else a random short string."""

    _letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def __init__(self, seed: int | None = 0):
        self.rng = np.random.default_rng(seed)

    def act(self, requests: Sequence[TextRequest]) -> list[str]:
        actions = []
        for request in requests:
            admissible = list(request.info.get("admissible_actions") or ())
            if admissible:
                actions.append(str(admissible[self.rng.integers(len(admissible))]))
            else:
                actions.append("".join(self.rng.choice(self._letters, size=int(self.rng.integers(1, 9)))))
        return actions
