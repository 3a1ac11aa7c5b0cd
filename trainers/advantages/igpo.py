"""IGPO: information-gain turn rewards plus the outcome on the last turn, group-normalised and summed back."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import reference
from .batch import TurnBatch
from .ops import Ops
from .outcome import episode_returns
from .registry import register_estimator
from .segment import Order, Segments, Singleton, Std, standardize


@register_estimator("igpo", reference=reference.igpo, turn_reward="info_gain")
def igpo(batch: TurnBatch, ops: Ops, *, alpha: float = 1.0, gamma: float = 1.0,
         normalize: Literal["joint", "separate"] = "joint", order: Order = "normalize_then_discount",
         std: Std = "population", eps: float = 1e-6, singleton: Singleton = "zero") -> Tensor:
    """A_{i,t} = r~_{i,t} + gamma * A_{i,t+1}; r_{i,t} = info_gain_{i,t} for t < L-1, alpha * R_i on the last turn.

    info_gain is batch.intrinsic (IG_t, computed by the turn-reward model); the last turn's
    intrinsic is not read (the paper gives the answer turn the outcome only). R_i is the
    episode's summed `reward` (the outcome when only the last turn is rewarded).
    normalize="joint" z-scores all of a group's turn rewards together; "separate"
    z-scores the information gains and the outcomes each among their own kind.
    order="discount_then_normalize" (joint only) z-scores the returns instead.
    """
    if batch.intrinsic is None:
        raise ValueError("igpo reads the per-turn information gains from batch.intrinsic, which is None")
    if normalize == "separate" and order == "discount_then_normalize":
        raise ValueError("igpo: normalize='separate' z-scores gains and outcomes as rewards, before the "
                         "discount; use order='normalize_then_discount' or normalize='joint'")
    seg = Segments.of(batch)
    # The outcome overwrites only the E last-turn rows of a float64 copy (no [N] gather and select)
    reward = batch.intrinsic.to(torch.float64, copy=True).index_copy_(0, seg.episode_end,
                                                                      alpha * episode_returns(ops, batch, seg))
    if normalize == "joint":  # a group is a union of whole episodes
        kind, num_kinds, episodes = seg.group_of_turn, seg.num_groups, seg
    else:
        kind, num_kinds, episodes = 2 * seg.group_of_turn + seg.is_last, 2 * seg.num_groups, None

    def normalized(x: Tensor) -> Tensor:
        return standardize(ops, x, kind, num_kinds, std=std, eps=eps, singleton=singleton, episodes=episodes)

    if order == "normalize_then_discount":
        return ops.reverse_scan(normalized(reward), seg, gamma, "sum")
    return normalized(ops.reverse_scan(reward, seg, gamma, "sum"))
