"""Labels: a sample's label member -> a raw label; the input's raw labels -> class indices and names.

Per sample (in the decode workers), `sample_label` reads the raw label under `--label-key`
(`label_key_parts`): an int, or a class name (a string). Once the whole input is read,
`assign_classes` maps the raw labels to class indices with the class list, first found wins
(`ClassAssignment.source` records which):

1. `option`: `DecodeOptions.class_names` (`--class-names FILE`);
2. `manifest`: the input manifest's `dcompress.class_names` (written by `dcompress shard`);
3. `classes.txt`: a `classes.txt` beside the shards, read automatically when every shard is a
   local file in one folder (one name per line, `read_class_names`);
4. `labels`: string labels without a list: their sorted unique values (Python string order, so
   the mapping depends only on the set of names, not on the order the samples come in);
5. `indices`: integer labels without a list: "0".."C-1".

With a list, a string label maps to its position (not in the list: InputDataError, exit 4,
naming the sample key and the label) and an integer label indexes it (outside: exit 4).
Without a list, integer and string labels in one input are an InputDataError.

Torch is imported by `assign_classes` only, so the decode options and per-sample parsing stay
torch-free to import.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

from ..errors import InputDataError, UsageError
from ..limits import MAX_LABEL
from .codecs import parse_label
from .schema import _is_int
from .stream import BadSample
from .urls import ResolvedInput, is_remote

if TYPE_CHECKING:
    import torch

    from .decode import DecodeOptions

MAX_LABEL_CHARS = 256      # a longer string label is not a class name (a caption in the wrong key)
_MEMBER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
CLASSES_TXT = "classes.txt"


def label_key_parts(key: str) -> tuple[str, tuple[str, ...] | None]:
    """`--label-key` -> (member, JSON field path or None); UsageError when malformed."""
    if not isinstance(key, str) or not key:
        raise UsageError(f"--label-key must be a member name or json:<field>, got {key!r}")
    member, sep, path = key.partition(":")
    if not _MEMBER.match(member):
        raise UsageError(f"--label-key {key!r}: {member!r} is not a member name (letters, digits, '_', '-', '.')")
    if not sep:
        return member, None
    if not (member == "json" or member.endswith(".json")):
        raise UsageError(f"--label-key {key!r}: fields ('member:field') are read from a JSON member "
                         f"(json:<field>), not from .{member}")
    parts = tuple(path.split("."))
    if not path or not all(parts):
        raise UsageError(f"--label-key {key!r}: the field path must be <field> or <field>.<sub> (no empty parts)")
    return member, parts


def sample_label(sample: dict, key: str) -> int | str:
    """The raw label of `sample` under `key` (`DecodeOptions.label_key`): an int, or a class
    name (a stripped string) to be mapped to an index later. BadSample when the member or the
    field is missing or the value is no label.

    `cls`: an ASCII integer (nothing else). Another member (`txt`, ...): UTF-8 text, an integer
    when it reads as one, else a class name. `json:<field>[.<sub>]`: the member parsed with
    `json.loads` (never unpickled), the field walked through objects (and lists by index); an
    integer stays an int, a string is a class name (even "3": JSON says what it is).
    """
    member, path = label_key_parts(key)
    raw = sample.get(member)
    if raw is None:
        members = ", ".join(sorted(k for k in sample if not k.startswith("__")))
        raise BadSample(f"missing .{member} label (has: {members}; pick the label with --label-key)", "label_key")
    if path is None and member == "cls":
        try:
            return parse_label(raw)
        except ValueError as e:
            if str(e) == OUT_OF_RANGE:
                raise implausible_label(raw, key, sample) from None
            raise BadSample(f".{key} is {e} ({raw[:24]!r})", "label") from None
    if path is None:
        try:
            text = raw.decode("utf-8").strip() if isinstance(raw, bytes) else str(raw).strip()
        except UnicodeDecodeError:
            raise BadSample(f".{member} is not UTF-8 text ({raw[:24]!r})", "label") from None
        return _label_value(text, f".{member}", numeric_text=True, sample=sample, key=key)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise BadSample(f".{member} is not valid JSON ({type(e).__name__}: {str(e)[:80]})", "label") from None
    for i, part in enumerate(path):
        where = ".".join(path[:i + 1])
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            full = ".".join(path)
            raise BadSample(f"missing label field {full!r} in .{member}"
                            + (f" (no {where!r})" if where != full else ""), "label_key")
    return _label_value(value, f".{member} field {'.'.join(path)!r}", numeric_text=False, sample=sample, key=key)


OUT_OF_RANGE = "outside the int64 range"       # codecs.parse_label's words for a number beyond int64


def implausible_label(label, label_key: str, sample: dict) -> InputDataError:
    """The error for an integer label outside [0, MAX_LABEL) under `--label-key label_key`
    (exit 4, naming the shard and the sample key): one rule for every such label, whether it
    fits int64 or not. `label`: the int or the text it was read from."""
    where = label_key if ":" in label_key else f".{label_key}"
    text = label.decode("ascii", "replace").strip() if isinstance(label, bytes) else str(label).strip()
    negative = text.startswith("-")
    shown = text if len(text) <= 24 else f"{text[:24]}... ({len(text)} digits)"
    return InputDataError(f"{where} label {shown} is {'negative' if negative else 'implausibly large'}"
                          f" (labels must be class indices in [0, {MAX_LABEL}))",
                          path=sample.get("__url__"), key=sample.get("__key__"))


def _label_value(value, where: str, *, numeric_text: bool, sample: dict, key: str) -> int | str:
    """A parsed label value -> int or class name; BadSample for anything else."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise BadSample(f"{where} is empty", "label")
        if numeric_text:
            try:
                return parse_label(value)
            except ValueError as e:
                if str(e) == OUT_OF_RANGE:
                    raise implausible_label(value, key, sample) from None
                if str(e) != "not an integer":
                    raise BadSample(f"{where} is {e} ({value[:24]!r})", "label") from None
        if len(value) > MAX_LABEL_CHARS:
            raise BadSample(f"{where} is {len(value)} characters long, not a class name ({value[:24]!r}...)",
                            "label")
        return value
    if _is_int(value):
        if not -(2 ** 63) <= value < 2 ** 63:
            raise implausible_label(value, key, sample)
        return value
    kind = "a boolean" if isinstance(value, bool) else "null" if value is None else f"a {type(value).__name__}"
    raise BadSample(f"{where} is {kind} ({str(value)[:24]!r}), not an integer class index or a class name",
                    "label")


