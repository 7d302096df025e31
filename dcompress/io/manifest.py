"""`manifest.json`: a wids shard index plus a `dcompress` provenance block, as dataclasses.

The dataclasses here are the schema (docs/format.md, docs/experts-format.md point at them):

- `ShardRow`: one wids `shardlist` row.
- `InputBlock`: the `dcompress` block of shards written by `dcompress shard` (kind "input").
- `CompressedBlock`: the `dcompress` block of a `distill` output (kind "compressed"), with the
  nested `MethodRecord`, `SourceRecord`, `BadSamplesRecord`, `LabelsRecord`, `Normalization`,
  `LearnedRecord`, `RunRecord` and the core `EvalProtocol`.
- `ExpertsManifest`: an expert buffer's `manifest.json` (its own format, no wids part).

Each has `to_dict()` (the JSON written, keys in the order written) and `from_dict(obj, path)`,
which checks types and raises InputDataError naming the file and the key (`dcompress.<key>`).
Sections the readers rely on (class names, normalisation, image shape, labels, evaluation
protocol, learned lr) are checked field by field; provenance sections (method, source, run,
...) must be objects, their fields are taken as written. Keys that older versions did not
write (`run`, `files`, `timings`, ...) may be missing: they read as None and are not written
back. The wids part (`__kind__`, `wids_version`, `shardlist`) is read by `wids.ShardListDataset`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputDataError, VerifyError

if TYPE_CHECKING:  # core imports torch; `verify` must not need it
    from ..core import EvalProtocol

MANIFEST = "manifest.json"
WIDS_KIND = "wids-shard-index-v1"
FORMAT_VERSION = 1
EXPERTS_FORMAT = "dcompress-experts"
EXPERTS_FORMAT_VERSION = 1


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
# The wids part


@dataclass(frozen=True)
class ShardRow:
    """One `shardlist` row; `url` is relative to the manifest's folder. Sizes in bytes."""

    url: str
    nsamples: int | None = None
    filesize: int | None = None
    md5sum: str | None = None

    @classmethod
    def of_file(cls, path: Path, nsamples: int) -> ShardRow:
        """The row of a shard just written at `path` holding `nsamples` samples."""
        return cls(url=path.name, nsamples=int(nsamples), filesize=path.stat().st_size, md5sum=md5_file(path))

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, row, path, index: int) -> ShardRow:
        where = f"shardlist[{index}]"
        if not isinstance(row, dict):
            raise InputDataError("shard row must be an object", path=str(path), key=where)
        if not isinstance(row.get("url"), str) or not row["url"]:
            raise InputDataError("shard row needs a non-empty string 'url'", path=str(path), key=f"{where}.url")
        for k in ("nsamples", "filesize"):
            if k in row and (not _is_int(row[k]) or row[k] < 0):
                raise InputDataError(f"must be a non-negative integer, found {row[k]!r}", path=str(path),
                                     key=f"{where}.{k}")
        if "md5sum" in row and not isinstance(row["md5sum"], str):
            raise InputDataError("must be a string", path=str(path), key=f"{where}.md5sum")
        return cls(url=row["url"], nsamples=row.get("nsamples"), filesize=row.get("filesize"),
                   md5sum=row.get("md5sum"))


def shard_entry(path: Path, nsamples: int) -> ShardRow:
    """One `shardlist` row for a shard just written (see ShardRow.of_file)."""
    return ShardRow.of_file(path, nsamples)


