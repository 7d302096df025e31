"""The `dcompress` blocks of manifest.json as dataclasses: the schema (docs/format.md).

- `InputBlock`: the block of shards written by `dcompress shard` (kind "input").
- `CompressedBlock`: the block of a `distill` output (kind "compressed"), with the nested
  `MethodRecord`, `SourceRecord`, `BadSamplesRecord`, `LabelsRecord`, `Normalization`,
  `LearnedRecord`, `RunRecord` and `EvalProtocol` (also the method interface's: a set's
  evaluation recipe).

Each has `to_dict()` (the JSON written, keys in the order written) and `from_dict(obj, path)`,
which checks types and raises InputDataError naming the file and the key (`dcompress.<key>`).
Sections the readers rely on (class names, normalisation, image shape, labels, evaluation
protocol, learned lr) are checked field by field; provenance sections (method, source, run,
...) must be objects, their fields are taken as written. Keys that older versions did not
write (`run`, `files`, `timings`, ...) may be missing: they read as None and are not written back.

One module over ~400 lines on purpose: the whole manifest format, every record beside its
checks, reads in one place (docs/format.md is its prose twin).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InputDataError

FORMAT_VERSION = 1
LABELS_FORMAT = 2          # the newest labels format this version reads (io/viewlabels.py)


# ---------------------------------------------------------------------------------------------
# Checks shared by the from_dict readers


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _section(obj: dict, key: str, path, *, prefix: str = "dcompress.") -> dict | None:
    """`obj[key]` when it is an object, None when missing or null; else InputDataError."""
    v = obj.get(key)
    if v is not None and not isinstance(v, dict):
        raise InputDataError("must be an object", path=str(path), key=f"{prefix}{key}")
    return v


def _pick(d: dict | None, cls, **defaults):
    """`cls` built from the keys of `d` that are its fields (provenance: values as written)."""
    if d is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**defaults, **{k: v for k, v in d.items() if k in names}})


def _drop_none(d: dict, keys: tuple[str, ...]) -> dict:
    """`d` without those of `keys` whose value is None (keys older manifests may lack)."""
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


# ---------------------------------------------------------------------------------------------
# Input shards (`dcompress shard`)


@dataclass(frozen=True)
class InputSource:
    """Where `dcompress shard` read the images: the source `path` and its `format` (idx/folder)."""

    path: str | None = None
    format: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class InputBlock:
    """The `dcompress` block of input shards. Every key is optional when read (hand-written
    manifests often carry only `class_names`); `class_names` null = labels are the indices.
    `resize`: `{"size", "resize_mode", "channels", "bad_samples"}` when `shard --size` resized
    the images (re-encoded as PNG), else absent."""

    format_version: int = FORMAT_VERSION
    kind: str = "input"
    split: str | None = None
    num_samples: int | None = None
    class_names: tuple[str, ...] | None = None
    source: InputSource | None = None
    urls: str | None = None
    env: dict | None = None
    resize: dict | None = None

    def to_dict(self) -> dict:
        d = {"format_version": self.format_version, "kind": self.kind, "split": self.split,
             "num_samples": self.num_samples,
             "class_names": list(self.class_names) if self.class_names is not None else None,
             "source": self.source.to_dict() if self.source is not None else None, "urls": self.urls,
             "env": self.env, "resize": self.resize}
        return _drop_none(d, ("split", "num_samples", "source", "urls", "env", "resize"))

    @classmethod
    def from_dict(cls, block, path) -> InputBlock:
        if not isinstance(block, dict):
            raise InputDataError("must be an object", path=str(path), key="dcompress")
        names = _class_names(block, path, required=False)
        return cls(format_version=block.get("format_version", FORMAT_VERSION), kind=block.get("kind", "input"),
                   split=block.get("split"), num_samples=block.get("num_samples"), class_names=names,
                   source=_pick(_section(block, "source", path), InputSource), urls=block.get("urls"),
                   env=_section(block, "env", path), resize=_section(block, "resize", path))


def _class_names(block: dict, path, *, required: bool) -> tuple[str, ...] | None:
    names = block.get("class_names")
    if names is None and not required:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputDataError("must be a list of strings", path=str(path), key="dcompress.class_names")
    if required and not names:
        raise InputDataError("must be a non-empty list of strings", path=str(path), key="dcompress.class_names")
    return tuple(names)


# ---------------------------------------------------------------------------------------------
# Compressed sets (`distill`)


@dataclass(frozen=True)
class MethodRecord:
    """The method run: `config` is the fully resolved method config, `teacher_config` the
    teacher's (used when a teacher is trained here), `experts` the `--experts` buffer or None."""

    name: str | None = None
    kind: str | None = None
    ipc: int | None = None
    ratio: float | None = None
    seed: int | None = None
    device: str | None = None
    config: dict | None = None
    experts: str | None = None
    teacher_config: dict | None = None
    nets: dict | None = None

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self), ("nets",))


