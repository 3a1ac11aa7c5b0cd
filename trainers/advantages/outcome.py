"""Outcome-level baselines, one advantage per episode shared by its turns: GRPO, Dr. GRPO, RLOO, REINFORCE++."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import reference
from .batch import TurnBatch
from .ops import Ops
from .registry import register_estimator
from .segment import EpisodeStats, Segments, Singleton, Std, leave_one_out, standardize, whiten


def episode_returns(ops: Ops, batch: TurnBatch, seg: Segments) -> Tensor:
    """[E] R_i = sum_t r_{i,t}, float64."""
    return ops.episode_sum(batch.reward.to(torch.float64), seg)


def episode_adv(ops: Ops, batch: TurnBatch, seg: Segments, *, scale: bool, episode_stats: EpisodeStats,
                std: Std, eps: float, singleton: Singleton) -> Tensor:
    """[E] A^E_i = (R_i - mean_g R) / (std_g R + eps), or R_i - mean_g R when not `scale`.

    episode_stats="episodes" counts each episode once (the papers); "turns" counts each
    turn row, i.e. weights episode i by its length (verl-agent's cross-step statistics).
    """
    weight = seg.episode_length.to(torch.float64) if episode_stats == "turns" else None
    return standardize(ops, episode_returns(ops, batch, seg), seg.episode_group, seg.num_groups, weight=weight,
                       scale=scale, std=std, eps=eps, singleton=singleton)


@register_estimator("grpo", reference=reference.grpo)
def grpo(batch: TurnBatch, ops: Ops, *, scale: Literal["std", "none"] = "std",
         episode_stats: EpisodeStats = "episodes", std: Std = "population", eps: float = 1e-6,
         singleton: Singleton = "zero") -> Tensor:
    """GRPO: A_i = (R_i - mean_g R) / (std_g R + eps), R_i = sum_t r_{i,t}; scale="none" drops the division."""
    seg = Segments.of(batch)
    adv = episode_adv(ops, batch, seg, scale=scale == "std", episode_stats=episode_stats, std=std, eps=eps,
                      singleton=singleton)
    return seg.per_turn(adv)


@register_estimator("drgrpo", reference=reference.drgrpo)
def drgrpo(batch: TurnBatch, ops: Ops, *, episode_stats: EpisodeStats = "episodes",
           singleton: Singleton = "zero") -> Tensor:
    """Dr. GRPO: A_i = R_i - mean_g R (GRPO without the std division)."""
    return grpo(batch, ops, scale="none", episode_stats=episode_stats, singleton=singleton)


@register_estimator("rloo", reference=reference.rloo)
def rloo(batch: TurnBatch, ops: Ops, *, singleton: Singleton = "zero") -> Tensor:
    """RLOO: A_i = R_i - mean_{j in g, j != i} R_j; each episode counts once (leave-one-out is per episode)."""
    seg = Segments.of(batch)
    returns = episode_returns(ops, batch, seg)
    baseline, others = leave_one_out(ops, returns, seg.episode_group, seg.num_groups)
    adv = returns - baseline
    if singleton == "zero":
        adv = torch.where(others == 0, 0.0, adv)
    return seg.per_turn(adv)


@register_estimator("reinforce_pp", reference=reference.reinforce_pp)
def reinforce_pp(batch: TurnBatch, ops: Ops, *, episode_stats: EpisodeStats = "episodes",
                 whiten_over: Literal["episodes", "turns", "tokens"] = "episodes", std: Std = "population",
                 eps: float = 1e-6, singleton: Singleton = "zero") -> Tensor:
    """REINFORCE++-baseline: A_i = R_i - mean_g R, then (A - mean A) / (std A + eps) over the batch.

    whiten_over: the batch statistics count each episode once ("episodes", the equation),
    each turn row ("turns"), or each loss-masked token ("tokens", the released
    OpenRLHF/verl code, which whitens token-level advantages).
    """
    seg = Segments.of(batch)
    centred = episode_adv(ops, batch, seg, scale=False, episode_stats=episode_stats, std=std, eps=eps,
                          singleton=singleton)
    return whiten(ops, batch, seg.per_turn(centred), whiten_over, std=std, eps=eps, singleton=singleton)