def build_manifest(name: str, shards: list[ShardRow], block: InputBlock | CompressedBlock) -> dict:
    """The manifest.json object: wids shard index + `dcompress` block."""
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": [r.to_dict() for r in shards],
            "dcompress": block.to_dict()}


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
    manifests often carry only `class_names`); `class_names` null = labels are the indices."""

    format_version: int = FORMAT_VERSION
    kind: str = "input"
    split: str | None = None
    num_samples: int | None = None
    class_names: tuple[str, ...] | None = None
    source: InputSource | None = None
    urls: str | None = None
    env: dict | None = None

    def to_dict(self) -> dict:
        d = {"format_version": self.format_version, "kind": self.kind, "split": self.split,
             "num_samples": self.num_samples,
             "class_names": list(self.class_names) if self.class_names is not None else None,
             "source": self.source.to_dict() if self.source is not None else None, "urls": self.urls,
             "env": self.env}
        return _drop_none(d, ("split", "num_samples", "source", "urls", "env"))

    @classmethod
    def from_dict(cls, block, path) -> InputBlock:
        if not isinstance(block, dict):
            raise InputDataError("must be an object", path=str(path), key="dcompress")
        names = _class_names(block, path, required=False)
        return cls(format_version=block.get("format_version", FORMAT_VERSION), kind=block.get("kind", "input"),
                   split=block.get("split"), num_samples=block.get("num_samples"), class_names=names,
                   source=_pick(_section(block, "source", path), InputSource), urls=block.get("urls"),
                   env=_section(block, "env", path))


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SourceRecord:
    """The input: absolute shard `urls`, `num_samples`, content `fingerprint`, `class_counts`."""

    urls: list[str] | None = None
    num_samples: int | None = None
    fingerprint: str | None = None
    class_counts: list[int] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BadSamplesRecord:
    """Input samples skipped as corrupt: `count` and up to 20 `examples`."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LabelsRecord:
    """Where the labels are (`hard` member, `soft` member) and what the soft ones are: `kind`
    hard (one-hot) / teacher / learned, stored `dtype`, softmax `temperature`, `teacher` info."""

    kind: str
    hard: str = "cls"
    soft: str = "logits.npy"
    dtype: str = "float16"
    temperature: float = 1.0
    teacher: dict | None = None

    def to_dict(self) -> dict:
        return {"hard": self.hard, "soft": self.soft, "kind": self.kind, "dtype": self.dtype,
                "temperature": self.temperature, "teacher": self.teacher}


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
             "extra_files", "urls", "files")
_REQUIRED = {"class_names": list, "normalization": dict, "labels": dict, "eval_protocol": dict,
             "image_shape": list}


@dataclass(frozen=True, kw_only=True)
class CompressedBlock:
    """The `dcompress` block of a compressed set (docs/format.md, "The dcompress block").

    `num_samples`, `extra_files`, `urls` and `files` are filled in by `io.output.write_output`.
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
             "extra_files": self.extra_files, "urls": self.urls, "files": self.files}
        return _drop_none(d, _OPTIONAL)

    @classmethod
    def from_dict(cls, block, path) -> CompressedBlock:
        """The validated block; InputDataError naming `path` and the key `dcompress.<key>`."""
        from ..core import EvalProtocol

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
                        ("env", dict)):
            if block.get(key) is not None and not isinstance(block[key], tp):
                raise InputDataError(f"must be a {tp.__name__}, found {type(block[key]).__name__}", path=str(path),
                                     key=f"dcompress.{key}")
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
            num_samples=n, extra_files=block.get("extra_files"), urls=block.get("urls"), files=block.get("files"))


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
    return _pick(labels, LabelsRecord)


def _check_protocol(proto: dict, path) -> None:
    """Every field of the stored evaluation protocol known and of its declared type."""
    import typing

    from ..core import EvalProtocol

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


# ---------------------------------------------------------------------------------------------
# Expert buffers (`dcompress experts`, format: docs/experts-format.md)


@dataclass(frozen=True)
class NetworkRecord:
    """The experts' network: `build_net` `name`, `channels`, `num_classes`, `im_size` [H, W], P."""

    name: str | None = None
    channels: int | None = None
    num_classes: int | None = None
    im_size: list[int] | None = None
    param_count: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExpertsInput:
    """The input the experts trained on (`fingerprint` = the input's `source.fingerprint`)."""

    fingerprint: str | None = None
    urls: list[str] | None = None
    num_samples: int | None = None
    class_names: list[str] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SplitRecord:
    """The held-out split: `holdout` fraction, sample counts, `test_fingerprint` of `--test`."""

    holdout: float | None = None
    train_samples: int | None = None
    heldout_samples: int | None = None
    test_fingerprint: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SNAPSHOTS = {"file": "expert-{id:05d}.npy", "dtype": "float32 little-endian", "shape": ["epochs + 1", "param_count"]}