def class_names_problem(names) -> str | None:
    """Why `names` is no usable class list (empty, an empty or non-string name, a repeated
    name), or None."""
    if not names:
        return "the class list is empty"
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            return f"class {i} has an empty or non-string name ({n!r})"
        if n in seen:
            return f"class name {n!r} appears twice (classes {seen[n]} and {i})"
        seen[n] = i
    return None


def read_class_names(path, *, error=UsageError) -> tuple[str, ...]:
    """A class-names file (classes.txt): one name per line, in class-index order; surrounding
    whitespace is stripped, trailing empty lines ignored. An empty line in between, a repeated
    name, an empty or unreadable file raise `error` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error("class-names file is not UTF-8 text", path=str(path)) from None
    except OSError as e:
        raise error(f"cannot read class-names file: {e.strerror or e}", path=str(path)) from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, line in enumerate(lines):
        if not line:
            raise error(f"line {i + 1} is empty (one class name per line, in class-index order)", path=str(path))
    problem = class_names_problem(lines)
    if problem:
        raise error(problem, path=str(path))
    return tuple(lines)


class ClassAssignment(NamedTuple):
    """Class index per sample (int64), the class names, and the names' `source` (module doc)."""

    labels: torch.Tensor
    names: list[str]
    source: str


def assign_classes(raw: Sequence[int | str], keys: Sequence[str], inp: ResolvedInput,
                   opts: DecodeOptions | None = None) -> ClassAssignment:
    """Raw labels (one per kept sample, in order; ints or class names) -> ClassAssignment.

    `keys` name the samples in errors (with the shard when there is one, else the input as
    typed); `inp` supplies the input manifest and the shard folder
    (classes.txt); `opts.class_names` is the user's class list. InputDataError (exit 4) for a
    label outside the list, a negative label, integer labels implying more classes than there
    are samples, or integer and string labels mixed without a class list.
    """
    import torch

    names, source = _given_names(inp, opts)
    where = inp.urls[0] if len(inp.urls) == 1 else (inp.description or None)
    strings = [i for i, v in enumerate(raw) if isinstance(v, str)]
    if not strings:
        labels = torch.tensor(list(raw), dtype=torch.int64)
        _check_indices(labels, keys, names, source, where)
        return ClassAssignment(labels, names or [str(i) for i in range(int(labels.max()) + 1)],
                               source or "indices")
    if names is None:
        if len(strings) != len(raw):
            first_int = next(i for i, v in enumerate(raw) if not isinstance(v, str))
            raise InputDataError(f"labels mix integer indices (this one: {raw[first_int]}) and class names (key "
                                 f"{keys[strings[0]]!r}: {raw[strings[0]]!r}); give the class list with "
                                 "--class-names FILE so both map", path=where, key=keys[first_int])
        names, source = sorted(set(raw)), "labels"
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, v in enumerate(raw):
        if isinstance(v, str):
            c = index.get(v)
            if c is None:
                raise InputDataError(f"label {v!r} is not in the class list ({_describe(source)}, {len(names)} "
                                     f"classes: {_preview(names)})", path=where, key=keys[i])
            out.append(c)
        else:
            out.append(v)
    labels = torch.tensor(out, dtype=torch.int64)
    _check_indices(labels, keys, names, source, where)
    return ClassAssignment(labels, list(names), source)


