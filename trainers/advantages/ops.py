"""The primitives an estimator composes, one set per backend ("torch" here, "triton" in triton_kernels)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .scan import reverse_scan
from .segment import Segments


@dataclass(frozen=True)
class Ops:
    """Backend primitives; every float is float64, every segment id a dense int64 in 0..num_seg-1.

    segment_sum(x, seg, num_seg) -> per segment sum of x.
    segment_count(seg, num_seg) -> per segment number of rows (float64).
    episode_sum(x, segments) -> [E] per episode sum of x (episodes are contiguous rows).
    segment_moments(x, seg, num_seg, weight, episodes=None) -> per segment (W, mean, M2): total weight
        (rows when weight is None), weighted mean, and sum of weight * (x - mean)^2 (two passes).
        `episodes`, a Segments each of whose episodes lies within one segment, lets a backend sum
        each episode's contiguous rows first (a hint; the result is the same without it).
    affine(x, seg, shift, factor, base) -> per row base + (x - shift[seg]) * factor[seg] (base may be None).
    reverse_scan(x, segments, gamma, op) -> the within-episode reverse scan of scan.reverse_scan.
    gather_tokens(values, token_turn, loss_mask) -> float32 per token, values[token_turn] where the mask is on, else 0.
    """

    name: str
    segment_sum: Callable[..., Tensor]
    segment_count: Callable[..., Tensor]
    episode_sum: Callable[..., Tensor]
    segment_moments: Callable[..., tuple[Tensor, Tensor, Tensor]]
    affine: Callable[..., Tensor]
    reverse_scan: Callable[..., Tensor]
    gather_tokens: Callable[..., Tensor]


_LANES = 8


def _segment_sum(x: Tensor, seg: Tensor, num_seg: int) -> Tensor:
    if num_seg == 1:  # a reduction, not a chain of dependent adds into one slot
        return x.sum().reshape(1)
    return x.new_zeros(num_seg).scatter_add_(0, seg, x)


def _segment_count(seg: Tensor, num_seg: int) -> Tensor:
    return torch.bincount(seg, minlength=num_seg).to(torch.float64)


def _episode_sum(x: Tensor, segments: Segments) -> Tensor:
    # Contiguous runs: a sequential sum per run, no scatter (whose adds into one slot form a chain)
    return torch.segment_reduce(x, "sum", offsets=segments.episode_bounds)


def _segment_moments(x: Tensor, seg: Tensor, num_seg: int, weight: Tensor | None,
                     episodes: Segments | None = None) -> tuple[Tensor, Tensor, Tensor]:
    n = x.shape[0]
    if episodes is not None:
        # Each episode lies in one segment: sum its contiguous rows, then E partial sums per segment
        seg_of_episode = seg.index_select(0, episodes.episode_start)

        def segment_sum(v: Tensor) -> Tensor:
            return _segment_sum(_episode_sum(v, episodes), seg_of_episode, num_seg)
    elif num_seg * _LANES <= n and num_seg > 1:
        # Consecutive rows mostly share a segment, and scatter_add_ then chains dependent adds
        # on one slot; giving row i the partial sum i % 8 of its segment breaks the chain.
        lane = torch.arange(_LANES, device=seg.device).repeat(n // _LANES + 1)[:n]  # 0..7, 0..7, ...
        slots = torch.add(lane, seg, alpha=_LANES)

        def segment_sum(v: Tensor) -> Tensor:
            return v.new_zeros(num_seg * _LANES).scatter_add_(0, slots, v).view(num_seg, _LANES).sum(1)
    else:
        def segment_sum(v: Tensor) -> Tensor:
            return _segment_sum(v, seg, num_seg)

    if weight is not None:
        total = segment_sum(weight)
    elif episodes is not None:
        total = _segment_sum(episodes.episode_length.to(torch.float64), seg_of_episode, num_seg)
    else:
        total = _segment_count(seg, num_seg)
    mean = segment_sum(x if weight is None else weight * x) / torch.where(total > 0, total, 1.0)
    dev = x - (mean if num_seg == 1 else mean.index_select(0, seg))
    return total, mean, segment_sum(dev * dev if weight is None else weight * dev * dev)


def _affine(x: Tensor, seg: Tensor, shift: Tensor, factor: Tensor, base: Tensor | None) -> Tensor:
    out = (x - shift.index_select(0, seg)) * factor.index_select(0, seg)
    return out if base is None else out + base


def _gather_tokens(values: Tensor, token_turn: Tensor, loss_mask: Tensor) -> Tensor:
    return torch.where(loss_mask, values.to(torch.float32).index_select(0, token_turn), 0.0)


TORCH_OPS = Ops("torch", _segment_sum, _segment_count, _episode_sum, _segment_moments, _affine, reverse_scan,
                _gather_tokens)