@dataclass(frozen=True, kw_only=True)
class ExpertsManifest:
    """An expert buffer's manifest.json. `network`, `input`, `normalization`, `training` (the
    resolved ExpertConfig without holdout/eval_max) and `split` are the buffer's header: they
    decide `identity`; `experts` lists the complete ids at the last write (the sidecars are the
    source of truth), `updated` is that write's unix time."""

    network: NetworkRecord
    input: ExpertsInput
    normalization: Normalization
    training: dict
    split: SplitRecord
    format: str = EXPERTS_FORMAT
    format_version: int = EXPERTS_FORMAT_VERSION
    version: str | None = None
    identity: str | None = None
    snapshots: dict = field(default_factory=lambda: dict(SNAPSHOTS))
    experts: list[int] = field(default_factory=list)
    updated: float | None = None

    @property
    def epochs(self) -> int:
        """E: every expert has E + 1 snapshots."""
        return int(self.training["epochs"])

    def header(self) -> dict:
        """The sections that make the buffer's identity, as written."""
        return {"network": self.network.to_dict(), "input": self.input.to_dict(),
                "normalization": self.normalization.to_dict(), "training": dict(self.training),
                "split": self.split.to_dict()}

    def compute_identity(self) -> str:
        """Hash of network + normalisation + training + input fingerprint + split (holdout, train size)."""
        h = self.header()
        keep = {k: h[k] for k in ("network", "normalization", "training")}
        keep["input"] = self.input.fingerprint
        keep["split"] = {k: h["split"][k] for k in ("holdout", "train_samples")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"format": self.format, "format_version": self.format_version, "version": self.version,
                "identity": self.identity, **self.header(), "snapshots": self.snapshots,
                "experts": list(self.experts), "updated": self.updated}

    @classmethod
    def from_dict(cls, obj, path) -> ExpertsManifest:
        """The validated manifest of the buffer at `path` (its manifest.json); InputDataError
        naming the key when the format is foreign or newer, or network/training unusable."""
        if not isinstance(obj, dict) or obj.get("format") != EXPERTS_FORMAT:
            raise InputDataError(f"manifest.json is not a {EXPERTS_FORMAT} manifest", path=str(path), key="format")
        version = obj.get("format_version", 0)
        if not _is_int(version):
            raise InputDataError(f"must be an integer, found {version!r}", path=str(path), key="format_version")
        if version > EXPERTS_FORMAT_VERSION:
            raise InputDataError(f"buffer format {version} is newer than this dcompress ({EXPERTS_FORMAT_VERSION})",
                                 path=str(path), key="format_version")
        try:
            net, training = obj["network"], obj["training"]
            network = NetworkRecord(**{**{k: net.get(k) for k in ("name", "channels", "num_classes", "im_size")},
                                       "param_count": int(net["param_count"])})
            training = {**training, "epochs": int(training["epochs"])}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputDataError(f"manifest.json lacks a valid network/training entry ({e!r})",
                                 path=str(path)) from None
        norm = _section(obj, "normalization", path, prefix="") or {}
        return cls(network=network, input=_pick(_section(obj, "input", path, prefix="") or {}, ExpertsInput),
                   normalization=Normalization(mean=tuple(norm.get("mean") or ()), std=tuple(norm.get("std") or ())),
                   training=training, split=_pick(_section(obj, "split", path, prefix="") or {}, SplitRecord),
                   format_version=version, version=obj.get("version"), identity=obj.get("identity"),
                   snapshots=obj.get("snapshots") or dict(SNAPSHOTS), experts=[i for i in obj["experts"] if _is_int(i)]
                   if isinstance(obj.get("experts"), list) else [],
                   updated=obj.get("updated"))


