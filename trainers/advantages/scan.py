"""Reverse scans within episodes: discounted return-to-go and PURE's min-form return.

Vectorised as a Hillis–Steele doubling scan: after the step with offset d, row t holds
the combination of rows t .. t+2d-1 of its episode, so ceil(log2(L_max)) whole-batch
steps suffice. reach_d[t] = 1 when row t + d is in t's episode; reach_2d[t] =
reach_d[t] * reach_d[t + d]. The sum only ever multiplies by gamma^d <= 1, so it neither
overflows nor divides by vanishing powers of gamma (the cumsum(r * gamma^k) / gamma^t
shortcut does both), and gamma = 0 is exact.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .segment import Segments, positions_in_runs

ScanOp = Literal["sum", "min"]


def reverse_scan(x: Tensor, segments: Segments, gamma: float, op: ScanOp) -> Tensor:
    """y_t = x_t + gamma * y_{t+1} ("sum") or min(x_t, y_{t+1}) ("min"), within each episode; float64."""
    n = x.shape[0]
    if n == 0:
        return x.to(torch.float64, copy=True)
    # A current and a next buffer of values and of reach, each with L_max zero rows past the end,
    # so row t + d always exists (with reach 0); separate tensors, so the result keeps only its own alive.
    values_full = [torch.zeros(n + segments.longest, dtype=torch.float64, device=x.device) for _ in range(2)]
    reach_full = [torch.zeros_like(values_full[0]) for _ in range(2)]
    values_head, reach_head = [v[:n] for v in values_full], [r[:n] for r in reach_full]
    values_head[0].copy_(x)
    torch.logical_not(segments.is_last, out=reach_head[0])
    now, d = 0, 1
    while d < segments.longest:
        shifted = values_full[now][d:n + d]
        if op == "sum":
            torch.addcmul(values_head[now], shifted, reach_head[now], value=gamma**d, out=values_head[1 - now])
        else:
            torch.where(reach_head[now] > 0, torch.minimum(values_head[now], shifted), values_head[now],
                        out=values_head[1 - now])
        if 2 * d < segments.longest:  # the last step's reach would never be read
            torch.mul(reach_head[now], reach_full[now][d:n + d], out=reach_head[1 - now])
        now, d = 1 - now, 2 * d
    return values_head[now]


def discounted_returns(values: Tensor, episode: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k within each episode; `episode` ids label contiguous rows in turn order."""
    return reverse_scan(values, Segments(positions_in_runs(episode)), gamma, "sum").to(values.dtype)


def min_returns(values: Tensor, episode: Tensor) -> Tensor:
    """V_t = min_{k >= t} r_k within each episode (PURE's min-form credit assignment)."""
    return reverse_scan(values, Segments(positions_in_runs(episode)), 1.0, "min").to(values.dtype)
