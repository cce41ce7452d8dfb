"""Config dataclasses that read and write JSON dicts, with values coerced by field type.

:class:`JsonConfig` is the one ``to_dict``/``from_dict`` of every config dataclass (the crosscoder's
architecture, training, run options, the run config's data and buffer sections). Values are checked
against the field's annotation when the dataclass is built, from a dict or directly:

- ``int``: an integer, or a float or string of an integral value (``1e3``, ``"1000"`` -> 1000);
- ``float``: a number or a numeric string (``"3e-4"``);
- ``bool``: ``true``/``false`` only (``1`` is not a bool: a typo should not pass for one);
- ``str``: a string; ``list[X]`` / ``tuple[X, Y]``: a JSON list (a string is not a list of names);
- ``X | None``: ``null`` or an ``X``.

Anything else raises :class:`ConfigError` naming the field and what it wants; an unknown key in a
dict raises it listing the valid keys.
"""

from __future__ import annotations

import functools
import numbers
import types
import typing
from dataclasses import asdict, fields
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A config value or key that is not what the field wants (the message names both)."""


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def _scalar(hint, value):
    """``value`` as ``hint`` (int, float, bool, str); raise ValueError when it is not one."""
    if hint is bool or isinstance(value, bool):
        if hint is bool and isinstance(value, bool):
            return value
        raise ValueError
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if isinstance(value, str):
        value = float(value)
    if hint is int and isinstance(value, numbers.Integral):
        return int(value)
    if hint is int and isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    if hint is float and isinstance(value, numbers.Real):
        return float(value)
    raise ValueError


def coerce(hint, value):
    """``value`` converted to the annotation ``hint`` (rules in the module docstring); ValueError if not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(inner, value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError
        if origin is tuple:
            if len(value) != len(args):
                raise ValueError
            return tuple(coerce(a, v) for a, v in zip(args, value))
        return [coerce(args[0], v) for v in value]
    return _scalar(hint, value)


@functools.cache
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


class JsonConfig:
    """Mixin of a config dataclass: typed fields (call :meth:`_coerce_fields` first in
    ``__post_init__``), ``to_dict`` and ``from_dict``."""

    HINT: ClassVar[str] = ""
    """Appended to the unknown-key error (e.g. where a moved key went)."""

    def _coerce_fields(self) -> None:
        hints = _type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, coerce(hints[f.name], value))
            except (ValueError, TypeError):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be {_describe(hints[f.name])}, got "
                                  f"{value!r}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def check_keys(cls, d: dict, section: str | None = None) -> None:
        """Raise :class:`ConfigError` if ``d`` has a key that is not a field (``section``: how the
        run config calls this dict, for the message)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{section or cls.__name__} must be a JSON object of fields, got {d!r}")
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            what = f"{section} key(s)" if section else f"{cls.__name__} field(s)"
            raise ConfigError(f"unknown {what} {unknown}; valid: {', '.join(cls.field_names())}"
                              + (f" ({cls.HINT})" if cls.HINT else ""))

    @classmethod
    def from_dict(cls, d: dict, section: str | None = None):
        """The config of a JSON dict (unknown keys and mistyped values name the field)."""
        cls.check_keys(d, section)
        try:
            return cls(**d)
        except TypeError as err:  # a required field is missing
            raise ConfigError(f"{section or cls.__name__}: {err}") from None
