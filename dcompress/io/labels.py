"""Raw labels (ints and class names) -> class indices, class names and where the names came from.

The class list, first found wins (`ClassAssignment.source` records which):

1. `option`: `DecodeOptions.class_names` (`--class-names FILE`);
2. `manifest`: the input manifest's `dcompress.class_names` (written by `dcompress shard`);
3. `classes.txt`: a `classes.txt` beside the shards, read automatically when every shard is a
   local file in one folder (one name per line, `decode.read_class_names`);
4. `labels`: string labels without a list: their sorted unique values (Python string order, so
   the mapping depends only on the set of names, not on the order the samples come in);
5. `indices`: integer labels without a list: "0".."C-1".

With a list, a string label maps to its position (not in the list: InputDataError, exit 4,
naming the sample key and the label) and an integer label indexes it (outside: exit 4).
Without a list, integer and string labels in one input are an InputDataError.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from ..errors import InputDataError
from .decode import DecodeOptions, read_class_names
from .urls import ResolvedInput, is_remote

CLASSES_TXT = "classes.txt"


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
