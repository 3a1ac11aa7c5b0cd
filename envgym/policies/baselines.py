"""Baseline text policies: the env's oracle (`scripted`) and random play (`random`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envgym.policies.base import PolicyError, TextReply, TextRequest


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
    """A random legal move: one of `info["admissible_actions"]` where the env lists them, else the env's
    `sample_action` (a random integer in range, a random word), else random letters.

    Each reply's `source` names which of the three it came from; the evaluation report counts them.
    """

    ADMISSIBLE, ENV_SAMPLE, LETTERS = ("admissible actions", "the env's sample_action",
                                       "random letters (the env lists no admissible actions and has no sample_action)")
    _letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def __init__(self, seed: int | None = 0):
        self.rng = np.random.default_rng(seed)

    def act(self, requests: Sequence[TextRequest]) -> list[TextReply | PolicyError]:
        return [self._act(request) for request in requests]

    def _act(self, request: TextRequest) -> TextReply | PolicyError:
        admissible = list(request.info.get("admissible_actions") or ())
        if admissible:
            return TextReply(str(admissible[self.rng.integers(len(admissible))]), source=self.ADMISSIBLE)
        try:
            sampled = request.sample_action(int(self.rng.integers(2**31)))
        except Exception as exc:  # an env whose sampler raises fails that episode with the cause, as the oracle does
            return PolicyError(f"sample_action failed: {type(exc).__name__}: {exc}")
        if sampled is not None:
            return TextReply(str(sampled), source=self.ENV_SAMPLE)
        return TextReply("".join(self.rng.choice(self._letters, size=int(self.rng.integers(1, 9)))),
                         source=self.LETTERS)
