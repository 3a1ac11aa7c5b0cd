"""PRIME: leave-one-out baselines for the outcome and for the implicit process rewards, summed back, whitened."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import reference
from .batch import TurnBatch
from .ops import Ops
from .outcome import episode_returns
from .registry import register_estimator
from .segment import Segments, Singleton, Std, leave_one_out, whiten


@register_estimator("prime", reference=reference.prime, turn_reward="implicit_prm")
def prime(batch: TurnBatch, ops: Ops, *, gamma: float = 1.0, process_loo: Literal["paper", "released"] = "paper",
          whiten_over: Literal["turns", "tokens"] = "turns", std: Std = "population", eps: float = 1e-6,
          singleton: Singleton = "zero") -> Tensor:
    """A = whiten( sum_{s >= t} gamma^(s-t) (q_{i,s} - b^q_{i,s}) + (R_i - b^R_i) ), b = leave-one-out baselines.

    q is batch.intrinsic (per-turn implicit process reward), R_i the episode's summed
    reward (outcome), added on its last turn. b^R_i = mean_{j in g, j != i} R_j.
    process_loo="paper": b^q_i = mean_{j != i} qbar_j with qbar_j episode j's mean turn
    reward (PRIME Eq. 5 at turn granularity); "released": b^q_{i,t} = (sum_j qbar_j - q_{i,t}) / (n - 1)
    (the released code, which leaves out the turn's own reward rather than its episode's mean).
    A lone episode gets 0 for both terms ("zero") or no baseline ("raw"). whiten_over: the
    batch statistics count each turn row ("turns") or loss-masked token ("tokens", the
    released code's masked_whiten).
    """
    if batch.intrinsic is None:
        raise ValueError("prime reads the per-turn implicit process rewards from batch.intrinsic, which is None")
    seg = Segments.of(batch)
    process = batch.intrinsic.to(torch.float64)

    returns = episode_returns(ops, batch, seg)
    outcome_baseline, others = leave_one_out(ops, returns, seg.episode_group, seg.num_groups)
    outcome_adv = returns - outcome_baseline
    mean_process = ops.episode_sum(process, seg) / seg.episode_length
    process_baseline, _ = leave_one_out(ops, mean_process, seg.episode_group, seg.num_groups)
    process_adv = process - seg.per_turn(process_baseline)
    others_of_turn = seg.per_turn(others)
    if process_loo == "released":  # its baseline is the paper's minus (q_{i,t} - qbar_i) / (n - 1)
        process_adv = process_adv + torch.where(others_of_turn == 0, 0.0,
                                                (process - seg.per_turn(mean_process)) / others_of_turn)
    if singleton == "zero":
        outcome_adv = torch.where(others == 0, 0.0, outcome_adv)
        process_adv = torch.where(others_of_turn == 0, 0.0, process_adv)

    turn_adv = process_adv + torch.where(seg.is_last, seg.per_turn(outcome_adv), 0.0)
    return whiten(ops, batch, ops.reverse_scan(turn_adv, seg, gamma, "sum"), whiten_over, std=std, eps=eps,
                  singleton=singleton)
