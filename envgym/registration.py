"""The env registry: `register`, `make`, `spec`, `list_envs`, and entry-point plugins.

Ids are versioned, `namespace/Name-vN`. Every id registered here is registered
with Gymnasium as well, so `gymnasium.make(id)` builds the same env (wrapped in
Gymnasium's own TimeLimit and checkers instead of envgym's wrappers).

Third-party packages register envs through the entry-point group `envgym.envs`:
each entry point is a zero-argument callable that calls `envgym.register`.
Plugins load lazily, on the first `make`, `spec` or `list_envs`; a plugin that
raises is reported in a warning that names it, and the others still load.

Adapter prefixes open whole families of envs from other packages: after
`register_prefix("gem", "envgym.envs.adapters.gem:GemEnv", argument="env_id", ...)`,
`make("gem:game:Sudoku-v0-easy")` builds `GemEnv(env_id="game:Sudoku-v0-easy")`.
The rest of the id after `PREFIX:` is the adapter's argument; the id resolves to
an `EnvSpec` like any registered one (so `spec`, `envgym check`, `EnvPool` and
the trainer take it), but `list_envs` lists registered ids only. Gymnasium reads
`"a:b"` as "import module a, make id b", so prefixed ids are not Gymnasium ids;
`gymnasium.make(envgym.make(id).unwrapped.spec)` builds one through Gymnasium.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
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
BUILT_IN_ENTRY_POINT = "envgym.envs:register"  # pyproject.toml's: the built-in families register like a plugin
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
            raise ValueError(f"entry_point of {self.id!r} must look like 'package.module:Name', "
                             f"got {self.entry_point!r}")
        return getattr(importlib.import_module(module_name), attr)


_registry: dict[str, EnvSpec] = {}
_plugins_loaded = False


@dataclass(frozen=True)
class AdapterPrefix:
    """A family of envs reached as ``PREFIX:NAME``: `entry_point` called with ``argument=NAME``.

    `requires` are the modules the adapter imports (checked before any import,
    so a missing one fails with the `extra` to install); `source` says in a few
    words where the envs come from (`envgym list --source` shows it).
    """

    prefix: str
    entry_point: str | Callable[..., Env]
    argument: str
    source: str
    extra: str | None = None
    requires: tuple[str, ...] = ()
    max_turns: int | None = None
    step_seconds: float | None = None
    description: str = ""
    example: str = ""

    def spec(self, id: str) -> EnvSpec:
        """The spec of the prefixed `id`; ValueError naming the extra when a required module is missing."""
        missing = [module for module in self.requires if importlib.util.find_spec(module) is None]
        if missing:
            install = f"pip install 'envgym[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            raise MissingExtra(f"{id!r} needs {', '.join(missing)} ({self.source}), which is not installed: {install}")
        name = id.partition(":")[2]
        if not name:
            raise KeyError(f"env id {id!r} names no env after {self.prefix + ':'!r}, e.g. {self.example!r}")
        return EnvSpec(id, self.entry_point, self.max_turns, {self.argument: name}, self.description,
                       self.step_seconds)


class MissingExtra(ImportError, ValueError):
    """An adapter's optional package is not installed; the message names the extra to install.

    A ValueError too, so the CLI and config checks report it in one line as a bad choice of env.
    """


_prefixes: dict[str, AdapterPrefix] = {}
#: The plugin ("plugin NAME (VALUE)") that registered each id it registered.
_plugin_of: dict[str, str] = {}
_registering_plugin: str | None = None


def register_prefix(
    prefix: str,
    entry_point: str | Callable[..., Env],
    *,
    argument: str,
    source: str,
    extra: str | None = None,
    requires: tuple[str, ...] = (),
    max_turns: int | None = None,
    step_seconds: float | None = None,
    description: str = "",
    example: str = "",
) -> AdapterPrefix:
    """Make ids ``PREFIX:NAME`` build ``entry_point(**{argument: NAME}, **kwargs)``.

    `entry_point` is ``"package.module:Factory"`` (imported only when such an env
    is made) or a callable returning an `envgym.Env`; it should raise ValueError
    for a NAME it does not know, naming some it does. `requires` lists the modules
    it needs, `extra` the envgym extra that installs them (``pip install
    'envgym[EXTRA]'``). `description` is one line on the family, `example` an id of it.
    Registering a prefix twice replaces the first with a warning.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", prefix):
        raise ValueError(f"adapter prefix {prefix!r} must be a word such as 'gem' (letters, digits, _ . -)")
    if prefix in _prefixes:
        warnings.warn(f"adapter prefix {prefix!r} was registered already; the new registration replaces it",
                      stacklevel=2)
    _prefixes[prefix] = AdapterPrefix(prefix, entry_point, argument, source, extra, tuple(requires), max_turns,
                                      step_seconds, description, example)
    return _prefixes[prefix]


#: Specs of prefixed ids whose prefix this process does not know, handed over by the process that resolved them.
_adopted: dict[str, EnvSpec] = {}


