"""Branched collection: where the rollout forks an episode and how many continuations it plays from there.

With `BranchOptions(k=K, ...)` (`rollout.branch` in a training config, `branch=` of
`collect_groups`), each sampled episode of a group (a root) is forked (`Env.fork`) at
its chosen turns: before turn t it waits until K forks of its env are made, and each
fork becomes a branch episode that the same policy plays on from the root's state and
context. A branch is stored in the root's group with `Episode.parent` (the root's index
in the group) and `Episode.branch_turn` (t); the mean return of a state's continuations
is its Monte Carlo value (`vineppo`, `spo_tree`: docs/algorithms.md). Branches do not
branch again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from envgym.option_types import Range


class BranchingRefused(ValueError):
    """Branching was asked of a policy that cannot continue from a forked state."""


@dataclass
class BranchOptions:
    """`k` continuations (0: no branching) before turns `every`, 2 x `every`, ... of each root episode, or
    before the listed `turns` instead; at most `budget` branch points per episode (0: no cap).

    Turn 0 is the group's first state, which the group's own episodes already share, so `every` starts at
    turn `every`; list 0 in `turns` to branch there too.
    """

    k: Annotated[int, Range(ge=0, why="0 turns branching off")] = 0
    every: Annotated[int, Range(ge=1)] = 1
    turns: list[int] = field(default_factory=list)
    budget: Annotated[int, Range(ge=0, why="0: no cap")] = 0

    def check(self) -> None:
        """Raise ValueError naming a bad option (the ranges of k, every and budget are checked with the config)."""
        if self.k < 0 or self.every < 1 or self.budget < 0:
            raise ValueError(f"branch needs k >= 0, every >= 1 and budget >= 0, got {self}")
        if any(t < 0 for t in self.turns):
            raise ValueError(f"branch turns are turn indices >= 0, got {self.turns}")

    @property
    def enabled(self) -> bool:
        return self.k > 0

    def branches_before(self, turn: int, points_so_far: int) -> bool:
        """Whether a root episode about to play `turn`, already branched at `points_so_far` turns, branches now."""
        if not self.enabled or (self.budget and points_so_far >= self.budget):
            return False
        if self.turns:
            return turn in self.turns
        return turn > 0 and turn % self.every == 0


def check_branchable_policy(policy: Any) -> None:
    """Raise BranchingRefused for an `openai:` endpoint policy: its server keeps no state to fork from, and
    every continuation would pay for its whole prompt again."""
    from envgym.policies.openai_chat import OpenAIChatPolicy

    if isinstance(policy, OpenAIChatPolicy):
        raise BranchingRefused(
            f"branching plays continuations from forked states with the policy being trained; the openai: "
            f"endpoint {policy.base_url} ({policy.model}) is not one (it cannot share a prefix cache with its "
            "branches); use an hf or vllm policy, or drop the branch option")