@dataclass(frozen=True)
class SourceRecord:
    """The input: absolute shard `urls`, `num_samples`, content `fingerprint`, `class_counts`;
    `decode`: how it was decoded (`io.decode.DecodeOptions.to_dict()` without the class names,
    which are `dcompress.class_names`), `class_source`: where the class names came from
    (`io.labels`: option, manifest, classes.txt, labels, indices); `store`: the decoded store it
    was read through (its folder in the cache). The accounting: `samples_expected` (the input
    manifest's nsamples per shard, else what the shard held), `samples_read` (samples the
    shards yielded, bad ones included; `num_samples` are those used), `shards`, and
    `damaged_shards` (skipped under `--max-bad`: {url, problem, expected, read, lost}). All None
    in older manifests."""

    urls: list[str] | None = None
    num_samples: int | None = None
    fingerprint: str | None = None
    class_counts: list[int] | None = None
    decode: dict | None = None
    class_source: str | None = None
    store: str | None = None
    shards: int | None = None
    samples_expected: int | None = None
    samples_read: int | None = None
    damaged_shards: list[dict] | None = None

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self), ("decode", "class_source", "store", "shards", "samples_expected",
                                                     "samples_read", "damaged_shards"))


@dataclass(frozen=True)
class BadSamplesRecord:
    """Input samples skipped as corrupt, each counted once: `count`, the count per cause
    (`causes`: image, label, label_key, member_name, stream, damaged_shard; None in older
    manifests) and up to 20 `examples`."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    causes: dict[str, int] | None = None

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self), ("causes",))


@dataclass(frozen=True)
class LabelsRecord:
    """Where the labels are (`hard` member, `soft` member) and what the soft ones are: `kind`
    hard (one-hot) / teacher / learned (one vector per image), views (E views per image, each
    with its teacher logits, `views.npy`) or online (no stored soft labels: the output's teacher
    labels each view); stored `dtype`, softmax `temperature`, `teacher` info, `views` (the view
    recipe, its seed and count E), `format` (1: one vector per image; 2: views / online)."""

    kind: str
    hard: str = "cls"
    soft: str | None = "logits.npy"
    dtype: str = "float16"
    temperature: float = 1.0
    teacher: dict | None = None
    topk: int | None = None          # `--label-topk K`: soft = "topk.npy" (K largest logits + indices)
    views: dict | None = None        # views/online: {"epochs", "seed", "config"}
    format: int = 1

    def to_dict(self) -> dict:
        d = {"hard": self.hard, "soft": self.soft, "kind": self.kind, "dtype": self.dtype,
             "temperature": self.temperature, "teacher": self.teacher}
        d = d if self.topk is None else {**d, "topk": self.topk}
        return d if self.format == 1 else {**d, "views": self.views, "format": self.format}


@dataclass(frozen=True)
class Normalization:
    """Per-channel `mean`, `std` in [0, 1] pixel units (std > 0)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class LearnedRecord:
    """What the method learned besides images: `lr` (MTT/DATM step size), `lrs` (DD per step)."""

    lr: float | None = None
    lrs: list[float] | None = None

    def to_dict(self) -> dict:
        return {"lr": self.lr, "lrs": self.lrs}