def _given_names(inp: ResolvedInput, opts: DecodeOptions | None) -> tuple[list[str] | None, str | None]:
    if opts is not None and opts.class_names is not None:
        return list(opts.class_names), "option"
    names = (inp.manifest or {}).get("dcompress", {}).get("class_names")
    if names is not None:
        return list(names), "manifest"
    path = classes_txt_for(inp)
    if path is not None:
        return list(read_class_names(path, error=InputDataError)), CLASSES_TXT
    return None, None


def classes_txt_for(inp: ResolvedInput) -> Path | None:
    """The classes.txt read for `inp`: beside its shards when all are local files in one folder."""
    if not inp.urls or any(is_remote(u) for u in inp.urls):
        return None
    folders = {Path(u).parent for u in inp.urls}
    if len(folders) != 1:
        return None
    path = folders.pop() / CLASSES_TXT
    return path if path.is_file() else None


def _check_indices(labels: torch.Tensor, keys: Sequence[str], names: list[str] | None, source: str | None,
                   where: str | None) -> None:
    import torch

    if labels.min() < 0:
        i = int(torch.argmin(labels))
        raise InputDataError(f"negative label {int(labels[i])}", path=where, key=keys[i])
    if names is None:
        n = int(labels.max()) + 1
        if n > labels.numel():
            i = int(torch.argmax(labels))
            raise InputDataError(f"labels imply {n} classes but there are only {labels.numel()} samples; "
                                 "labels must be class indices 0..C-1 (or give the class list: an input manifest "
                                 "with class_names, a classes.txt beside the shards, or --class-names FILE)",
                                 path=where, key=keys[i])
        return
    bad = (labels >= len(names)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise InputDataError(f"label {int(labels[i])} outside the class list of {len(names)} classes "
                             f"({_describe(source)})", path=where, key=keys[i])


def _describe(source: str | None) -> str:
    return {"option": "given: --class-names, or the compressed set's for evaluate", "manifest": "in the input manifest",
            CLASSES_TXT: "from classes.txt beside the shards",
            "labels": "the sorted string labels"}.get(source or "", str(source))


def _preview(names: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (", ..." if len(names) > n else "")
