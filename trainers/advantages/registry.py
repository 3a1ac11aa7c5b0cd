"""The estimator registry and the two entry points: compute_advantages and broadcast_to_tokens."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
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
    """A registered estimator: `fn(batch, ops, **options)` and its optional plain-loop `reference(batch, **options)`.

    `presets` are named option sets that reproduce another codebase's conventions
    (e.g. gigpo's "verl-agent"); explicit options override a preset's. What it needs from
    the rollout, which a training config is checked against: `turn_reward`, the
    `turn_reward.kind` whose rewards it reads (None: none), and `branches`, whether it reads
    branch episodes (`rollout.branch`; an estimator that does not would count them as
    group members).
    """

    name: str
    fn: Callable[..., Tensor]
    reference: Callable[..., Tensor] | None
    defaults: dict[str, Any]
    choices: dict[str, tuple[Any, ...]]
    presets: dict[str, dict[str, Any]]
    turn_reward: str | None = None
    branches: bool = False

    def resolve(self, options: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
        """`options` on top of `preset`, checked: unknown names, values outside a Literal, gamma, eps.

        Raises ValueError naming the option, the value and what would be right.
        """
        if preset is not None and preset not in self.presets:
            valid = ", ".join(sorted(self.presets)) or "none"
            raise ValueError(f"unknown preset {preset!r} for estimator {self.name!r}; its presets: {valid}")
        resolved = {**(self.presets[preset] if preset else {}), **options}
        for key, value in resolved.items():
            if key not in self.defaults:
                close = difflib.get_close_matches(key, self.defaults, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown option {key!r} for estimator {self.name!r}; {hint}"
                                 f"valid options: {', '.join(sorted(self.defaults))}")
            if key in self.choices and value not in self.choices[key]:
                raise ValueError(f"{self.name}: {key}={value!r} is not one of {list(self.choices[key])}")
        for key, check, allowed in _NUMERIC_OPTIONS:
            if key in resolved and not (_is_number(resolved[key]) and check(resolved[key])):
                raise ValueError(f"{self.name}: {key}={resolved[key]!r} must be {allowed}")
        return resolved


ESTIMATORS: dict[str, Estimator] = {}

#: Numeric options shared by several estimators: (name, test, what the test allows).
_NUMERIC_OPTIONS = (
    ("gamma", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    ("eps", lambda v: v > 0.0, "a positive number"),
    ("omega", lambda v: v >= 0.0, "a number >= 0"),
    ("alpha", lambda v: v >= 0.0, "a number >= 0"),
    ("invalid_penalty", lambda v: v >= 0.0, "a number >= 0 (it is subtracted)"),
    ("similarity_threshold", lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def register_estimator(name: str, *, reference: Callable[..., Tensor] | None = None,
                       presets: dict[str, dict[str, Any]] | None = None, turn_reward: str | None = None,
                       branches: bool = False):
    """Decorator registering `fn(batch, ops, *, option=default, ...) -> [N] float64 advantages` as `name`.

    The keyword-only parameters are the estimator's options, each with a default; an
    option annotated `Literal[...]` accepts only those values. `ops` is the backend's
    `Ops` (build on its primitives to run on every backend). `reference`, a plain-loop
    `reference(batch, *, same options)`, serves backend="reference". `presets` name option
    sets (see `Estimator`); each is checked against the options here. `turn_reward` and
    `branches` say what the estimator needs from the rollout (see `Estimator`).
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
        ESTIMATORS[name] = estimator = Estimator(name, fn, reference, defaults, choices, dict(presets or {}),
                                                 turn_reward, branches)
        for preset in estimator.presets:
            estimator.resolve({}, preset)
        return fn

    return decorate


def _options(fn: Callable[..., Any]) -> dict[str, Any]:
    options = {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
    missing = [k for k, v in options.items() if v is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{fn.__qualname__}: every option needs a default, {missing} have none")
    return options


def lookup(estimator: str) -> Estimator:
    """The registered estimator `estimator`; ValueError naming the registered ones (and a close match) if none."""
    if estimator not in ESTIMATORS:
        close = difflib.get_close_matches(estimator, ESTIMATORS, n=1)
        raise ValueError(f"unknown estimator {estimator!r}; valid estimators: {sorted(ESTIMATORS)}"
                         f"{f'; did you mean {close[0]!r}?' if close else ''} (add one with register_estimator)")
    return ESTIMATORS[estimator]


def compute_advantages(batch: TurnBatch, estimator: str, *, backend: Backend = "torch", preset: str | None = None,
                       **options: Any) -> Tensor:
    """[N] float32 advantages, one per turn row, on the batch's device.

    `estimator` is a registered name (`ESTIMATORS`); `options` are that estimator's
    options (see its docstring), on top of the named `preset` if one is given.
    `backend`: "torch" (vectorised, default), "triton" (CUDA tensors, or CPU under
    TRITON_INTERPRET=1), "reference" (plain loops, tests only). Registered estimators
    run under torch.inference_mode().
    """
    spec = lookup(estimator)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {list(BACKENDS)}")
    options = spec.resolve(options, preset)
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


def check_estimator(estimator: str, options: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
    """The resolved options, after one run of the estimator on a tiny synthetic batch.

    The batch has every optional field (intrinsic rewards, invalid flags, state texts,
    tokens), so an option fails here exactly when it would fail on a real batch with
    those fields: a config is checked in milliseconds, before any model loads.
    Raises ValueError with the estimator's own reason.
    """
    resolved = lookup(estimator).resolve(options, preset)
    compute_advantages(_synthetic_batch(), estimator, **resolved)
    return resolved


def _synthetic_batch() -> TurnBatch:
    """Two groups of two two-turn episodes (the second of each a branch of the first), every optional field filled."""
    return TurnBatch.from_lists(group=[0, 0, 0, 0, 1, 1, 1, 1], episode=[0, 0, 1, 1, 2, 2, 3, 3],
                                parent=[-1, -1, 0, 0, -1, -1, 2, 2], branch_turn=[-1, -1, 1, 1, -1, -1, 0, 0],
                                reward=[0.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0], state=[1, 2, 1, 3, 1, 2, 1, 2],
                                intrinsic=[0.1, 0.0, -0.2, 0.0, 0.3, 0.0, 0.0, 0.0],
                                invalid=[False, False, True, False, False, False, False, True],
                                state_text=("a", "b", "a", "c", "a", "b", "a", "bb"),
                                token_turn=[0, 0, 1, 2, 3, 4, 5, 6, 7, 7], loss_mask=[False, True] * 5)


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