# ---------------------------------------------------------------------------------------------
# Reading


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputDataError("no manifest.json here (not a dcompress output?)", path=str(path)) from None
    except IsADirectoryError:
        raise InputDataError("manifest path is a folder", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputDataError(f"not valid JSON ({e})", path=str(path)) from None
    except RecursionError:
        raise InputDataError("JSON nested too deeply", path=str(path)) from None
    except OSError as e:
        raise InputDataError(f"cannot read manifest ({e.strerror or e})", path=str(path)) from None
    if not isinstance(obj, dict):
        raise InputDataError(f"expected a JSON object, found {type(obj).__name__}", path=str(path))
    return obj


def manifest_path(path: str | Path) -> Path:
    """`path` itself, or `path/manifest.json` when `path` is a folder."""
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def read_manifest(path: str | Path) -> dict:
    """Reads and checks a manifest's structure; InputDataError (exit 4) names the file and key.

    Checks the wids part (`__kind__`, `shardlist` rows: see ShardRow.from_dict) and, when
    present, the `dcompress` block's `class_names` (the part common to input and compressed
    manifests). Row urls are not resolved here: `shard_paths` does that, refusing unsafe ones.
    Returns the parsed JSON object; `read_compressed` and `read_input` give the typed view.
    """
    path = manifest_path(path)
    obj = _load_json(path)
    for key in ("__kind__", "shardlist"):
        if key not in obj:
            raise InputDataError("missing key in manifest", path=str(path), key=key)
    if obj["__kind__"] != WIDS_KIND:
        raise InputDataError(f"unexpected __kind__ {obj['__kind__']!r}", path=str(path), key="__kind__")
    rows = obj["shardlist"]
    if not isinstance(rows, list):
        raise InputDataError(f"must be a list of shard rows, found {type(rows).__name__}", path=str(path),
                             key="shardlist")
    if not rows:
        raise InputDataError("lists no shards", path=str(path), key="shardlist")
    for i, row in enumerate(rows):
        ShardRow.from_dict(row, path, i)
    block = obj.get("dcompress")
    if block is not None:
        if not isinstance(block, dict):
            raise InputDataError("must be an object", path=str(path), key="dcompress")
        _class_names(block, path, required=False)
    return obj


def shard_rows(manifest: dict, path: str | Path) -> list[ShardRow]:
    """The typed `shardlist` of a manifest returned by `read_manifest`."""
    return [ShardRow.from_dict(row, path, i) for i, row in enumerate(manifest["shardlist"])]


def read_compressed(path: str | Path) -> tuple[dict, list[ShardRow], CompressedBlock]:
    """A compressed set's manifest (folder or manifest.json): (the parsed JSON, its rows, its
    validated block). InputDataError names the file and `dcompress.<key>`."""
    path = manifest_path(path)
    manifest = read_manifest(path)
    return manifest, shard_rows(manifest, path), CompressedBlock.from_dict(manifest.get("dcompress"), path)


def read_input(path: str | Path) -> tuple[dict, list[ShardRow], InputBlock | None]:
    """An input manifest: (the parsed JSON, its rows, its `dcompress` block or None when it has none)."""
    path = manifest_path(path)
    manifest = read_manifest(path)
    block = manifest.get("dcompress")
    return manifest, shard_rows(manifest, path), InputBlock.from_dict(block, path) if block is not None else None


def read_experts_manifest(folder: str | Path) -> ExpertsManifest:
    """The validated manifest.json of the expert buffer `folder`."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    try:
        obj = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise InputDataError("not an expert buffer (no manifest.json); create one with `dcompress experts`",
                             path=str(folder)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputDataError(f"manifest.json is not valid JSON ({e})", path=str(mpath)) from None
    except OSError as e:
        raise InputDataError(f"cannot read manifest.json ({e.strerror or e})", path=str(mpath)) from None
    return ExpertsManifest.from_dict(obj, mpath)


def manifest_dir(manifest_path: Path) -> Path:
    """The folder a manifest's relative shard urls are resolved against."""
    p = Path(manifest_path)
    return p.parent if p.suffix == ".json" or p.is_file() else p


def check_row_url(url: str, *, manifest: str | Path, key: str = "url") -> None:
    """Refuses a shard url read from a file unless it names a file inside the manifest's folder.

    A manifest is data: it never gets to run a command (`pipe:`), fetch from the network, or
    point outside its own folder (absolute paths, `..`).
    """
    if ":" in url.split("/", 1)[0]:
        raise InputDataError(f"refusing url {url!r} from a manifest: only files inside the manifest's folder "
                             "are read (pass --allow-manifest-urls to trust this manifest)", path=str(manifest),
                             key=key)
    parts = Path(url).parts
    if Path(url).is_absolute() or ".." in parts:
        raise InputDataError(f"refusing url {url!r} from a manifest: it points outside the manifest's folder "
                             "(pass --allow-manifest-urls to trust this manifest)", path=str(manifest), key=key)


def shard_paths(manifest_path: Path, manifest: dict, *, trust_urls: bool = False) -> list[str]:
    """The shard locations of a manifest's rows, relative urls resolved against its folder.

    Unless `trust_urls`, every row must be a relative path inside the manifest's folder
    (`check_row_url`); a trusted row may also be absolute or a `pipe:`/`http(s):` url.
    """
    base = manifest_dir(manifest_path)
    out = []
    for i, row in enumerate(manifest["shardlist"]):
        url = row["url"]
        if not trust_urls:
            check_row_url(url, manifest=manifest_path, key=f"shardlist[{i}].url")
        out.append(url if ":" in url.split("/", 1)[0] else str(base / url))
    return out


def count_samples(path: str | Path) -> int:
    """Number of distinct keys in one local tar shard (stdlib only: `verify` needs no torch)."""
    import tarfile

    keys = set()
    with tarfile.open(path, "r") as tf:
        for member in tf:
            if member.isreg():
                keys.add(member.name.split(".", 1)[0])
    return len(keys)


def verify(out_dir: str | Path) -> dict:
    """Re-checks every shard's size, md5 and sample count against the manifest.

    Returns a report dict; raises VerifyError listing every mismatch.
    """
    import tarfile

    out_dir = Path(out_dir)
    mpath = manifest_path(out_dir)
    manifest = read_manifest(mpath)
    problems, total = [], 0
    for row, path in zip(manifest["shardlist"], map(Path, shard_paths(mpath, manifest))):
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        missing = [k for k in ("filesize", "md5sum", "nsamples") if k not in row]
        if missing:
            raise InputDataError(f"row has no {', '.join(missing)}: nothing to verify against", path=str(mpath),
                                 key=f"shardlist[{manifest['shardlist'].index(row)}]")
        if path.stat().st_size != row["filesize"]:
            problems.append(f"{path}: size {path.stat().st_size} != manifest {row['filesize']}")
        digest = md5_file(path)
        if digest != row["md5sum"]:
            problems.append(f"{path}: md5 {digest} != manifest {row['md5sum']}")
            continue
        try:
            n = count_samples(path)
        except (tarfile.TarError, EOFError) as e:
            problems.append(f"{path}: not a readable tar ({e})")
            continue
        if n != row["nsamples"]:
            problems.append(f"{path}: {n} samples != manifest {row['nsamples']}")
        total += n
    declared = (manifest.get("dcompress") or {}).get("num_samples")
    if declared is not None and not problems and total != declared:
        problems.append(f"{mpath}: {total} samples in shards != dcompress.num_samples {declared}")
    if problems:
        raise VerifyError("; ".join(problems), path=str(mpath))
    return {"status": "ok", "manifest": str(mpath), "shards": len(manifest["shardlist"]), "samples": total,
            "ok": True}
