"""The estimator registry and the two entry points: compute_advantages and broadcast_to_tokens."""

from __future__ import annotations

import importlib.util
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .batch import TurnBatch
from .ops import TORCH_OPS, Ops

Backend = Literal["torch", "triton", "reference"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: `fn(batch, ops, **options)` and its optional plain-loop `reference(batch, **options)`."""

    name: str
    fn: Callable[..., Tensor]
    reference: Callable[..., Tensor] | None
    defaults: dict[str, Any]
    choices: dict[str, tuple[Any, ...]]


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str, *, reference: Callable[..., Tensor] | None = None):
    """Decorator registering `fn(batch, ops, *, option=default, ...) -> [N] float64 advantages` as `name`.

    The keyword-only parameters are the estimator's options, each with a default; an
    option annotated `Literal[...]` accepts only those values. `ops` is the backend's
    `Ops` (build on its primitives to run on every backend). `reference`, a plain-loop
    `reference(batch, *, same options)`, serves backend="reference".
    """

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in ESTIMATORS:
            raise ValueError(f"estimator {name!r} is already registered (by {ESTIMATORS[name].fn.__module__})")
        defaults = _options(fn)
        if reference is not None and _options(reference) != defaults:
            raise ValueError(f"reference for {name!r} must take the same options with the same defaults: "
                             f"{_options(reference)} != {defaults}")
        try:
            hints = typing.get_type_hints(fn)
        except NameError:  # annotations that only resolve under TYPE_CHECKING: no Literal checks
            hints = {}
        choices = {k: typing.get_args(hints[k]) for k in defaults
                   if typing.get_origin(hints.get(k)) is Literal}
        ESTIMATORS[name] = Estimator(name, fn, reference, defaults, choices)
        return fn

    return decorate


def _options(fn: Callable[..., Any]) -> dict[str, Any]:
    options = {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
    missing = [k for k, v in options.items() if v is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{fn.__qualname__}: every option needs a default, {missing} have none")
    return options


def compute_advantages(batch: TurnBatch, estimator: str, *, backend: Backend = "torch", **options: Any) -> Tensor:
    """[N] float32 advantages, one per turn row, on the batch's device.

    `estimator` is a registered name (`ESTIMATORS`); `options` are that estimator's
    options (see its docstring). `backend`: "torch" (vectorised, default), "triton"
    (CUDA tensors, or CPU under TRITON_INTERPRET=1), "reference" (plain loops, tests only).
    Registered estimators run under torch.inference_mode().
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid estimators: {sorted(ESTIMATORS)}")
    spec = ESTIMATORS[estimator]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {list(BACKENDS)}")
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for estimator {estimator!r}; "
                         f"valid options: {sorted(spec.defaults)}")
    for key, value in options.items():
        if key in spec.choices and value not in spec.choices[key]:
            raise ValueError(f"{estimator}: {key}={value!r} is not one of {list(spec.choices[key])}")
    if "gamma" in options and not 0.0 <= options["gamma"] <= 1.0:
        raise ValueError(f"{estimator}: gamma={options['gamma']} must lie in [0, 1]")
    if "eps" in options and not options["eps"] > 0.0:
        raise ValueError(f"{estimator}: eps={options['eps']} must be positive")
    if backend == "reference":
        if spec.reference is None:
            raise ValueError(f"estimator {estimator!r} has no reference implementation; "
                             f"use backend='torch' or 'triton'")
        advantages = spec.reference(batch, **options)
    else:
        ops = _ops(backend, batch.device)
        with torch.inference_mode():  # no autograd bookkeeping; the float32 copy below is an ordinary tensor
            advantages = spec.fn(batch, ops, **options)
    return advantages.to(torch.float32, copy=True)


def broadcast_to_tokens(advantages: Tensor, batch: TurnBatch, *, backend: Backend = "torch") -> Tensor:
    """[M] float32 per-token advantages: advantages[token_turn], 0 where loss_mask is off."""
    if batch.token_turn is None:
        raise ValueError("broadcast_to_tokens needs the batch's token fields (token_turn, loss_mask); they are None")
    if tuple(advantages.shape) != (batch.num_turns,):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({batch.num_turns},): one per turn")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {list(BACKENDS)}")
    if backend == "reference":
        from . import reference

        return reference.broadcast_to_tokens(advantages, batch)
    return _ops(backend, batch.device).gather_tokens(advantages, batch.token_turn, batch.loss_mask)


def _ops(backend: str, device: torch.device) -> Ops:
    if backend == "torch":
        return TORCH_OPS
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("backend='triton' needs the triton package (pip install 'envgym[kernels]'), "
                           "which is not installed; use backend='torch'")
    from .triton_kernels import triton_ops

    return triton_ops(device)
