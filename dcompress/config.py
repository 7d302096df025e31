"""Method configs: frozen dataclasses filled from defaults < YAML file < `--set key=value`.

Unknown keys and values that do not parse as the field's type are UsageErrors (exit 2)
naming the key; nothing overrides a user's value silently.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, tp: Any, origin: str) -> Any:
    """Converts `value` (YAML-parsed or string) to type `tp`; UsageError names key and origin."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a, origin)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(f"{origin}: bad value {value!r} for {key!r} (expected {tp})")
    if typing.get_origin(tp) is typing.Literal:
        if value in args:
            return value
        raise UsageError(f"{origin}: {key!r} must be one of {list(args)}, got {value!r}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if typing.get_origin(tp) is tuple:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return tuple(_coerce(key, v, args[0], origin) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{origin}: bad value {value!r} for {key!r} (expected {getattr(tp, '__name__', tp)})") from None
    return value


def parse_sets(sets: list[str]) -> dict[str, Any]:
    out = {}
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise UsageError(f"--set expects key=value, got {item!r}")
        out[k] = yaml.safe_load(v) if v.strip() else ""
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys at the top level")
    return data


def resolve_config(cls: type, *, file: str | Path | None = None, sets: list[str] = (),
                   base: dict | None = None) -> Any:
    """Builds `cls` from defaults, then `base` (programmatic), then the YAML file, then --set."""
    fields = _field_types(cls)
    values: dict[str, Any] = {}
    layers = [("arguments", base or {})]
    if file is not None:
        layers.append((str(file), load_yaml(file)))
    layers.append(("--set", parse_sets(list(sets))))
    for origin, layer in layers:
        for k, v in layer.items():
            if k not in fields:
                raise UsageError(f"{origin}: unknown config key {k!r} for {cls.__name__}; "
                                 f"valid keys: {', '.join(sorted(fields))}")
            values[k] = _coerce(k, v, fields[k], origin)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"invalid config for {cls.__name__}: {e}") from None


def config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
