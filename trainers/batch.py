"""`RolloutBatch`: everything between the rollout and the policy update, in one type.

Built once per iteration from the rollout's groups (`RolloutBatch.from_groups`;
the SFT warm start builds one from oracle demonstrations the same way). It holds,
aligned by construction because one walk over the episodes fills them all:

- `turns`: the packed turn table of docs/algorithms.md (a `TurnBatch`: group,
  episode, turn, reward, state, invalid, state_text, and parent and branch_turn
  (branch episodes, `envgym.branching`; -1 for the others) per turn; `token_turn`
  and `loss_mask` over the concatenated token rows), which the estimators read;
- the token rows: per row, the ids, the loss mask (True only on sampled ids),
  the behaviour logprobs (the rollout's, 0 on prompt tokens) and the turn of
  each token (its index into `turns`; prompt tokens belong to the turn that
  added them);
- `groups`, the source of truth for everything else (outcomes, answers).

A token row is an episode's `obs_ids + action_ids` over a run of consecutive
turns (see `envgym.trajectory`). `micro_batches` is the one packing rule:
consecutive rows collated while rows x longest row stays within a token budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from envgym.core import stable_hash
from envgym.trainers.advantages import TurnBatch
from envgym.trajectory import Episode, Group


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded tensors of some token rows, shape [B, T] each.

    `loss_mask` is True only on sampled tokens; `old_logprobs` holds the
    behaviour logprobs there (0 elsewhere); `token_turn` is the turn (index
    into `RolloutBatch.turns`) of every token, -1 on padding; `rows` are the
    row indices in the `RolloutBatch`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    token_turn: torch.Tensor
    rows: tuple[int, ...]

    def to(self, device: torch.device | str) -> TokenBatch:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if f.name != "rows"})

    @property
    def sampled_turns(self) -> torch.Tensor:
        """The turn of each trained token, flat and row-major: the order `losses.sampled_logprobs` returns."""
        return self.token_turn[:, 1:][self.loss_mask[:, 1:]]


def pack(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split positions 0..len-1 into consecutive runs with len(run) x max(lengths in run) <= `max_tokens`.

    A single item longer than the budget forms a run of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    runs: list[list[int]] = []
    run: list[int] = []
    width = 0
    for i, length in enumerate(lengths):
        if run and (len(run) + 1) * max(width, length) > max_tokens:
            runs.append(run)
            run, width = [], 0
        run.append(i)
        width = max(width, length)
    if run:
        runs.append(run)
    return runs


@dataclass(frozen=True, eq=False)
class RolloutBatch:
    """The groups of one iteration as the update consumes them; see the module docstring."""

    groups: tuple[Group, ...]
    turns: TurnBatch
    input_ids: tuple[tuple[int, ...], ...]
    loss_mask: tuple[tuple[bool, ...], ...]
    old_logprobs: tuple[tuple[float, ...], ...]
    token_turn: tuple[tuple[int, ...], ...]
    row_episode: tuple[int, ...]
    pad_token_id: int = 0

    @classmethod
    def from_groups(cls, groups: Sequence[Group], *, pad_token_id: int = 0) -> RolloutBatch:
        """Pack `groups` (episodes of a token policy). Raises ValueError if a turn has no sampled ids."""
        group, episode, reward, state, invalid, texts, parent, branch_turn = [], [], [], [], [], [], [], []
        input_ids, loss_mask, old_logprobs, token_turn, row_episode = [], [], [], [], []
        first_of_group: dict[int, int] = {}
        for g, e, ep in _numbered_episodes(groups):
            offset = len(reward)
            first_of_group.setdefault(g, e)
            origin = (-1, -1) if ep.parent is None else (first_of_group[g] + ep.parent, ep.branch_turn)
            for turn in ep.turns:
                if not turn.action_ids:
                    raise ValueError(f"turn {len(reward)} has no sampled token ids (action {turn.action[:40]!r}); "
                                     "only episodes of a token policy (hf, vllm) can be trained on")
                group.append(g)
                episode.append(e)
                reward.append(turn.reward)
                state.append(stable_hash(turn.state_key))
                invalid.append(turn.invalid_action)
                texts.append(turn.observation)
                parent.append(origin[0])
                branch_turn.append(origin[1])
            for row in ep.rows():
                ids, mask, logprobs, owner = [], [], [], []
                for t in row:
                    turn = ep.turns[t]
                    ids += [*turn.obs_ids, *turn.action_ids]
                    mask += [False] * len(turn.obs_ids) + [True] * len(turn.action_ids)
                    logprobs += [0.0] * len(turn.obs_ids) + list(turn.logprobs)
                    owner += [offset + t] * (len(turn.obs_ids) + len(turn.action_ids))
                input_ids.append(tuple(ids))
                loss_mask.append(tuple(mask))
                old_logprobs.append(tuple(logprobs))
                token_turn.append(tuple(owner))
                row_episode.append(e)
        turns = TurnBatch.from_lists(group=group, episode=episode, reward=reward, state=state, invalid=invalid,
                                     parent=parent, branch_turn=branch_turn, state_text=texts,
                                     token_turn=[t for row in token_turn for t in row],
                                     loss_mask=[m for row in loss_mask for m in row])
        return cls(tuple(groups), turns, tuple(input_ids), tuple(loss_mask), tuple(old_logprobs), tuple(token_turn),
                   tuple(row_episode), pad_token_id)

    @property
    def episodes(self) -> list[Episode]:
        """Every episode, in episode-id order (group by group)."""
        return [e for _, _, e in _numbered_episodes(self.groups)]

    @property
    def num_rows(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.input_ids)

    def num_trained_tokens(self, rows: Sequence[int]) -> int:
        """Sampled tokens in `rows`, each counted once: the loss normaliser of a minibatch."""
        return sum(sum(self.loss_mask[i]) for i in rows)

    def trained_turns(self, rows: Sequence[int]) -> set[int]:
        """The turns (indices into `turns`) whose sampled tokens `rows` hold."""
        return {t for i in rows for t, sampled in zip(self.token_turn[i], self.loss_mask[i]) if sampled}

    def with_intrinsic(self, intrinsic: Sequence[float] | torch.Tensor) -> RolloutBatch:
        """The same batch with per-turn rewards of a turn-reward model in `turns.intrinsic`."""
        values = torch.as_tensor(intrinsic, dtype=torch.float32)
        return dataclasses.replace(self, turns=dataclasses.replace(self.turns, intrinsic=values))

    def micro_batches(self, rows: Sequence[int] | None = None, max_tokens: int = 8192) -> Iterator[TokenBatch]:
        """`rows` (default: all, in order) collated into padded TokenBatches by the packing rule (`pack`)."""
        rows = list(range(self.num_rows)) if rows is None else list(rows)
        for run in pack([len(self.input_ids[i]) for i in rows], max_tokens):
            yield self._collate([rows[i] for i in run])

    def _collate(self, rows: list[int]) -> TokenBatch:
        width = max(len(self.input_ids[i]) for i in rows)

        def padded(values, fill, dtype):
            out = torch.full((len(rows), width), fill, dtype=dtype)
            for b, i in enumerate(rows):
                out[b, : len(values[i])] = torch.tensor(values[i], dtype=dtype)
            return out

        lengths = torch.tensor([len(self.input_ids[i]) for i in rows])
        return TokenBatch(
            input_ids=padded(self.input_ids, self.pad_token_id, torch.long),
            attention_mask=(torch.arange(width)[None, :] < lengths[:, None]).long(),
            loss_mask=padded(self.loss_mask, False, torch.bool),
            old_logprobs=padded(self.old_logprobs, 0.0, torch.float32),
            token_turn=padded(self.token_turn, -1, torch.long),
            rows=tuple(rows),
        )


def _numbered_episodes(groups: Sequence[Group]) -> Iterator[tuple[int, int, Episode]]:
    """(group index, episode id, episode) in packed order."""
    e = 0
    for g, group in enumerate(groups):
        for episode in group.episodes:
            yield g, e, episode
            e += 1