@dataclass(frozen=True)
class RunRecord:
    """What makes a rerun "the same run": `key` (hash of the run identity) and the `request`."""

    key: str | None = None
    request: dict | None = None

    def to_dict(self) -> dict:
        return {"key": self.key, "request": self.request}


_OPTIONAL = ("version", "method", "source", "bad_samples", "info", "run", "env", "timings", "num_samples",
             "extra_files", "urls", "files", "bytes", "image_format", "budget")
_REQUIRED = {"class_names": list, "normalization": dict, "labels": dict, "eval_protocol": dict,
             "image_shape": list}


@dataclass(frozen=True)
class EvalProtocol:
    """How `evaluate` trains a fresh network on a compressed set (methods.md §1.4).

    `epochs` counts like the reference (`Epoch + 1` passes, one x0.1 lr decay at
    `epochs // 2 + 1`). `lr` is replaced by the set's learned lr when `use_learned_lr`.
    `aug` is a DSA strategy string (per-sample parameters) or None.
    `soft_labels` trains with soft cross-entropy against softmax(logits / temperature).
    `kd`: knowledge distillation as RDED and SRe2L train their students: the student's logits are
    divided by the temperature too and the loss is scaled by temperature² (Hinton's scaling, so
    that SGD steps keep their size), one view of every image per pass (`views`/`online` labels).
    """

    name: str = "dc"
    model: str = "convnet"
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    aug: str | None = None
    soft_labels: bool = False
    temperature: float = 1.0
    use_learned_lr: bool = False
    kd: bool = False


