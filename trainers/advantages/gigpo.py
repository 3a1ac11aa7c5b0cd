"""GiGPO (Feng et al. 2025): episode-level GRPO plus a step-level advantage within anchor-state buckets."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from . import reference
from .batch import TurnBatch
from .ops import Ops
from .outcome import episode_adv
from .registry import register_estimator
from .segment import EpisodeStats, Segments, Singleton, Std, standardize


@register_estimator("gigpo", reference=reference.gigpo)
def gigpo(batch: TurnBatch, ops: Ops, *, mode: Literal["mean_std_norm", "mean_norm"] = "mean_std_norm",
          gamma: float = 0.95, omega: float = 1.0, invalid_penalty: float = 0.1,
          episode_stats: EpisodeStats = "episodes", grouping: Literal["exact", "similarity"] = "exact",
          state_texts: Sequence[str] | None = None, similarity_threshold: float = 0.95,
          std: Std = "population", eps: float = 1e-6, singleton: Singleton = "zero") -> Tensor:
    """A_{i,t} = A^E_i + omega * A^S_{i,t}, A^S_{i,t} = (G~_{i,t} - mean_B G~) / (std_B G~ + eps).

    A^E_i is GRPO over the group (episode_stats as in GRPO). G_{i,t} = sum_k gamma^(k-t) r_{i,k};
    G~_{i,t} = G_{i,t} - invalid_penalty * invalid_{i,t}: the penalty is subtracted from the
    invalid turn's own return after the scan, so it is not discounted into earlier turns
    and does not change R_i (no penalty when batch.invalid is None). Anchor bucket
    B(g, s) pools every turn row of group g acting from state s, across episodes and
    within one (loops count). mode="mean_norm" drops the std division at both levels,
    as verl-agent does. grouping="similarity" buckets by `state_texts` (one string per
    turn) instead of `state`: see `similar_state_keys`.
    """
    seg = Segments.of(batch)
    scale = mode == "mean_std_norm"
    outcome_adv = episode_adv(ops, batch, seg, scale=scale, episode_stats=episode_stats, std=std, eps=eps,
                              singleton=singleton)
    returns = ops.reverse_scan(batch.reward.to(torch.float64), seg, gamma, "sum")
    if batch.invalid is not None:
        returns = returns - invalid_penalty * batch.invalid.to(torch.float64)
    anchor, num_anchors = anchor_buckets(seg, _state_keys(batch, seg, grouping, state_texts, similarity_threshold))
    return standardize(ops, returns, anchor, num_anchors, scale=scale, std=std, eps=eps, singleton=singleton,
                       base=seg.per_turn(outcome_adv), coef=omega)


def anchor_buckets(seg: Segments, state: Tensor) -> tuple[Tensor, int]:
    """([N] dense id of each row's (group, state) bucket, number of buckets).

    One N-row sort: the rows are laid out group by group (an E-row sort of the episodes),
    then stably sorted by state, which leaves equal states in group order; a bucket
    starts wherever the state or the group changes.
    """
    n = state.shape[0]
    if n == 0:
        return state.clone(), 0
    episode_order = torch.argsort(seg.episode_group, stable=True)
    length = seg.episode_length.index_select(0, episode_order)
    shift = seg.episode_start.index_select(0, episode_order) - (torch.cumsum(length, 0) - length)
    by_group = torch.arange(n, device=state.device) + torch.repeat_interleave(shift, length, output_size=n)
    order = by_group.index_select(0, torch.argsort(state.index_select(0, by_group), stable=True))
    sorted_state, sorted_group = state.index_select(0, order), seg.group_of_turn.index_select(0, order)
    starts = torch.ones(n, dtype=torch.int64, device=state.device)
    starts[1:] = (sorted_state[1:] != sorted_state[:-1]) | (sorted_group[1:] != sorted_group[:-1])
    bucket = torch.cumsum(starts, 0) - 1
    return torch.empty_like(bucket).scatter_(0, order, bucket), int(bucket[-1]) + 1


def similar_state_keys(texts: Sequence[str], group_of_turn: Sequence[int], threshold: float = 0.95) -> Tensor:
    """[N] int64 keys: within a group, rows whose text has similarity ratio >= threshold with a bucket's
    representative share its key.

    Greedy in row order: each text joins the first representative (the bucket's first
    text) with difflib.SequenceMatcher(None, representative, text).ratio() >= threshold,
    else it founds a new bucket. Runs on the host in Python: similarity has no tensor form.
    """
    keys: list[int] = []
    num_buckets = 0
    representatives: dict[int, list[tuple[str, int]]] = {}
    seen: dict[tuple[int, str], int] = {}  # identical text: the same greedy answer, without difflib
    for g, text in zip(group_of_turn, texts):
        key = seen.get((g, text))
        if key is None:
            reps = representatives.setdefault(g, [])
            key = next((k for rep, k in reps if difflib.SequenceMatcher(None, rep, text).ratio() >= threshold),
                       None)
            if key is None:
                key, num_buckets = num_buckets, num_buckets + 1
                reps.append((text, key))
            seen[(g, text)] = key
        keys.append(key)
    return torch.tensor(keys, dtype=torch.int64)


def _state_keys(batch: TurnBatch, seg: Segments, grouping: str, state_texts: Sequence[str] | None,
                threshold: float) -> Tensor:
    if grouping == "exact":
        if state_texts is not None:
            raise ValueError("gigpo: state_texts is only read with grouping='similarity'; "
                             "exact grouping uses batch.state")
        return batch.state
    if state_texts is None or len(state_texts) != batch.num_turns:
        got = "None" if state_texts is None else f"{len(state_texts)} texts"
        raise ValueError(f"gigpo: grouping='similarity' needs state_texts, one string per turn "
                         f"({batch.num_turns}); got {got}")
    return similar_state_keys(state_texts, seg.group_of_turn.tolist(), threshold).to(batch.device)
