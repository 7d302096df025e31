"""Drop-in loading of a dcompress output for training jobs.

    ds = dcompress.load("out/")            # a torch Dataset
    x, soft, y = ds[0]                     # normalised image, soft label (probabilities), hard label
    ds.lr, ds.mean, ds.std, ds.classes     # learned lr (or None), normalisation, class names

Images come from the exact `.npy` tensor when present (synthetic sets), else from the PNG
re-normalised with the manifest's mean/std. The same shards also read as a plain
`webdataset.WebDataset` pipeline: see `webdataset_pipeline`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import normalize
from ..errors import InputDataError
from . import topk
from .manifest import manifest_path, read_manifest, shard_paths
from .members import output_samples, read_sample, soft_member
from .schema import CompressedBlock


class CompressedDataset(torch.utils.data.Dataset):
    """All samples of one output, decoded into memory (compressed sets are small).

    Every shard is checked against the manifest (size, md5, sample count) and every sample
    member is validated; a damaged or tampered output raises InputDataError naming the shard
    and key.

    Attributes:
        images: float32 [M, C, H, W] normalised. labels: int64 [M]. logits: float32 [M, C]
            (with `--label-topk K` outputs: the K stored logits in place, -inf elsewhere).
        soft_labels: softmax(logits / temperature) [M, C] (top-K: renormalised over the K, 0 elsewhere).
        label_topk: K, or None when full logits are stored.
        lr / lrs: learned learning rate(s) or None. mean/std: normalisation. classes: names.
        manifest: the parsed manifest.json. block: its validated `dcompress` block (CompressedBlock).
        manifest_path: its path. protocol: the method's EvalProtocol.
    """

    def __init__(self, path: str | Path):
        mpath, self.manifest, block, samples = output_samples(path)
        self.manifest_path = mpath
        self.block: CompressedBlock = block
        self.classes: list[str] = list(block.class_names)
        self.mean = tuple(float(v) for v in block.normalization.mean)
        self.std = tuple(float(v) for v in block.normalization.std)
        self.lr: float | None = block.learned.lr
        self.lrs: list[float] | None = block.learned.lrs
        self.temperature = float(block.labels.temperature)
        self.label_kind: str = block.labels.kind
        self.label_topk: int | None = block.labels.topk     # K: soft labels stored as top-K (`.topk.npy`)
        if self.label_topk is not None and self.label_topk > len(self.classes):
            raise InputDataError(f"labels.topk {self.label_topk} exceeds the {len(self.classes)} classes",
                                 path=str(mpath), key="dcompress.labels.topk")
        self.soft_member = soft_member(block)
        self.protocol = block.eval_protocol
        images, labels, logits, self.keys, self.meta = [], [], [], [], []
        for s in samples:
            a = read_sample(s, block)
            img = torch.from_numpy(a.image)
            images.append(img if a.exact else normalize(img.unsqueeze(0), self.mean, self.std)[0])
            labels.append(a.label)
            logits.append(torch.from_numpy(a.logits))
            self.keys.append(a.key)
        if not images:
            raise InputDataError("output has no samples", path=str(mpath))
        self.images = torch.stack(images)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.logits = torch.stack(logits)
        self.soft_labels = torch.softmax(self.logits / self.temperature, dim=1)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int):
        return self.images[i], self.soft_labels[i], self.labels[i]


def load(path: str | Path) -> CompressedDataset:
    """Loads a dcompress output folder (or its manifest.json) as a torch Dataset."""
    return CompressedDataset(path)


def webdataset_pipeline(path: str | Path):
    """The output as a `webdataset.WebDataset` yielding (uint8 HWC image array, class, logits); for a
    `--label-topk` output the third item is the sample's `(idx, val)` record array (`.topk.npy`;
    `dcompress.io.topk.expand` makes the full-width logits)."""
    mpath = manifest_path(path)
    manifest = read_manifest(mpath)
    urls = shard_paths(mpath, manifest)
    soft = ((manifest.get("dcompress") or {}).get("labels") or {}).get("soft", "logits.npy")
    soft = soft if soft in ("logits.npy", topk.MEMBER) else "logits.npy"
    import webdataset as wds

    return wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls", soft)