@dataclass(frozen=True, kw_only=True)
class CompressedBlock:
    """The `dcompress` block of a compressed set (docs/format.md, "The dcompress block").

    `num_samples`, `extra_files`, `urls` and `files` are filled in by `io.output.finish_output`.
    Optional keys (`_OPTIONAL`) are None when an older manifest lacks them.
    """

    method: MethodRecord | None = None
    source: SourceRecord | None = None
    bad_samples: BadSamplesRecord | None = None
    class_names: tuple[str, ...]
    labels: LabelsRecord
    normalization: Normalization
    image_shape: tuple[int, int, int]
    exact_tensor: str | None = None
    learned: LearnedRecord = LearnedRecord()
    eval_protocol: EvalProtocol
    info: dict | None = None
    run: RunRecord | None = None
    env: dict | None = None
    timings: dict[str, float] | None = None
    num_samples: int | None = None
    extra_files: list[str] | None = None
    urls: str | None = None
    files: dict[str, str] | None = None
    bytes: dict[str, int] | None = None     # images, labels, other, container, shards, teacher, total
    image_format: str | None = None         # png | jpeg:Q | webp:Q (io/imageformat.py); None: png (older)
    budget: dict | None = None              # `--budget`: requested, bytes, ipc, estimated, achieved, fits
    format_version: int = FORMAT_VERSION
    version: str | None = None
    kind: str = "compressed"

    def to_dict(self) -> dict:
        sub = lambda r: r.to_dict() if r is not None else None  # noqa: E731
        d = {"format_version": self.format_version, "version": self.version, "kind": self.kind,
             "method": sub(self.method), "source": sub(self.source), "bad_samples": sub(self.bad_samples),
             "class_names": list(self.class_names), "labels": self.labels.to_dict(),
             "normalization": self.normalization.to_dict(), "image_shape": list(self.image_shape),
             "exact_tensor": self.exact_tensor, "learned": self.learned.to_dict(),
             "eval_protocol": dataclasses.asdict(self.eval_protocol), "info": self.info, "run": sub(self.run),
             "env": self.env, "timings": self.timings, "num_samples": self.num_samples,
             "extra_files": self.extra_files, "urls": self.urls, "files": self.files, "bytes": self.bytes,
             "image_format": self.image_format, "budget": self.budget}
        return _drop_none(d, _OPTIONAL)

    @classmethod
    def from_dict(cls, block, path) -> CompressedBlock:
        """The validated block; InputDataError naming `path` and the key `dcompress.<key>`."""
        if not isinstance(block, dict) or block.get("kind") != "compressed":
            raise InputDataError("not a dcompress compressed-set manifest", path=str(path), key="dcompress.kind")
        for key, tp in _REQUIRED.items():
            if key not in block:
                raise InputDataError("missing key", path=str(path), key=f"dcompress.{key}")
            if not isinstance(block[key], tp):
                raise InputDataError(f"must be a {tp.__name__}, found {type(block[key]).__name__}", path=str(path),
                                     key=f"dcompress.{key}")
        names = _class_names(block, path, required=True)
        norm = _normalization(block, path)
        labels = _labels(block["labels"], path)
        _check_protocol(block["eval_protocol"], path)
        learned = block.get("learned") or {}
        if not isinstance(learned, dict) or not (learned.get("lr") is None or _is_num(learned["lr"])):
            raise InputDataError("must be an object with a numeric lr", path=str(path), key="dcompress.learned")
        lrs = learned.get("lrs")
        if lrs is not None and (not isinstance(lrs, list) or not all(_is_num(x) for x in lrs)):
            raise InputDataError("must be a list of numbers", path=str(path), key="dcompress.learned.lrs")
        for key, tp in (("extra_files", list), ("urls", str), ("files", dict), ("timings", dict), ("info", dict),
                        ("env", dict), ("bytes", dict), ("image_format", str), ("budget", dict)):
            if block.get(key) is not None and not isinstance(block[key], tp):
                raise InputDataError(f"must be a {tp.__name__}, found {type(block[key]).__name__}", path=str(path),
                                     key=f"dcompress.{key}")
        if block.get("image_format") is not None:
            from .imageformat import ImageFormat

            try:
                ImageFormat.parse(block["image_format"])
            except Exception as e:  # noqa: BLE001 - UsageError: the manifest's value, not the user's
                raise InputDataError(f"not an image format this version reads ({e})", path=str(path),
                                     key="dcompress.image_format") from None
        n = block.get("num_samples")
        if n is not None and (not _is_int(n) or n < 0):
            raise InputDataError(f"must be a non-negative integer, found {n!r}", path=str(path),
                                 key="dcompress.num_samples")
        return cls(
            format_version=block.get("format_version", FORMAT_VERSION), version=block.get("version"),
            method=_pick(_section(block, "method", path), MethodRecord),
            source=_pick(_section(block, "source", path), SourceRecord),
            bad_samples=_pick(_section(block, "bad_samples", path), BadSamplesRecord),
            class_names=names, labels=labels, normalization=norm, image_shape=tuple(block["image_shape"]),
            exact_tensor=block.get("exact_tensor"), learned=LearnedRecord(lr=learned.get("lr"), lrs=lrs),
            eval_protocol=EvalProtocol(**block["eval_protocol"]), info=block.get("info"),
            run=_pick(_section(block, "run", path), RunRecord), env=block.get("env"), timings=block.get("timings"),
            num_samples=n, extra_files=block.get("extra_files"), urls=block.get("urls"), files=block.get("files"),
            bytes=block.get("bytes"), image_format=block.get("image_format"), budget=block.get("budget"))


