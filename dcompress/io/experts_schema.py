"""An expert buffer's manifest.json as a dataclass (its own format, no wids part; format:
docs/experts-format.md)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..errors import InputDataError

from .schema import Normalization, _is_int, _pick, _section

EXPERTS_FORMAT = "dcompress-experts"
EXPERTS_FORMAT_VERSION = 1


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
