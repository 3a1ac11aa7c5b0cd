"""Turn-level GRPO: group-normalised per-turn rewards, discounted back through the episode."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import reference
from .batch import TurnBatch
from .ops import Ops
from .registry import register_estimator
from .segment import Order, Segments, Singleton, Std, standardize


@register_estimator("turn_grpo", reference=reference.turn_grpo)
def turn_grpo(batch: TurnBatch, ops: Ops, *, gamma: float = 1.0, order: Order = "normalize_then_discount",
              scale: Literal["std", "none"] = "std", std: Std = "population", eps: float = 1e-6,
              singleton: Singleton = "zero") -> Tensor:
    """A_{i,t} = r~_{i,t} + gamma * A_{i,t+1}, r~ = (r - mean_g r) / (std_g r + eps) over all turn rows of group g.

    order="discount_then_normalize" instead normalises G_{i,t} = sum_k gamma^(k-t) r_{i,k}
    over the group's turn rows. scale="none" centres without dividing by the std.
    """
    seg = Segments.of(batch)

    def normalized(x: Tensor) -> Tensor:
        return standardize(ops, x, seg.group_of_turn, seg.num_groups, scale=scale == "std", std=std, eps=eps,
                           singleton=singleton, episodes=seg)

    reward = batch.reward.to(torch.float64)
    if order == "normalize_then_discount":
        return ops.reverse_scan(normalized(reward), seg, gamma, "sum")
    return normalized(ops.reverse_scan(reward, seg, gamma, "sum"))
