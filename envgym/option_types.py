"""Option values read from YAML or the command line, checked against a type annotation and an allowed range.

`coerce(key, value, annotation)` returns `value` if it fits the annotation
(numbers written as strings, such as YAML's '3e-4', are read as floats) and
raises `ValueError` naming the key, the value and what would be right.
`Range(ge=1)`, `Range(gt=0, le=1)`: the interval a number must lie in, used in
`Annotated[...]` option fields (`check_ranges`, `option_range`) and in command-line argument types.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: `gt`/`ge` below, `lt`/`le` above (None: unbounded); NaN and inf never.

    `why`, when a bound is not obvious, is added to the error message.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    why: str = ""

    def __contains__(self, value: float) -> bool:
        return (math.isfinite(value) and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def describe(self) -> str:
        """'>= 1', '> 0', 'in (0, 1]' ..."""
        lower = (">", self.gt) if self.gt is not None else (">=", self.ge) if self.ge is not None else None
        upper = ("<", self.lt) if self.lt is not None else ("<=", self.le) if self.le is not None else None
        if lower and upper:
            return (f"in {'(' if lower[0] == '>' else '['}{_number(lower[1])}, "
                    f"{_number(upper[1])}{')' if upper[0] == '<' else ']'}")
        bound = lower or upper
        return f"{bound[0]} {_number(bound[1])}" if bound else "a finite number"

    def check(self, key: str, value: float) -> None:
        """Raise ValueError('KEY must be in (0, 1], got 5.0') unless `value` lies in the range."""
        if value not in self:
            raise ValueError(f"{key} must be {self.describe()}, got {value!r}" + (f" ({self.why})" if self.why else ""))

    def parser(self, kind: Callable[[str], float]) -> Callable[[str], float]:
        """An argparse `type=`: the text read with `kind` (int or float) and checked against the range."""
        import argparse

        def parse(text: str) -> float:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                                 f"got {text!r}") from None
            if value not in self:
                raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
            return value

        parse.__name__ = kind.__name__  # argparse names the type in its messages
        return parse


def option_range(cls: type, name: str) -> Range:
    """The `Range` in the annotation of field `name` of dataclass `cls` (KeyError if it has none)."""
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    allowed = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)]
    if not allowed:
        raise KeyError(f"{cls.__name__}.{name} has no Range")
    return allowed[0]


def check_ranges(options: Any, prefix: str = "") -> None:
    """ValueError('PREFIXKEY must be >= 1, got 0') unless every number of the dataclass tree `options` lies in the
    `Range` of its field's annotation (None always passes)."""
    hints = typing.get_type_hints(type(options), include_extras=True)
    for f in dataclasses.fields(options):
        key, value = f"{prefix}{f.name}", getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
            continue
        for allowed in getattr(hints[f.name], "__metadata__", ()):
            if isinstance(allowed, Range) and value is not None:
                allowed.check(key, value)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def type_name(tp: Any) -> str:
    """How an annotation reads in a message: 'int', "'map' | 'local'", 'int | None'."""
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any, *, other: Callable[[str, Any, Any], Any] | None = None) -> Any:
    """`value` checked against annotation `tp`; see the module docstring.

    Scalars, `X | None`, `Literal[...]`, `list[X]` and `dict` are checked here;
    any other annotation goes to `other(key, value, tp)` (e.g. a nested config
    dataclass), or raises TypeError without `other`.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Annotated:
        return coerce(key, value, args[0], other=other)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg, other=other)
            except ValueError:
                continue
        raise ValueError(f"{key} must be {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{key} must be one of {', '.join(repr(a) for a in args)}, got {value!r}{hint}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, args[0], other=other) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if other is not None:
        return other(key, value, tp)
    raise TypeError(f"unsupported option annotation {tp!r} for {key}")  # a bug in the caller, not in the input


def parse_key_value(item: str, *, form: str = "KEY=VALUE", example: str = "size=7") -> tuple[str, Any]:
    """`"size=7"` -> `("size", 7)`: the value read as YAML (a number, a bool, a list, a mapping, else a string).

    The one parser of KEY=VALUE arguments (env kwargs on the CLI, config overrides). Raises ValueError saying
    what was wrong: no `=` or no key (`form`, `example`: what would be right), or a value that is not YAML.
    """
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{item!r} must look like {form}, e.g. {example}")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"{item!r}: the value is not valid YAML ({yaml_problem(exc)})") from None


def yaml_problem(exc: Exception) -> str:
    """The YAML parser's one-line reason ('mapping values are not allowed here'), without its multi-line excerpt."""
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    return " ".join(p for p in (context, problem) if p) or str(exc).splitlines()[0]
