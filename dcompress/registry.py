"""Method registry: an explicit dict from name to method class.

Adding a method = one module under `dcompress/methods/` with a class decorated by
`@register_method`, plus one import line in `dcompress/methods/__init__.py`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import UsageError


@dataclass(frozen=True)
class MethodInfo:
    """Every fact about a method besides its Config (printed by `dcompress methods`, kept in the
    catalog, read by the API before a run).

    Attributes:
        name: registry name used on the command line (`--method NAME`).
        kind: "selection" (returns real samples) or "synthesis" (optimises pixels).
        description: one line.
        needs_experts: True when the method consumes an expert-trajectory buffer.
        needs_teacher: True when the method itself needs a trained teacher network.
        extras: method-specific CLI inputs beyond its Config (`experts`: an expert buffer);
            giving one to another method is a usage error.
        needs_bn_teacher: the method matches the teacher's BatchNorm statistics (sre2l): the default
            teacher network is swapped for its BatchNorm variant.
        default_labels: what `--labels auto` writes for this method when it is not the usual rule
            (learned > teacher for selections > hard): `views` for RDED and SRe2L, whose students
            learn from a teacher's label of every view.
        distributed: the method splits its work over torchrun's ranks (docs/distributed.md);
            any other method refuses to run under torchrun.
        exact_form: the method optimises pixels and writes each image's exact float tensor (`.npy`)
            beside its PNG (`CompressedSet.synthetic`); False for selections and for RDED, whose
            stitched crops are 8-bit pixels. The budget estimate counts the `.npy` from it.
    """

    name: str
    kind: Literal["selection", "synthesis"]
    description: str
    needs_experts: bool = False
    needs_teacher: bool = False
    extras: tuple[str, ...] = ()
    needs_bn_teacher: bool = False
    distributed: bool = False
    default_labels: str = ""            # what `--labels auto` means for it when not the usual rule ("views")
    exact_form: bool = False            # writes the exact `.npy` beside the PNG (CompressedSet.synthetic)


_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: registers `cls` under `cls.info.name`."""
    name = cls.info.name
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method {name!r} registered twice")
    _METHODS[name] = cls
    return cls


def create_method(name: str, *, config_file=None, sets=(), other_keys: tuple[str, ...] = (), **flags):
    """The method registered as `name` and its Config, resolved by the one precedence rule:
    explicit flag (`flags`, None = unset) > `--set` > `--config` file > default; `other_keys`
    (run options) are left to the caller."""
    from .config import resolve_config

    cls = get_method(name)
    return cls, resolve_config(cls.Config, file=config_file, sets=list(sets), flags=flags, other_keys=other_keys)


def get_method(name: str) -> type:
    """Returns the method class registered as `name`; UsageError when unknown."""
    _load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        from .config import did_you_mean

        known = ", ".join(sorted(_METHODS))
        raise UsageError(f"unknown method {name!r}{did_you_mean(name, sorted(_METHODS))}; known methods: "
                         f"{known}") from None


def list_methods() -> list[type]:
    """All registered method classes, sorted by kind then name."""
    _load_builtin()
    return sorted(_METHODS.values(), key=lambda c: (c.info.kind, c.info.name))


CATALOG = Path(__file__).with_name("methods") / "catalog.json"


def build_catalog() -> list[dict]:
    """Every registered method's MethodInfo and options (config key -> default), from the classes
    themselves (imports the methods, hence torch). `tools/gen_method_catalog.py` writes it to
    CATALOG; `tests/unit/test_registry.py` fails when the file and the classes disagree."""
    from .config import field_help, field_types

    rows = []
    for cls in list_methods():
        facts = {k: _jsonable(v) for k, v in dataclasses.asdict(cls.info).items()}
        rows.append({**facts, "options": {f.name: _jsonable(f.default) for f in dataclasses.fields(cls.Config)},
                     "option_types": field_types(cls.Config), "option_help": field_help(cls.Config)})
    return rows


def catalog() -> list[dict]:
    """The method catalog without importing any method (no torch): `dcompress methods` answers
    from this in well under a second."""
    return json.loads(CATALOG.read_text())


def catalog_entry(name: str) -> dict:
    """One method's catalog row (torch-free); UsageError naming a near miss when unknown."""
    rows = {m["name"]: m for m in catalog()}
    if name not in rows:
        from .config import did_you_mean

        raise UsageError(f"unknown method {name!r}{did_you_mean(name, sorted(rows))}; known methods: "
                         f"{', '.join(sorted(rows))}")
    return rows[name]


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def _load_builtin() -> None:
    from . import methods  # noqa: F401  (import registers the built-in methods)
