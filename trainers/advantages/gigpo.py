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
from .outcome import episode_adv, episode_returns
from .registry import register_estimator
from .segment import EpisodeStats, Segments, Singleton, Std, standardize


#: verl-agent's GiGPO conventions: its base config (mean_norm, penalty 0.1 on step and score, cross-step
#: statistics with torch.std, a lone episode keeps its raw score) plus the gamma every published recipe sets.
VERL_AGENT = {"mode": "mean_norm", "gamma": 0.95, "omega": 1.0, "invalid_penalty": 0.1,
              "penalty_scope": "step_and_outcome", "episode_stats": "turns", "std": "sample", "eps": 1e-6,
              "singleton": "zero", "episode_singleton": "raw"}


@register_estimator("gigpo", reference=reference.gigpo, presets={"verl-agent": VERL_AGENT})
def gigpo(batch: TurnBatch, ops: Ops, *, mode: Literal["mean_std_norm", "mean_norm"] = "mean_std_norm",
          gamma: float = 0.95, omega: float = 1.0, invalid_penalty: float = 0.1,
          penalty_scope: Literal["step", "step_and_outcome"] = "step", episode_stats: EpisodeStats = "episodes",
          grouping: Literal["exact", "similarity"] = "exact", similarity_threshold: float = 0.95,
          std: Std = "population", eps: float = 1e-6, singleton: Singleton = "zero",
          episode_singleton: Singleton = "zero") -> Tensor:
    """A_{i,t} = A^E_i + omega * A^S_{i,t}, A^S_{i,t} = (G~_{i,t} - mean_B G~) / (std_B G~ + eps).

    A^E_i is GRPO over the group (episode_stats as in GRPO; a group of one episode follows
    `episode_singleton`). G_{i,t} = sum_k gamma^(k-t) r_{i,k}; G~_{i,t} = G_{i,t} -
    invalid_penalty * invalid_{i,t}: the penalty is subtracted from the invalid turn's own
    return after the scan, so it is not discounted into earlier turns (no penalty when
    batch.invalid is None). penalty_scope="step_and_outcome" also subtracts it from the
    score the episode level reads, per turn row: A^E_{i,t} standardises R_i - penalty *
    invalid_{i,t} over the group's turn rows (verl-agent; needs episode_stats="turns").
    Anchor bucket B(g, s) pools every turn row of group g acting from state s, across
    episodes and within one (loops count); a bucket of one row follows `singleton`.
    mode="mean_norm" drops the std division at both levels, as verl-agent does.
    grouping="similarity" buckets by `batch.state_text` instead of `state`: see
    `similar_state_keys`. See docs/algorithms.md, "GiGPO".
    """
    seg = Segments.of(batch)
    scale = mode == "mean_std_norm"
    if penalty_scope == "step_and_outcome":
        if episode_stats != "turns":
            raise ValueError("gigpo: penalty_scope='step_and_outcome' scores every turn row, so it needs "
                             "episode_stats='turns' (verl-agent's cross-step statistics)")
        scores = seg.per_turn(episode_returns(ops, batch, seg))
        if batch.invalid is not None:
            scores = scores - invalid_penalty * batch.invalid.to(torch.float64)
        outcome_adv = standardize(ops, scores, seg.group_of_turn, seg.num_groups, scale=scale, std=std, eps=eps,
                                  singleton=episode_singleton)
    else:
        outcome_adv = seg.per_turn(episode_adv(ops, batch, seg, scale=scale, episode_stats=episode_stats, std=std,
                                               eps=eps, singleton=episode_singleton))
    returns = ops.reverse_scan(batch.reward.to(torch.float64), seg, gamma, "sum")
    if batch.invalid is not None:
        returns = returns - invalid_penalty * batch.invalid.to(torch.float64)
    anchor, num_anchors = anchor_buckets(seg, _state_keys(batch, seg, grouping, similarity_threshold))
    return standardize(ops, returns, anchor, num_anchors, scale=scale, std=std, eps=eps, singleton=singleton,
                       base=outcome_adv, coef=omega)


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
    text) with difflib.SequenceMatcher(None, text, representative).ratio() >= threshold,
    else it founds a new bucket. The ratio depends on the argument order; this is
    verl-agent's (`are_similar(obs, cluster_rep)`). Runs on the host in Python:
    similarity has no tensor form.
    """
    keys: list[int] = []
    num_buckets = 0
    representatives: dict[int, list[tuple[str, int]]] = {}
    seen: dict[tuple[int, str], int] = {}  # identical text: the same greedy answer, without difflib
    for g, text in zip(group_of_turn, texts):
        key = seen.get((g, text))
        if key is None:
            reps = representatives.setdefault(g, [])
            key = next((k for rep, k in reps if difflib.SequenceMatcher(None, text, rep).ratio() >= threshold),
                       None)
            if key is None:
                key, num_buckets = num_buckets, num_buckets + 1
                reps.append((text, key))
            seen[(g, text)] = key
        keys.append(key)
    return torch.tensor(keys, dtype=torch.int64)


def _state_keys(batch: TurnBatch, seg: Segments, grouping: str, threshold: float) -> Tensor:
    if grouping == "exact":
        return batch.state
    if batch.state_text is None:
        raise ValueError("gigpo: grouping='similarity' needs batch.state_text (the observation each turn acted "
                         "from, one string per turn); the trainer fills it, TurnBatch.from_lists takes it")
    return similar_state_keys(batch.state_text, seg.group_of_turn.tolist(), threshold).to(batch.device)
