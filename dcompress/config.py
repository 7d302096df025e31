"""Method configs: frozen dataclasses filled from defaults < YAML file < `--set key=value`.

Unknown keys and values that do not parse as the field's type are UsageErrors (exit 2)
naming the key; nothing overrides a user's value silently.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UsageError


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _short(value: Any) -> str:
    """A bounded repr: a YAML alias bomb (9^9 shared items) must not be printed whole."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 4, 4, 60, 60
    return r.repr(value)


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
        raise UsageError(f"{origin}: bad value {_short(value)} for {key!r} (expected {tp})")
    if typing.get_origin(tp) is typing.Literal:
        if value in args:
            return value
        raise UsageError(f"{origin}: {key!r} must be one of {list(args)}, got {_short(value)}")
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
        raise UsageError(f"{origin}: bad value {_short(value)} for {key!r} (expected {getattr(tp, '__name__', tp)})") from None
    return value


# Configs that belong to no method, as messages name them (never by their Python class).
_LABELS = {"TeacherConfig": "the teacher (--teacher-set)", "ExpertConfig": "the experts",
           "FairConfig": "the fair protocol", "FullDataConfig": "the full-data network", "DSAConfig": "DSA"}


def config_label(cls: type) -> str:
    """How messages name a Config: `method dm` for a method's, else what it configures."""
    outer = cls.__qualname__.rpartition(".")[0]
    owner = getattr(sys.modules.get(cls.__module__), outer, None) if outer else None
    info = getattr(owner, "info", None)
    if info is not None and getattr(info, "name", None):
        return f"method {info.name}"
    return _LABELS.get(cls.__name__, cls.__name__.removesuffix("Config").lower() or "config")


