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
    """([N] dense id of each row's (group, state) bucket, number of buckets); ids follow no particular order.

    Hash, then verify, in O(N) rather than an O(N log N) sort of every row: each row hashes
    its key (group, state) into a table of about 4N slots, and one row per slot (whichever
    write lands last) owns it. A row whose key equals its slot owner's joins the owner's
    bucket; that holds for every row of the owner's key, since equal keys share a slot.
    The rows of keys that lost their slot to another key (a few percent) are sorted by key.
    """
    n = state.shape[0]
    if n == 0:
        return state.clone(), 0
    group = seg.group_of_turn
    rows = torch.arange(n, device=state.device)
    table_bits = (4 * n - 1).bit_length()
    slot = _anchor_slot(group, state, table_bits)
    # owner[i]: the row owning row i's slot (the table's unwritten slots are never read)
    owner = state.new_empty(1 << table_bits).scatter_(0, slot, rows).index_select(0, slot)
    owned_id = torch.cumsum(owner == rows, 0) - 1  # numbers the owners, one per bucket found by hashing
    num_owned = int(owned_id[-1]) + 1
    bucket = owned_id.index_select(0, owner)
    mismatch = (state.index_select(0, owner) != state) | (group.index_select(0, owner) != group)
    lost = torch.nonzero(mismatch).flatten()
    if lost.numel() == 0:
        return bucket, num_owned
    lost_bucket, num_lost = _sorted_key_runs(group.index_select(0, lost), state.index_select(0, lost))
    return bucket.index_put_((lost,), num_owned + lost_bucket), num_owned + num_lost


def _anchor_slot(group: Tensor, state: Tensor, bits: int) -> Tensor:
    """[N] slot in 0..2^bits-1 of each row's (dense group, state) key; equal keys get equal slots."""
    # Fold the high half of the 64-bit state into the low bits the mask keeps; an odd multiplier
    # maps distinct groups (< 2^bits) to distinct offsets, and group * it stays far below 2^63.
    return (state ^ (state >> 32) ^ (group * 0x9E3779B1)) & ((1 << bits) - 1)


def _sorted_key_runs(group: Tensor, state: Tensor) -> tuple[Tensor, int]:
    """([M] dense id 0..K-1 of each row's (group, state) key, K), by a stable sort on state then on group."""
    order = torch.argsort(state, stable=True)
    order = order.index_select(0, torch.argsort(group.index_select(0, order), stable=True))
    sorted_state, sorted_group = state.index_select(0, order), group.index_select(0, order)
    starts = torch.ones_like(order)
    starts[1:] = (sorted_state[1:] != sorted_state[:-1]) | (sorted_group[1:] != sorted_group[:-1])
    key_id = torch.cumsum(starts, 0) - 1
    return torch.empty_like(order).scatter_(0, order, key_id), int(key_id[-1]) + 1


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