def _normalization(block: dict, path) -> Normalization:
    norm, shape = block["normalization"], block["image_shape"]
    if not isinstance(norm.get("mean"), list) or not isinstance(norm.get("std"), list) \
            or len(norm["mean"]) != len(norm["std"]) or len(norm["mean"]) != (shape or [0])[0]:
        raise InputDataError(f"mean and std must each have one value per image channel (image_shape "
                             f"{shape})", path=str(path), key="dcompress.normalization")
    for k in ("mean", "std"):
        v = norm.get(k)
        if not isinstance(v, list) or not v or not all(_is_num(x) for x in v) \
                or (k == "std" and not all(x > 0 for x in v)):
            raise InputDataError("must be a list of numbers (std > 0)", path=str(path),
                                 key=f"dcompress.normalization.{k}")
    if len(shape) != 3 or not all(_is_int(x) and x > 0 for x in shape) or shape[0] != len(norm["mean"]):
        raise InputDataError(f"must be [C, H, W] matching the normalisation, found {shape!r}", path=str(path),
                             key="dcompress.image_shape")
    return Normalization(mean=tuple(norm["mean"]), std=tuple(norm["std"]))


def _labels(labels: dict, path) -> LabelsRecord:
    if not isinstance(labels.get("kind"), str):
        raise InputDataError("missing", path=str(path), key="dcompress.labels.kind")
    t = labels.get("temperature", 1.0)
    if not _is_num(t) or not t > 0:
        raise InputDataError(f"must be a positive number, found {t!r}", path=str(path),
                             key="dcompress.labels.temperature")
    teacher = labels.get("teacher")
    if teacher is not None and not isinstance(teacher, dict):
        raise InputDataError("must be an object", path=str(path), key="dcompress.labels.teacher")
    topk = labels.get("topk")
    if topk is not None and not (_is_int(topk) and topk >= 1):
        raise InputDataError(f"must be a positive integer, found {topk!r}", path=str(path), key="dcompress.labels.topk")
    fmt = labels.get("format", 1)
    if not (_is_int(fmt) and fmt >= 1):
        raise InputDataError(f"must be a positive integer, found {fmt!r}", path=str(path), key="dcompress.labels.format")
    if fmt > LABELS_FORMAT:
        raise InputDataError(f"labels format {fmt} is newer than this dcompress reads (up to {LABELS_FORMAT}): "
                             "upgrade dcompress to read this output", path=str(path), key="dcompress.labels.format")
    kind = labels["kind"]
    expected = {"views": "views.npy", "online": None}.get(kind, "logits.npy" if topk is None else "topk.npy")
    soft = labels.get("soft", "logits.npy")
    if kind == "hard" and soft is None and topk is None:
        expected = None                  # hard labels are `.cls` alone (older outputs also stored one-hot logits)
    if soft != expected:
        raise InputDataError(f"must be {expected!r} for {kind} labels{' with labels.topk' if topk else ''}, "
                             f"found {soft!r}", path=str(path), key="dcompress.labels.soft")
    if kind in ("views", "online"):
        views = labels.get("views")
        if not (isinstance(views, dict) and _is_int(views.get("epochs")) and views["epochs"] >= 1
                and _is_int(views.get("seed")) and isinstance(views.get("config"), dict)):
            raise InputDataError("must be an object with epochs >= 1, seed and config", path=str(path),
                                 key="dcompress.labels.views")
    return _pick(labels, LabelsRecord)


def _check_protocol(proto: dict, path) -> None:
    """Every field of the stored evaluation protocol known and of its declared type."""
    import typing

    hints = typing.get_type_hints(EvalProtocol)
    fields = {f.name for f in dataclasses.fields(EvalProtocol)}
    for k, v in proto.items():
        key = f"dcompress.eval_protocol.{k}"
        if k not in fields:
            raise InputDataError("unknown evaluation protocol field", path=str(path), key=key)
        allowed = typing.get_args(hints[k]) or (hints[k],)
        ok = any(v is None if a is type(None) else
                 _is_num(v) if a is float else
                 _is_int(v) if a is int else isinstance(v, a)
                 for a in allowed)
        if not ok:
            raise InputDataError(f"must be {' or '.join(getattr(a, '__name__', str(a)) for a in allowed)}, "
                                 f"found {v!r}", path=str(path), key=key)
