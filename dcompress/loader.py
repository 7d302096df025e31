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

import numpy as np
import torch
import webdataset as wds

from .errors import InputDataError
from .io.manifest import MANIFEST, read_manifest, shard_paths
from .io.shards import decode_image, decode_npy
from .types import EvalProtocol, normalize


class CompressedDataset(torch.utils.data.Dataset):
    """All samples of one output, decoded into memory (compressed sets are small).

    Attributes:
        images: float32 [M, C, H, W] normalised. labels: int64 [M]. logits: float32 [M, C].
        soft_labels: softmax(logits / temperature) [M, C].
        lr / lrs: learned learning rate(s) or None. mean/std: normalisation. classes: names.
        manifest: the parsed manifest.json. protocol: the method's EvalProtocol.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        mpath = path / MANIFEST if path.is_dir() else path
        self.manifest = read_manifest(mpath)
        block = self.manifest.get("dcompress")
        if block is None or block.get("kind") != "compressed":
            raise InputDataError("not a dcompress compressed-set manifest", path=str(mpath), key="dcompress.kind")
        self.classes: list[str] = block["class_names"]
        self.mean = tuple(block["normalization"]["mean"])
        self.std = tuple(block["normalization"]["std"])
        self.lr: float | None = block.get("learned", {}).get("lr")
        self.lrs: list[float] | None = block.get("learned", {}).get("lrs")
        self.temperature = float(block["labels"].get("temperature", 1.0))
        self.label_kind: str = block["labels"]["kind"]
        self.protocol = EvalProtocol(**block["eval_protocol"])
        images, labels, logits, self.keys, self.meta = [], [], [], [], []
        pipeline = wds.DataPipeline(wds.SimpleShardList([str(p) for p in shard_paths(mpath, self.manifest)]),
                                    wds.tarfile_to_samples())
        for s in pipeline:
            if "npy" in s:
                img = torch.from_numpy(decode_npy(s["npy"]).astype(np.float32))
            else:
                u8 = torch.from_numpy(decode_image(s["png"], "png"))
                img = normalize(u8.unsqueeze(0), self.mean, self.std)[0]
            images.append(img)
            labels.append(int(s["cls"]))
            logits.append(torch.from_numpy(decode_npy(s["logits.npy"]).astype(np.float32)))
            self.keys.append(s["__key__"])
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


def webdataset_pipeline(path: str | Path) -> wds.WebDataset:
    """The output as a `webdataset.WebDataset` yielding (uint8 HWC image array, class, logits)."""
    path = Path(path)
    mpath = path / MANIFEST if path.is_dir() else path
    urls = [str(p) for p in shard_paths(mpath, read_manifest(mpath))]
    return wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls", "logits.npy")
