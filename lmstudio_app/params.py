"""Parameter dataclasses: one source of truth for GUI forms, TOML validation and ``--set``.

A plugin (or the core) declares its parameters as a dataclass whose fields are made with
:func:`param`. The metadata (range, step, choices, help) drives the generated GUI form, the
config validation and the command line overrides, so no plugin writes GUI code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .errors import ParamError, cut, shown

_META_KEY = "lmstudio"


def param(
    default: Any,
    *,
    help: str = "",
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    choices: Sequence[Any] | None = None,
    label: str | None = None,
    log_scale: bool = False,
) -> Any:
    """A dataclass field with the metadata the forms and validators read.

    ``min``/``max`` are inclusive. ``log_scale`` hints that a slider should be logarithmic
    (learning rates). Mutable defaults (lists) are copied per instance.
    """
    meta = {
        _META_KEY: {
            "help": help,
            "min": min,
            "max": max,
            "step": step,
            "choices": tuple(choices) if choices is not None else None,
            "label": label,
            "log_scale": log_scale,
        }
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    """Everything a form or validator needs to know about one parameter."""

    name: str
    type: type  # int, float, bool, str or list (of str)
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    label: str | None = None
    log_scale: bool = False
    optional: bool = False  # the annotation admits None
    required: bool = False  # the dataclass gives no default: a config must set it

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()


def _resolve_type(annotation: Any) -> tuple[type, bool]:
    """Map an annotation to (base type, optional?)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base, _ = _resolve_type(args[0])
        return base, True
    if origin in (list, tuple, Sequence):
        return list, False
    if annotation in (int, float, bool, str, list):
        return annotation, False
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    return str, False


def param_infos(cls: type) -> list[ParamInfo]:
    """The parameters of a params dataclass, in declaration order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # a plugin's annotation naming something that does not exist
        raise ParamError(f"{cls.__qualname__}: cannot read the params' type annotations "
                         f"({type(exc).__name__}: {cut(str(exc))})") from None
    infos = []
    for f in dataclasses.fields(cls):
        base, optional = _resolve_type(hints.get(f.name, str))
        meta = dict(f.metadata.get(_META_KEY, {}))
        required = False
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default, required = None, True
        infos.append(ParamInfo(name=f.name, type=base, default=default, optional=optional, required=required,
                               **meta))
    return infos


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ParamError(f"{key}: expected true or false, got {shown(value)}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):  # bool is an int subclass: True is not 1 here
        raise ParamError(f"{key}: expected an integer, got {shown(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip().replace("_", ""))
        except ValueError:
            raise ParamError(f"{key}: expected an integer, got {shown(value)}") from None
    if not isinstance(value, int):
        raise ParamError(f"{key}: expected an integer, got {shown(value)}")
    return value


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ParamError(f"{key}: expected a number, got {shown(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParamError(f"{key}: expected a number, got {shown(value)}") from None
    if not isinstance(value, (int, float)):
        raise ParamError(f"{key}: expected a number, got {shown(value)}")
    try:
        out = float(value)
    except OverflowError:  # an integer of hundreds of digits: beyond any float
        raise ParamError(f"{key}: {shown(value)} is too large for a number (at most about 1.8e308)") from None
    if not math.isfinite(out):
        raise ParamError(f"{key}: expected a finite number, got {shown(value)}")
    return out


def _to_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):  # "a, b" from a form or --set
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ParamError(f"{key}: expected a list of strings, got {shown(value)}")
    return list(value)


def _to_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ParamError(f"{key}: expected text, got {shown(value)}")
    return value


# How a raw value (from TOML, a form or --set) becomes each ParamInfo.type.
_CONVERTERS: dict[type, Callable[[Any, str], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, list: _to_list, str: _to_str,
}


def coerce(info: ParamInfo, value: Any, where: str = "") -> Any:
    """Check and convert one value; raise :class:`ParamError` naming the key on failure."""
    key = f"{where}.{info.name}" if where else info.name
    if value is None:
        if info.optional:
            return None
        raise ParamError(f"{key}: a value is required")
    out = _CONVERTERS.get(info.type, _to_str)(value, key)
    if info.choices is not None and out not in info.choices:
        allowed = ", ".join(repr(c) for c in info.choices)
        raise ParamError(f"{key}: {shown(out)} is not one of {allowed}")
    if info.type in (int, float):
        if info.min is not None and out < info.min:
            raise ParamError(f"{key}: {shown(out)} is below the minimum {info.min:g}")
        if info.max is not None and out > info.max:
            raise ParamError(f"{key}: {shown(out)} is above the maximum {info.max:g}")
    return out


def build_params(cls: type, values: Mapping[str, Any] | None = None, where: str = "") -> Any:
    """Build a params instance from a mapping; unknown keys and bad values name the key."""
    values = dict(values or {})
    infos = {i.name: i for i in param_infos(cls)}
    unknown = sorted(set(values) - set(infos))
    if unknown:
        prefix = f"{where}." if where else ""
        known = ", ".join(infos) or "none"
        raise ParamError(f"{prefix}{cut(str(unknown[0]))}: unknown key (known keys: {known})")
    kwargs = {name: coerce(info, values[name], where) for name, info in infos.items() if name in values}
    missing = [name for name, info in infos.items() if info.required and name not in values]
    if missing:  # cls(**kwargs) would raise a bare TypeError
        prefix = f"{where}." if where else ""
        raise ParamError(f"{prefix}{missing[0]}: a value is required ({cls.__qualname__} gives it no default)")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)  # cross-field rules, e.g. width divisible by heads
    if callable(check):
        try:
            check()
        except ParamError:
            raise
        except ValueError as exc:
            raise ParamError(f"{where}: {exc}" if where else str(exc)) from None
    return obj


def params_to_dict(obj: Any) -> dict[str, Any]:
    """Plain dict of a params instance (for TOML/JSON); None values are dropped (TOML has no null)."""
    return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None}
