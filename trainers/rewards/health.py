"""Guard rails for turn-reward models: a check that fails several iterations in a row earns one warning.

A turn-reward model can go wrong in ways its own metrics show (an implicit PRM
ranking fresh episodes below chance; information gain paying repeated questions
as much as informative ones) while the run still looks alive. `FailureStreak`
counts the consecutive iterations a check failed and logs one warning when the
count reaches `patience`; an iteration where the check could not be made
(`None`) neither extends nor breaks a streak.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class FailureStreak:
    """Consecutive failures of one check; `observe` returns `{metric: streak}` to log with the iteration."""

    def __init__(self, metric: str, warning: str, patience: int = 5):
        self.metric, self.warning, self.patience, self.streak = metric, warning, patience, 0

    def observe(self, failed: bool | None, detail: str = "") -> dict[str, float]:
        if failed is not None:
            self.streak = self.streak + 1 if failed else 0
            if self.streak == self.patience:
                log.warning("%s = %d%s: %s", self.metric, self.streak, f" ({detail})" if detail else "", self.warning)
        return {self.metric: float(self.streak)}