def did_you_mean(name: str, known) -> str:
    """`; did you mean 'lr_img'?` for a near miss (case-insensitive first), else ''."""
    known = list(known)
    same = [k for k in known if k.lower() == str(name).lower()]
    close = same or difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def type_text(tp: Any) -> str:
    """A field's type as help shows it: int, float, bool, str, `real | noise`, `str | none`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(str(a) for a in args)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("none" if a is type(None) else type_text(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list of {type_text(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def field_help(cls: type) -> dict[str, str]:
    """Each key's meaning, from the Config's field comments (`bins: int = positive(10)  # text`)
    and its docstring (`key: text`, `a: text; b: text`, `a, b: text`, `` `a`/`b`: text``,
    continuation lines indented), the subclass's first, then its bases'."""
    import inspect
    import re

    names = {f.name for f in dataclasses.fields(cls)}
    found: dict[str, str] = {}

    def heads(text: str) -> list[str]:
        keys = [k.strip(" `'\"") for k in re.split(r"[,/]", text)]
        return keys if keys and all(k in names for k in keys) else []

    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            source = ""
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]+=[^#\n]*#\s*(.+)$", source, re.M):
            if m.group(1) in names:
                found.setdefault(m.group(1), m.group(2).strip())
        keys: list[str] = []
        for line in inspect.cleandoc(klass.__doc__ or "").splitlines():
            if keys and line.startswith(" ") and line.strip():
                for k in keys:
                    found[k] += " " + line.strip()
                continue
            keys = []
            for part in re.split(r"(?:(?<=[.)])|;)\s+(?=[`\w][\w`, /]*:\s)", line.strip()):
                head, sep, text = part.partition(":")
                if sep and heads(head) and text.strip():
                    keys = [k for k in heads(head) if k not in found]
                    for k in keys:
                        found[k] = text.strip()
                elif keys and part:
                    for k in keys:
                        found[k] += " " + part
    return found


def field_types(cls: type) -> dict[str, str]:
    return {k: type_text(v) for k, v in _field_types(cls).items()}


def parse_sets(sets: list[str]) -> dict[str, Any]:
    out = {}
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise UsageError(f"--set expects key=value, got {item!r}")
        try:
            out[k] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError as e:
            raise UsageError(f"--set {k}: value is not a plain YAML scalar ({str(e).splitlines()[0]})",
                             key=k) from None
    return out


MAX_CONFIG_BYTES = 1 << 20


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        if p.is_dir():
            raise UsageError("--config must be a YAML file, found a folder", path=str(p))
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UsageError("config file not found", path=str(p)) from None
    except OSError as e:
        raise UsageError(f"cannot read config file ({e.strerror or e})", path=str(p)) from None
    if len(raw) > MAX_CONFIG_BYTES or b"\0" in raw:
        raise UsageError("--config is not a YAML text file (binary or over 1 MiB)", path=str(p))
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError("--config is not UTF-8 text", path=str(p)) from None
    except yaml.YAMLError as e:
        raise UsageError(f"not valid YAML ({e})", path=str(p)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys at the top level")
    return data


def resolve_config(cls: type, *, file: str | Path | None = None, sets: list[str] = (),
                   base: dict | None = None, flags: dict | None = None, other_keys: tuple[str, ...] = ()) -> Any:
    """Builds `cls` with one precedence rule: an explicit command-line flag > `--set` > the YAML
    file > `base` (programmatic defaults) > the dataclass default. A flag left unset (None) never
    overrides anything. `other_keys` (a run's options, read by the caller) are skipped in the
    file and `--set` rather than refused."""
    fields = _field_types(cls)
    label = config_label(cls)
    values: dict[str, Any] = {}
    layers = [("arguments", base or {})]
    if file is not None:
        layers.append((str(file), load_yaml(file)))
    layers.append(("--set", parse_sets(list(sets))))
    layers.append(("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    for origin, layer in layers:
        for k, v in layer.items():
            if k not in fields and origin == "flags":
                raise UsageError(f"--{k.replace('_', '-')} does not apply to {label} (it has no {k!r})")
            if k not in fields and k in other_keys and origin != "arguments":
                continue
            if k not in fields:
                raise UsageError(f"{origin}: unknown config key {k!r} for {label}{did_you_mean(k, [*fields, *other_keys])}"
                                 f"; valid keys: {', '.join(sorted(fields)) or 'none'}"
                                 + (f" (and the run options {', '.join(other_keys)})" if other_keys else ""))
            values[k] = _coerce(k, v, fields[k], origin)
    try:
        cfg = cls(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"invalid config for {label}: {e}") from None
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# Ranges sit next to their fields: `lr_img: float = positive(0.1)` is a dataclass field whose
# metadata["check"] holds (predicate, text); `validate` reads it. A tuple field's rule applies to
# every element. A subclass that overrides a default replaces the whole field, so it must use the
# helper again (`syn_steps: int = positive(80)`). A numeric field without a check fails
# `tests/unit/test_config.py`, so a new field cannot slip through unchecked.

Check = tuple[Callable[[Any], bool], str]


def checked(default: Any, predicate: Callable[[Any], bool], text: str) -> Any:
    """A dataclass field with `default` whose values must satisfy `predicate` ("must be {text}")."""
    return dataclasses.field(default=default, metadata={"check": (predicate, text)})


def positive(default: Any) -> Any:
    return checked(default, lambda v: v > 0, "> 0")


def non_negative(default: Any, text: str = ">= 0") -> Any:
    return checked(default, lambda v: v >= 0, text)


def unit_open(default: Any) -> Any:
    """In [0, 1): momenta, Adam betas, a held-out fraction."""
    return checked(default, lambda v: 0 <= v < 1, "in [0, 1)")


def unit_interval(default: Any) -> Any:
    """In [0, 1]: weights of a convex combination."""
    return checked(default, lambda v: 0 <= v <= 1, "in [0, 1]")


def fraction(default: Any) -> Any:
    """In (0, 1]: a decay factor, a crop's scale, a share of the iterations."""
    return checked(default, lambda v: 0 < v <= 1, "in (0, 1]")


def field_check(f: dataclasses.Field) -> Check | None:
    return f.metadata.get("check")


class Validated:
    """Base of every Config dataclass: constructing one (from the CLI, YAML or Python) runs
    `validate`, so an out-of-range value never reaches a method."""

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: Any) -> None:
    """UsageError naming the key when a field is out of range, not finite, or the start-epoch
    window is inverted."""
    name = config_label(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{name}: {f.name!r} must be finite, got {v}", key=f.name)
        rule = field_check(f)
        if rule is not None and not rule[0](v):
            raise UsageError(f"{name}: {f.name!r} must be {rule[1]}, got {v}", key=f.name)
    for f in dataclasses.fields(cfg):          # tuple fields (fair lr_grid): the rule of each element
        items = getattr(cfg, f.name)
        rule = field_check(f)
        if not isinstance(items, tuple) or rule is None:
            continue
        for v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and rule[0](v)):
                raise UsageError(f"{name}: every {f.name!r} value must be finite and {rule[1]}, got {v}", key=f.name)
    model, strategy = getattr(cfg, "model", None), getattr(cfg, "dsa_strategy", None)
    if isinstance(model, str):
        from .nets import NetConfigError, check_name

        try:
            check_name(model.lower())
        except NetConfigError as e:
            raise UsageError(f"{name}: 'model': {e}", key="model") from None
    if isinstance(strategy, str):
        from .augment.dsa import parse_strategy

        try:
            parse_strategy(strategy)
        except ValueError as e:
            raise UsageError(f"{name}: {e}", key="dsa_strategy") from None
    lo, hi = getattr(cfg, "min_start_epoch", None), getattr(cfg, "max_start_epoch", None)
    if lo is not None and hi is not None and lo > hi:
        raise UsageError(f"{name}: min_start_epoch ({lo}) must be <= max_start_epoch ({hi})", key="min_start_epoch")


def config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
