"""Triton kernels for the estimators' primitives (backend="triton"): one launch per stage.

Stages: segment totals (weights and weighted sums, atomics into per-segment slots),
squared deviations from the segment means (second pass, same scheme), the affine
normalise-and-combine `base + (x - shift[seg]) * factor[seg]`, the within-episode reverse
scan (one lane per episode, walking its turns backwards), and the gather to tokens.
Layout, bucket ids (torch.unique, a sort) and O(segments) finalisation stay in torch.

Runs on CUDA tensors. On CPU tensors it runs only under Triton's interpreter, which
Triton selects when TRITON_INTERPRET=1 is set *before triton is imported* (tests do this
in a subprocess). Everything is float64, like the torch path; scalars travel in
one-element float64 tensors because Triton passes Python floats as float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .ops import Ops
from .segment import Segments

_ELEMENTS = 1024  # rows per program of the elementwise and atomic kernels
_EPISODES = 128  # episodes (lanes) per program of the scan kernel


@triton.jit
def _segment_totals_kernel(x_ptr, weight_ptr, seg_ptr, total_ptr, sum_ptr, n, HAS_WEIGHT: tl.constexpr,
                           WANT_TOTAL: tl.constexpr, WANT_SUM: tl.constexpr, ONE_SEGMENT: tl.constexpr,
                           BLOCK: tl.constexpr):
    # total[seg] += weight (1 without weights) and sum[seg] += weight * x, each when asked for
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = rows < n
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + rows, mask=inside, other=0.0)
    else:
        w = tl.where(inside, 1.0, 0.0).to(tl.float64)
    if ONE_SEGMENT:  # reduce the block first: one atomic per program instead of BLOCK on one address
        if WANT_TOTAL:
            tl.atomic_add(total_ptr, tl.sum(w, axis=0))
        if WANT_SUM:
            tl.atomic_add(sum_ptr, tl.sum(w * tl.load(x_ptr + rows, mask=inside, other=0.0), axis=0))
    else:
        seg = tl.load(seg_ptr + rows, mask=inside, other=0)
        if WANT_TOTAL:
            tl.atomic_add(total_ptr + seg, w, mask=inside)
        if WANT_SUM:
            tl.atomic_add(sum_ptr + seg, w * tl.load(x_ptr + rows, mask=inside, other=0.0), mask=inside)


@triton.jit
def _segment_sq_dev_kernel(x_ptr, weight_ptr, seg_ptr, center_ptr, out_ptr, n,
                           HAS_WEIGHT: tl.constexpr, ONE_SEGMENT: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = rows < n
    seg = tl.load(seg_ptr + rows, mask=inside, other=0)
    dev = tl.load(x_ptr + rows, mask=inside, other=0.0) - tl.load(center_ptr + seg, mask=inside, other=0.0)
    sq = dev * dev
    if HAS_WEIGHT:
        sq = sq * tl.load(weight_ptr + rows, mask=inside, other=0.0)
    if ONE_SEGMENT:
        tl.atomic_add(out_ptr, tl.sum(sq, axis=0))
    else:
        tl.atomic_add(out_ptr + seg, sq, mask=inside)


@triton.jit
def _affine_kernel(x_ptr, seg_ptr, shift_ptr, factor_ptr, base_ptr, out_ptr, n,
                   HAS_BASE: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = rows < n
    seg = tl.load(seg_ptr + rows, mask=inside, other=0)
    x = tl.load(x_ptr + rows, mask=inside, other=0.0)
    out = (x - tl.load(shift_ptr + seg, mask=inside, other=0.0)) * tl.load(factor_ptr + seg, mask=inside, other=0.0)
    if HAS_BASE:
        out = out + tl.load(base_ptr + rows, mask=inside, other=0.0)
    tl.store(out_ptr + rows, out, mask=inside)


@triton.jit
def _reverse_scan_kernel(x_ptr, out_ptr, start_ptr, length_ptr, num_episodes, gamma_ptr,
                         IS_MIN: tl.constexpr, BLOCK: tl.constexpr):
    episodes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = episodes < num_episodes
    start = tl.load(start_ptr + episodes, mask=inside, other=0)
    length = tl.load(length_ptr + episodes, mask=inside, other=0)
    gamma = tl.load(gamma_ptr)
    if IS_MIN:
        acc = tl.full([BLOCK], float("inf"), tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    for k in range(0, tl.max(length, axis=0)):
        t = length - 1 - k
        active = inside & (t >= 0)
        x = tl.load(x_ptr + start + t, mask=active, other=0.0)
        if IS_MIN:
            acc = tl.minimum(acc, x)
        else:
            acc = x + gamma * acc
        tl.store(out_ptr + start + t, acc, mask=active)


@triton.jit
def _gather_tokens_kernel(values_ptr, token_turn_ptr, mask_ptr, out_ptr, m, BLOCK: tl.constexpr):
    tokens = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = tokens < m
    on = tl.load(mask_ptr + tokens, mask=inside, other=0) != 0
    turn = tl.load(token_turn_ptr + tokens, mask=inside & on, other=0)
    value = tl.load(values_ptr + turn, mask=inside & on, other=0.0)
    tl.store(out_ptr + tokens, value.to(tl.float32), mask=inside)


def _grid(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)


def _segment_totals(x: Tensor | None, seg: Tensor, num_seg: int, weight: Tensor | None,
                    want_total: bool, want_sum: bool) -> tuple[Tensor, Tensor]:
    total = torch.zeros(num_seg, dtype=torch.float64, device=seg.device)
    weighted_sum = torch.zeros_like(total)
    n = seg.shape[0]
    if n:
        _segment_totals_kernel[_grid(n, _ELEMENTS)](
            seg if x is None else x.contiguous(), seg if weight is None else weight.contiguous(), seg.contiguous(),
            total, weighted_sum, n, HAS_WEIGHT=weight is not None, WANT_TOTAL=want_total, WANT_SUM=want_sum,
            ONE_SEGMENT=num_seg == 1, BLOCK=_ELEMENTS)
    return total, weighted_sum


def _segment_sum(x: Tensor, seg: Tensor, num_seg: int) -> Tensor:
    return _segment_totals(x, seg, num_seg, None, want_total=False, want_sum=True)[1]


def _segment_count(seg: Tensor, num_seg: int) -> Tensor:
    return _segment_totals(None, seg, num_seg, None, want_total=True, want_sum=False)[0]


def _episode_sum(x: Tensor, segments: Segments) -> Tensor:
    return _segment_sum(x, segments.episode_of_turn, segments.num_episodes)


def _segment_moments(x: Tensor, seg: Tensor, num_seg: int, weight: Tensor | None,
                     episodes: Segments | None = None) -> tuple[Tensor, Tensor, Tensor]:
    del episodes  # a hint for the torch path; the atomics need no episode layout
    total, weighted_sum = _segment_totals(x, seg, num_seg, weight, want_total=True, want_sum=True)
    mean = weighted_sum / torch.where(total > 0, total, 1.0)
    sq_dev = torch.zeros_like(total)
    n = x.shape[0]
    if n:
        _segment_sq_dev_kernel[_grid(n, _ELEMENTS)](x.contiguous(), x if weight is None else weight.contiguous(),
                                                    seg.contiguous(), mean, sq_dev, n,
                                                    HAS_WEIGHT=weight is not None, ONE_SEGMENT=num_seg == 1,
                                                    BLOCK=_ELEMENTS)
    return total, mean, sq_dev


def _affine(x: Tensor, seg: Tensor, shift: Tensor, factor: Tensor, base: Tensor | None) -> Tensor:
    out = torch.empty_like(x)
    n = x.shape[0]
    if n:
        _affine_kernel[_grid(n, _ELEMENTS)](x.contiguous(), seg.contiguous(), shift.contiguous(),
                                            factor.contiguous(), x if base is None else base.contiguous(), out, n,
                                            HAS_BASE=base is not None, BLOCK=_ELEMENTS)
    return out


def _reverse_scan(x: Tensor, segments: Segments, gamma: float, op: str) -> Tensor:
    x = x.to(torch.float64).contiguous()
    out = torch.empty_like(x)
    num_episodes = segments.num_episodes
    if num_episodes:
        _reverse_scan_kernel[_grid(num_episodes, _EPISODES)](
            x, out, segments.episode_start, segments.episode_length, num_episodes,
            torch.tensor([gamma], dtype=torch.float64, device=x.device), IS_MIN=op == "min", BLOCK=_EPISODES)
    return out


def _gather_tokens(values: Tensor, token_turn: Tensor, loss_mask: Tensor) -> Tensor:
    m = token_turn.shape[0]
    out = torch.empty(m, dtype=torch.float32, device=values.device)
    if m:
        _gather_tokens_kernel[_grid(m, _ELEMENTS)](values.contiguous(), token_turn.contiguous(),
                                                   loss_mask.contiguous(), out, m, BLOCK=_ELEMENTS)
    return out


TRITON_OPS = Ops("triton", _segment_sum, _segment_count, _episode_sum, _segment_moments, _affine, _reverse_scan,
                 _gather_tokens)


def interpreting() -> bool:
    """True when this module's kernels were built by Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_affine_kernel).__name__ == "InterpretedFunction"


def triton_ops(device: torch.device) -> Ops:
    """The Triton primitives, after checking they can run on `device`."""
    if device.type == "cpu" and not interpreting():
        raise RuntimeError("backend='triton' runs on CUDA tensors (move the batch with batch.to('cuda')); "
                           "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before triton is "
                           "imported")
    return TRITON_OPS
