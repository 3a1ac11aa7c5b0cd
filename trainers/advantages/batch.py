"""TurnBatch: the packed turn layout every advantage estimator reads (docs/algorithms.md, "The batch every
estimator reads")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .segment import positions_in_runs

_TURN_FIELDS = {
    "group": torch.int64,
    "episode": torch.int64,
    "turn": torch.int64,
    "reward": torch.float32,
    "state": torch.int64,
    "intrinsic": torch.float32,
    "invalid": torch.bool,
    "parent": torch.int64,
    "branch_turn": torch.int64,
}
_TOKEN_FIELDS = {"token_turn": torch.int64, "loss_mask": torch.bool}


@dataclass(frozen=True, eq=False)
class TurnBatch:
    """N turns, each episode's turns contiguous and numbered 0..L-1; optionally M tokens.

    Per turn (length N): `group` (int64, GRPO group: same task and seed), `episode` (int64,
    one id per trajectory), `turn` (int64, 0..L-1 within the episode), `reward` (float32,
    environment reward), `state` (int64, stable 64-bit hash of the state the turn acted
    from), `intrinsic` (float32, optional turn-reward-model output), `invalid` (bool,
    optional, the turn's action was invalid), `state_text` (a tuple of N strings, optional:
    the observation the turn acted from, for GiGPO's similarity grouping), `parent` and
    `branch_turn` (int64, optional, both or neither, constant over an episode: a branch
    episode's parent episode id and the parent's turn at whose state it started, -1 and -1
    for an episode that starts at its group's first state; a parent's rows precede its
    branches', and a branch is in its parent's group). Per token
    (length M, optional, both or neither): `token_turn` (int64 row index 0..N-1 of the
    token's turn) and `loss_mask` (bool, the token trains). Ids may be any int64 values,
    gaps included.

    The constructor checks dtypes and layout and raises ValueError naming what is wrong;
    use `from_lists` / `from_episodes` to build one from Python lists or NumPy arrays.
    The tensors are not copied: mutating them in place bypasses validation.
    """

    group: Tensor
    episode: Tensor
    turn: Tensor
    reward: Tensor
    state: Tensor
    intrinsic: Tensor | None = None
    invalid: Tensor | None = None
    parent: Tensor | None = None
    branch_turn: Tensor | None = None
    state_text: tuple[str, ...] | None = None
    token_turn: Tensor | None = None
    loss_mask: Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_turns(self) -> int:
        return self.reward.shape[0]

    @property
    def device(self) -> torch.device:
        return self.reward.device

    def validate(self) -> None:
        """Raise ValueError unless the batch is a well-formed packed layout."""
        present = {f.name: getattr(self, f.name) for f in fields(self)
                   if getattr(self, f.name) is not None and f.name != "state_text"}
        for name, value in present.items():
            expected = {**_TURN_FIELDS, **_TOKEN_FIELDS}[name]
            if not isinstance(value, Tensor):
                raise ValueError(f"TurnBatch.{name} must be a torch.Tensor, got {type(value).__name__}; "
                                 "use TurnBatch.from_lists for lists or NumPy arrays")
            if value.dim() != 1:
                raise ValueError(f"TurnBatch.{name} must be 1-D, got shape {tuple(value.shape)}")
            if value.dtype != expected:
                raise ValueError(f"TurnBatch.{name} must be {expected}, got {value.dtype}")
            if value.device != self.reward.device:
                raise ValueError(f"TurnBatch.{name} is on {value.device} but reward is on {self.reward.device}")
        turn_lengths = {name: v.shape[0] for name, v in present.items() if name in _TURN_FIELDS}
        if len(set(turn_lengths.values())) > 1:
            raise ValueError(f"per-turn fields have different lengths: {turn_lengths}")
        if self.state_text is not None:
            if not isinstance(self.state_text, tuple) or not all(isinstance(t, str) for t in self.state_text):
                raise ValueError("TurnBatch.state_text must be a tuple of str, one per turn")
            if len(self.state_text) != self.num_turns:
                raise ValueError(f"TurnBatch.state_text has {len(self.state_text)} texts for {self.num_turns} turns")
        if (self.token_turn is None) != (self.loss_mask is None):
            raise ValueError("token_turn and loss_mask come together: give both or neither")
        if self.token_turn is not None and self.token_turn.shape[0] != self.loss_mask.shape[0]:
            raise ValueError(f"token fields have different lengths: token_turn has {self.token_turn.shape[0]}, "
                             f"loss_mask has {self.loss_mask.shape[0]}")
        for name in ("reward", "intrinsic"):
            value = present.get(name)
            if value is not None and not bool(torch.isfinite(value).all()):
                rows = torch.nonzero(~torch.isfinite(value)).flatten()[:5].tolist()
                raise ValueError(f"{name} has NaN or infinite values at rows {rows}")
        self._validate_order()
        self._validate_branches()
        if self.token_turn is not None and self.token_turn.numel() > 0:
            outside = (self.token_turn < 0) | (self.token_turn >= self.num_turns)
            if bool(outside.any()):
                m = int(torch.nonzero(outside)[0])
                raise ValueError(f"token_turn[{m}] = {int(self.token_turn[m])} is not a turn row "
                                 f"(the batch has {self.num_turns} turns)")

    def _validate_order(self) -> None:
        n = self.num_turns
        if n == 0:
            return
        same_episode = self.episode[1:] == self.episode[:-1]
        expected_turn = torch.where(same_episode, self.turn[:-1] + 1, torch.zeros_like(self.turn[1:]))
        wrong = torch.cat([self.turn[:1] != 0, self.turn[1:] != expected_turn])
        if bool(wrong.any()):
            i = int(torch.nonzero(wrong)[0])
            continues = i > 0 and bool(same_episode[i - 1])
            before = f"after turn {int(self.turn[i - 1])}" if continues else "as its first row"
            raise ValueError(f"turns out of order at row {i}: episode {int(self.episode[i])} has turn "
                             f"{int(self.turn[i])} {before}; each episode's turns must be contiguous rows "
                             "numbered 0, 1, 2, ...")
        starts = self.episode[self.turn == 0]
        if torch.unique(starts).numel() != starts.numel():
            sorted_ids, _ = torch.sort(starts)
            repeated = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
            raise ValueError(f"episode {repeated} is not contiguous: its rows are split by other episodes' rows")
        changes_group = same_episode & (self.group[1:] != self.group[:-1])
        if bool(changes_group.any()):
            i = int(torch.nonzero(changes_group)[0]) + 1
            raise ValueError(f"episode {int(self.episode[i])} changes group at row {i} "
                             f"(from {int(self.group[i - 1])} to {int(self.group[i])}); an episode has one group")

    def _validate_branches(self) -> None:
        if (self.parent is None) != (self.branch_turn is None):
            raise ValueError("parent and branch_turn come together: give both or neither")
        if self.parent is None or self.num_turns == 0:
            return
        first = torch.nonzero(self.turn == 0).flatten()
        lengths = torch.diff(first, append=torch.tensor([self.num_turns], device=first.device))
        for name in ("parent", "branch_turn"):
            value = getattr(self, name)
            varies = value != torch.repeat_interleave(value[first], lengths)
            if bool(varies.any()):
                i = int(torch.nonzero(varies)[0])
                raise ValueError(f"{name} changes within episode {int(self.episode[i])} at row {i}; "
                                 "it is one value per episode")
        episodes, parents, turns = self.episode[first].tolist(), self.parent[first].tolist(), \
            self.branch_turn[first].tolist()
        groups, seen = self.group[first].tolist(), {}
        for e, p, t, g, n in zip(episodes, parents, turns, groups, lengths.tolist()):
            if p == -1 and t != -1:
                raise ValueError(f"episode {e} has no parent but branch_turn {t}; a root episode has -1 and -1")
            if p != -1:
                if p not in seen:
                    raise ValueError(f"episode {e} branches from episode {p}, which is not an earlier episode "
                                     "of the batch (a parent's rows precede its branches')")
                parent_group, parent_length = seen[p]
                if parent_group != g:
                    raise ValueError(f"episode {e} is in group {g} but its parent {p} is in group {parent_group}")
                if not 0 <= t < parent_length:
                    raise ValueError(f"episode {e} branches at turn {t} of episode {p}, which has turns "
                                     f"0..{parent_length - 1}")
            seen[e] = (g, n)

    def to(self, device: torch.device | str) -> TurnBatch:
        """The same batch with every tensor on `device`."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return TurnBatch(**{k: v if v is None or k == "state_text" else v.to(device) for k, v in moved.items()})

    @classmethod
    def from_lists(cls, *, group: Any, episode: Any, reward: Any, state: Any = None, turn: Any = None,
                   intrinsic: Any = None, invalid: Any = None, parent: Any = None, branch_turn: Any = None,
                   state_text: Any = None, token_turn: Any = None, loss_mask: Any = None) -> TurnBatch:
        """Build from sequences, NumPy arrays or tensors, converting dtypes.

        `turn` defaults to the position within each run of equal `episode` ids; `state`
        defaults to a distinct key per turn (no two turns share an anchor state);
        `loss_mask` defaults to all True when `token_turn` is given.
        """
        episode_t = torch.as_tensor(episode, dtype=torch.int64)
        n = episode_t.shape[0]
        if turn is None:
            turn = positions_in_runs(episode_t)
        if token_turn is not None and loss_mask is None:
            loss_mask = torch.ones(len(token_turn), dtype=torch.bool)

        def convert(value: Any, dtype: torch.dtype) -> Tensor | None:
            return None if value is None else torch.as_tensor(value, dtype=dtype)

        return cls(group=convert(group, torch.int64), episode=episode_t, turn=convert(turn, torch.int64),
                   reward=convert(reward, torch.float32),
                   state=torch.arange(n) if state is None else convert(state, torch.int64),
                   intrinsic=convert(intrinsic, torch.float32), invalid=convert(invalid, torch.bool),
                   parent=convert(parent, torch.int64), branch_turn=convert(branch_turn, torch.int64),
                   state_text=None if state_text is None else tuple(state_text),
                   token_turn=convert(token_turn, torch.int64), loss_mask=convert(loss_mask, torch.bool))

    @classmethod
    def from_episodes(cls, rewards: Sequence[Sequence[float]], *, group: Sequence[int],
                      states: Sequence[Sequence[int]] | None = None,
                      intrinsic: Sequence[Sequence[float]] | None = None,
                      invalid: Sequence[Sequence[bool]] | None = None,
                      branches: Sequence[tuple[int, int] | None] | None = None) -> TurnBatch:
        """Build from nested per-episode lists; episode ids are 0..E-1 in order.

        `rewards[i][t]` is episode i's reward at turn t, `group[i]` its group; `states`,
        `intrinsic` and `invalid` are nested the same way. `branches[i]` is None for a root
        episode, `(parent, turn)` for a branch of episode `parent` from the state before its turn `turn`.
        """
        if len(group) != len(rewards):
            raise ValueError(f"group has {len(group)} entries but rewards has {len(rewards)} episodes")
        for name, nested in (("states", states), ("intrinsic", intrinsic), ("invalid", invalid)):
            if nested is not None and [len(e) for e in nested] != [len(e) for e in rewards]:
                raise ValueError(f"{name} must have the same episode lengths as rewards")

        def flat(nested: Sequence[Sequence[Any]] | None) -> list[Any] | None:
            return None if nested is None else [x for episode in nested for x in episode]

        lengths = [len(e) for e in rewards]
        if branches is not None and len(branches) != len(rewards):
            raise ValueError(f"branches has {len(branches)} entries but rewards has {len(rewards)} episodes")
        origin = None if branches is None else [b or (-1, -1) for b in branches]

        def per_turn(values: list[int]) -> list[int]:
            return [v for v, n in zip(values, lengths) for _ in range(n)]

        return cls.from_lists(group=[g for g, n in zip(group, lengths) for _ in range(n)],
                              episode=[i for i, n in enumerate(lengths) for _ in range(n)],
                              turn=[t for n in lengths for t in range(n)], reward=flat(rewards),
                              state=flat(states), intrinsic=flat(intrinsic), invalid=flat(invalid),
                              parent=None if origin is None else per_turn([o[0] for o in origin]),
                              branch_turn=None if origin is None else per_turn([o[1] for o in origin]))
