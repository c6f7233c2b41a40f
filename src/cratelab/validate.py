"""The one validation style of every config section (config.py, interp/config.py, sae/config.py): a TOML table
becomes its dataclass with each value type-checked (section_from_dict, coerce), then the section's ``validate``
checks ranges and choices with require and choose. Each failure is a ConfigError naming the field
(``section.key``), which the CLI prints as one line."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from .errors import ConfigError
from .runtime import DEVICE_HELP, is_device_name

# The field metadata of a setting that says only where and how a run goes (device, threads, logging, caches), never
# what it computes: config.changed_settings lets a resumed run, sweep, interpret or SAE folder change it.
EXECUTION = {"execution": True}


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = dataclasses.MISSING,
            execution: bool = False, format: str = "") -> Any:
    """A config field with its one description (docs/config.md is written from it), marked EXECUTION when it says
    only where and how a run goes; ``format``: how a string field holding a list is written (coerce's type error)."""
    metadata = {"doc": doc, **(EXECUTION if execution else {}), **({"format": format} if format else {})}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def require(ok: bool, name: str, message: str) -> None:
    """The validators every config section uses: ``ok`` or a ConfigError naming the field."""
    if not ok:
        raise ConfigError(name, message)


def choose(value: str, choices: tuple[str, ...], name: str) -> None:
    require(value in choices, name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


def require_device(value: str, name: str) -> None:
    require(is_device_name(value), name, f"must be {DEVICE_HELP}, got {value!r}")


def coerce(value: Any, typ: Any, name: str, written_as: str = "") -> Any:
    """Check a TOML value against a field type; ints are accepted where floats are expected. written_as: how a
    string field that holds a list or a number is written (its field's metadata "format"), for a type error to say."""
    if dataclasses.is_dataclass(typ):  # a nested table such as [interp.records]
        return section_from_dict(typ, value, name)
    if typing.get_origin(typ) is list:
        if not isinstance(value, list):
            raise ConfigError(name, f"expected a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(typ)
        return [coerce(item, item_type, f"{name}[{i}]") for i, item in enumerate(value)]
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -2**63 <= value < 2**63:  # TOML integers are 64-bit; Python's are not
            raise ConfigError(name, f"{value} is out of the 64-bit integer range")
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:  # TOML has inf and nan, and integers too large for a float; no setting means any of them
            if not (abs(value) < 2**1023 if isinstance(value, int) else math.isfinite(value)):
                raise ConfigError(name, f"must be a finite number, got {value}")
            value = float(value)
    elif typ is str:
        ok = isinstance(value, str)
        # a list or a number where a string is expected (interp.layers = 3): say what to write instead
        parts = value if isinstance(value, list) else [value]
        if not ok and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in parts):
            written = ",".join(map(str, parts))
            raise ConfigError(name, f"expected a string{': ' + written_as if written_as else ''}, got {type(value).__name__} "
                                    f"{value!r}: write it in quotes, {name.rsplit('.', 1)[-1]} = \"{written}\"")
    else:  # pragma: no cover - every config field is one of the four types above
        raise TypeError(f"unsupported config type {typ!r} for {name}")
    if not ok:
        raise ConfigError(name, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def section_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build one config dataclass from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(prefix, f"must be a table, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(name, f"unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = coerce(value, hints[key], name, known[key].metadata.get("format", ""))
    return cls(**kwargs)
