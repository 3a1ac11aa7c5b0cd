"""The env registry: `register`, `make`, `spec`, `list_envs`, and entry-point plugins.

Ids are versioned, `namespace/Name-vN`. Every id registered here is registered
with Gymnasium as well, so `gymnasium.make(id)` builds the same env (wrapped in
Gymnasium's own TimeLimit and checkers instead of envgym's wrappers).

Third-party packages register envs through the entry-point group `envgym.envs`:
each entry point is a zero-argument callable that calls `envgym.register`.
Plugins load lazily, on the first `make`, `spec` or `list_envs`; a plugin that
raises is reported in a warning that names it, and the others still load.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import gymnasium

from envgym.core import Env
from envgym.option_types import coerce

ENTRY_POINT_GROUP = "envgym.envs"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+-v\d+$")


@dataclass(frozen=True)
class EnvSpec:
    """What `make` needs to build an env: where its class lives and how it is wrapped."""

    id: str
    entry_point: str | Callable[..., Env]
    max_turns: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    step_seconds: float | None = None

    def load(self) -> Callable[..., Env]:
        """The class or factory behind `entry_point` (`"package.module:Name"` or a callable)."""
        if callable(self.entry_point):
            return self.entry_point
        module_name, _, attr = self.entry_point.partition(":")
        if not attr:
            raise ValueError(f"entry_point of {self.id!r} must look like 'package.module:Name', got {self.entry_point!r}")
        return getattr(importlib.import_module(module_name), attr)


_registry: dict[str, EnvSpec] = {}
_plugins_loaded = False


def register(
    id: str,
    entry_point: str | Callable[..., Env],
    *,
    max_turns: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    description: str = "",
    step_seconds: float | None = None,
) -> EnvSpec:
    """Register an env under a versioned id such as ``"games/Maze-v0"``.

    `entry_point` is ``"package.module:ClassName"`` (imported only when the env
    is made) or a callable returning an `envgym.Env`. `max_turns` truncates
    episodes; `kwargs` are the constructor defaults that `make` may override.
    `step_seconds` is the typical time of one `step` where it is slow enough to
    matter (a sandboxed tool: ~0.1 s); `EnvPool(backend="auto")` steps such
    envs in worker processes. Registering an id twice replaces the first with
    a warning.
    """
    if not _ID_PATTERN.match(id):
        raise ValueError(f"env id {id!r} must look like 'namespace/Name-v0'")
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns of {id!r} must be >= 1, got {max_turns}")
    if step_seconds is not None and not step_seconds >= 0:
        raise ValueError(f"step_seconds of {id!r} must be >= 0 seconds, got {step_seconds}")
    if id in _registry:
        warnings.warn(f"env id {id!r} was registered already; the new registration replaces it", stacklevel=2)
        gymnasium.registry.pop(id, None)
    spec_ = EnvSpec(id, entry_point, max_turns, dict(kwargs or {}), description, step_seconds)
    _registry[id] = spec_
    gymnasium.register(
        id=id,
        entry_point=entry_point,
        max_episode_steps=max_turns,
        kwargs=dict(kwargs or {}),
        disable_env_checker=True,
    )
    return spec_


def _load_plugins() -> None:
    """Import the built-in families, then call every `envgym.envs` entry point once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    importlib.import_module("envgym.envs")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()()
        except Exception as exc:  # a broken plugin must not break the others
            warnings.warn(
                f"envgym plugin {entry.name!r} ({entry.value}) failed to register: {type(exc).__name__}: {exc}",
                stacklevel=2,
            )


def list_envs() -> list[str]:
    """All registered ids, sorted."""
    _load_plugins()
    return sorted(_registry)


def spec(id: str) -> EnvSpec:
    """The spec of `id`; raises KeyError naming the closest registered ids."""
    if id.startswith("openenv:"):  # OPENENV HOOK (issue 29): stand-in until the adapter-prefix registry merges
        from envgym.remote import openenv_spec

        return openenv_spec(id)
    _load_plugins()
    if id not in _registry:
        close = difflib.get_close_matches(id, _registry, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; `envgym list` shows them all"
        raise KeyError(f"unknown env id {id!r}{hint}")
    return _registry[id]


def make(id: str, *, wrap: bool = True, **kwargs: Any) -> gymnasium.Env:
    """Build env `id` with its registered kwargs overridden by `kwargs`.

    With `wrap=True` (the default) the env is wrapped in `TurnLimit(max_turns)`
    when the spec sets one. An unknown kwarg fails with TypeError, a value of
    the wrong type with ValueError, each naming the kwarg (see `_checked_kwargs`).
    """
    from envgym.wrappers import TurnLimit

    if id.startswith("openenv:"):  # OPENENV HOOK (issue 29): stand-in until the adapter-prefix registry merges
        from envgym.remote import make_openenv_env

        return make_openenv_env(id.removeprefix("openenv:"), **kwargs)
    spec_ = spec(id)
    factory = spec_.load()
    env = factory(**_checked_kwargs(id, factory, {**spec_.kwargs, **kwargs}))
    if not isinstance(env, Env):
        raise TypeError(f"entry point of {id!r} returned {type(env).__name__}, which is not an envgym.Env")
    env.spec = dataclasses.replace(gymnasium.spec(id), kwargs={**spec_.kwargs, **kwargs})
    if wrap and spec_.max_turns is not None:
        env = TurnLimit(env, spec_.max_turns)
    return env


def _checked_kwargs(id: str, factory: Callable[..., Env], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` checked against the signature and annotations of `factory` before it runs.

    A constructor handed `size="banana"` fails somewhere inside with an error
    that names neither the kwarg nor the env; this names both. Annotations this
    cannot read, and kwargs of a factory taking `**kwargs`, pass unchecked.
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a readable signature
        return kwargs
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations only mean no type check
        hints = {}
    names = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    checked = {}
    for name, value in kwargs.items():
        if name not in names and not open_ended:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"{id} takes no option {name!r}; {hint}its options: {', '.join(names) or 'none'}")
        try:
            checked[name] = value if name not in hints else coerce(name, value, hints[name], other=lambda k, v, t: v)
        except ValueError as exc:
            raise ValueError(f"{id}: {exc}") from None
    return checked