def adopt(spec_: EnvSpec) -> None:
    """Make `spec_` resolvable here: an id registered, or a prefix registered, only in another process
    (an `EnvPool` worker gets its owner's spec this way)."""
    if ":" in spec_.id:
        _adopted[spec_.id] = spec_
    else:
        register(**{f.name: getattr(spec_, f.name) for f in dataclasses.fields(spec_)})


def prefixes() -> dict[str, AdapterPrefix]:
    """The adapter prefixes known (built-in and from plugins), by prefix."""
    _load_plugins()
    return dict(sorted(_prefixes.items()))


def source_of(id: str) -> str:
    """Where env `id` comes from: "built-in", "plugin NAME (VALUE)", "adapter PREFIX: SOURCE", or
    "registered by MODULE" (a `register` call outside a plugin, e.g. in a script)."""
    spec_ = spec(id)
    if id not in _registry:
        prefix = id.partition(":")[0]
        return f"adapter {prefix}: " + (_prefixes[prefix].source if prefix in _prefixes else "known to another process")
    if id in _plugin_of:
        return _plugin_of[id]
    entry = spec_.entry_point
    module = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "?")
    return "built-in" if module.startswith("envgym.") else f"registered by {module}"


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
    if _registering_plugin is not None:
        _plugin_of[id] = _registering_plugin
    gymnasium.register(
        id=id,
        entry_point=entry_point,
        max_episode_steps=max_turns,
        kwargs=dict(kwargs or {}),
        disable_env_checker=True,
    )
    return spec_


def _load_plugins() -> None:
    """Call every `envgym.envs` entry point once: envgym's own (the built-in envs) first, then the plugins'."""
    global _plugins_loaded, _registering_plugin
    if _plugins_loaded:
        return
    _plugins_loaded = True
    entries = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.value != BUILT_IN_ENTRY_POINT)
    if not entries or entries[0].value != BUILT_IN_ENTRY_POINT:
        warnings.warn(f"envgym's built-in envs were not found: its entry point {BUILT_IN_ENTRY_POINT!r} in group "
                      f"{ENTRY_POINT_GROUP!r} is missing from the installed metadata; reinstall envgym "
                      "(pip install -e . in a checkout)", stacklevel=3)
    for entry in entries:
        _registering_plugin = None if entry.value == BUILT_IN_ENTRY_POINT else f"plugin {entry.name} ({entry.value})"
        try:
            entry.load()()
        except Exception as exc:  # a broken plugin must not break the others
            warnings.warn(
                f"envgym plugin {entry.name!r} ({entry.value}) failed to register: {type(exc).__name__}: {exc}",
                stacklevel=2,
            )
        finally:
            _registering_plugin = None


def list_envs() -> list[str]:
    """All registered ids, sorted."""
    _load_plugins()
    return sorted(_registry)


def spec(id: str) -> EnvSpec:
    """The spec of `id` (registered, or ``PREFIX:NAME`` of an adapter prefix).

    Raises KeyError naming the closest registered ids, or the known prefixes for
    an unknown ``PREFIX:``; MissingExtra (a ValueError) when an adapter's package
    is not installed.
    """
    _load_plugins()
    if id in _adopted:
        return _adopted[id]
    if id not in _registry and ":" in id:
        prefix = id.partition(":")[0]
        if prefix not in _prefixes:
            known = "; ".join(f"{p}: {a.source}" for p, a in sorted(_prefixes.items())) or "none"
            raise KeyError(f"unknown adapter prefix {prefix + ':'!r} in env id {id!r}; known prefixes: {known}")
        return _prefixes[prefix].spec(id)
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

    spec_ = spec(id)
    factory = spec_.load()
    env = factory(**_checked_kwargs(id, factory, {**spec_.kwargs, **kwargs}))
    if not isinstance(env, Env):
        raise TypeError(f"entry point of {id!r} returned {type(env).__name__}, which is not an envgym.Env")
    env.spec = _gymnasium_spec(spec_, {**spec_.kwargs, **kwargs})
    if wrap and spec_.max_turns is not None:
        env = TurnLimit(env, spec_.max_turns)
    return env


def _gymnasium_spec(spec_: EnvSpec, kwargs: dict[str, Any]) -> gymnasium.envs.registration.EnvSpec | None:
    """The Gymnasium spec of an env `make` built: the registered one, or one made for a prefixed id (None for
    an id outside Gymnasium's grammar, such as ``openenv:http://HOST:PORT``, which Gymnasium's tools would reject)."""
    if spec_.id in _registry:
        return dataclasses.replace(gymnasium.spec(spec_.id), kwargs=kwargs)
    try:
        gymnasium.envs.registration.parse_env_id(spec_.id)
    except gymnasium.error.Error:
        return None
    made = gymnasium.envs.registration.EnvSpec("adapter-v0", spec_.entry_point, max_episode_steps=spec_.max_turns,
                                               kwargs=kwargs, disable_env_checker=True)
    made.id, made.namespace, made.name, made.version = spec_.id, None, spec_.id, None  # not Gymnasium's id grammar
    return made


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
