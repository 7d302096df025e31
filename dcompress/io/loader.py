"""Drop-in loading of a dcompress output for training jobs.

    ds = dcompress.load("out/")            # a torch Dataset
    x, soft, y = ds[0]                     # normalised image, soft label (probabilities), hard label
    ds.lr, ds.mean, ds.std, ds.classes     # learned lr (or None), normalisation, class names

Images come from the exact `.npy` tensor when present (synthetic sets), else from the image
member (`.png`, or `.jpg` / `.webp` of `--image-format`) re-normalised with the manifest's
mean/std. `load(path, images="member")` always decodes the image member, as an outside reader
(webdataset, wids, timm, Hugging Face) does: decoded uint8 / 255, normalised with the manifest's
mean/std, the `.npy` ignored (`ds.image_source` says which one `ds.images` holds). Hard-label outputs store no soft member: `logits` are the one-hot vectors of `.cls`
(as older outputs stored them). The same shards also read as a plain
`webdataset.WebDataset` pipeline: see `webdataset_pipeline`.

Outputs with view labels yield views (augment/views.py), one per image and epoch:

    ds.set_epoch(e)                         # before each epoch (any DataLoader, batch size, workers)
    x, soft, y = ds[i]                      # view e of image i, the teacher's label of that view

`views` outputs replay their stored views and labels; `online` outputs draw the same views from
the recorded seed and label each with the teacher shipped in the output (`teacher.pt`, checked
against the manifest's sha256, loaded weights-only).
"""
from __future__ import annotations

from pathlib import Path

import torch

import numpy as np

from ..core import normalize
from ..errors import DcompressError, InputDataError, UsageError
from . import topk
from .imageformat import ImageFormat
from .manifest import manifest_path, read_manifest, shard_paths
from .members import output_samples, read_sample, soft_member
from .schema import CompressedBlock

TEACHER_FILE = "teacher.pt"          # an `online` output's teacher (api/labels.py writes it)
IMAGE_FORMS = ("exact", "member")     # load(images=...): the `.npy` where stored, or the image member


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
        image_source: what `images` was decoded from: `npy` (the exact tensors) or the image
            member (`png`, `jpg`, `webp`). image_member: the image member an outside reader
            decodes. image_format: the output's ImageFormat (`png`, `jpeg:Q`, `webp:Q`).
        label_kind: hard | teacher | learned | views | online. For views / online: `logits` and
            `soft_labels` are None, `num_views` is E, `epoch` the view `ds[i]` yields
            (`set_epoch`), `temperature` the one the teacher's labels are softened at.
    """

    def __init__(self, path: str | Path, images: str = "exact"):
        if images not in IMAGE_FORMS:
            raise UsageError(f"images must be one of {', '.join(IMAGE_FORMS)}, got {images!r}")
        use_member = images == "member"
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
        self.image_format = ImageFormat.parse(block.image_format)
        images, labels, logits, views, view_logits, self.keys, self.meta = [], [], [], [], [], [], []
        sources = set()
        for s in samples:
            a = read_sample(s, block, member=use_member)
            sources.add("npy" if a.exact else a.member)
            self.image_member = a.member
            img = torch.from_numpy(a.image)
            images.append(img if a.exact else normalize(img.unsqueeze(0), self.mean, self.std)[0])
            labels.append(a.label)
            logits.append(a.logits)
            views.append(a.views)
            view_logits.append(a.view_logits)
            self.keys.append(a.key)
        if not images:
            raise InputDataError("output has no samples", path=str(mpath))
        self.image_source = "npy" if "npy" in sources else self.image_member
        self.images = torch.stack(images)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.logits = self.soft_labels = self.views = None
        self.num_views, self.epoch = (block.labels.views or {}).get("epochs"), 0
        if self.label_kind in ("views", "online"):
            self.views = self._set_views(views, view_logits)
        elif logits and logits[0] is None:       # hard labels are `.cls` alone: one-hot, as older outputs stored
            self.logits = torch.nn.functional.one_hot(self.labels, len(self.classes)).float()
            self.soft_labels = torch.softmax(self.logits / self.temperature, dim=1)
        else:
            self.logits = torch.from_numpy(np.stack(logits))
            self.soft_labels = torch.softmax(self.logits / self.temperature, dim=1)

    def _set_views(self, views: list, view_logits: list):
        """The set's views (train.relabel.SetViews): stored ones (`views`), or drawn from the
        recorded seed and recipe (`online`); InputDataError naming the shard and key of a sample
        whose CutMix partner is not in the set."""
        from ..augment.views import ViewConfig
        from ..train.relabel import SetViews

        rec = self.block.labels.views
        try:
            config = ViewConfig(**rec["config"])
        except (TypeError, DcompressError) as e:
            raise InputDataError(f"not a view recipe of this version ({e})", path=str(self.manifest_path),
                                 key="dcompress.labels.views.config") from None
        stored = np.stack(views) if self.label_kind == "views" else None
        sv = SetViews(self.images, self.labels, config, int(rec["seed"]), stored=stored)
        if stored is not None:
            self.view_logits = torch.from_numpy(np.stack(view_logits))
            for i in range(len(self.keys)):
                missing = [(int(c), int(k)) for c, k in zip(stored[i]["pclass"], stored[i]["pslot"])
                           if c >= 0 and (int(c), int(k)) not in sv.index_of]
                if missing:
                    raise InputDataError(f"CutMix partner key c{missing[0][0]:04d}-{missing[0][1]:05d} is not in "
                                         "the set", path=str(self.manifest_path), key=self.keys[i])
        else:
            self.teacher = self._teacher()
        return sv

    def _teacher(self) -> torch.nn.Module:
        """The `online` output's teacher: `teacher.pt` beside the manifest (never a path read from
        it), its sha256 checked against the manifest, loaded weights-only (no unpickling)."""
        import hashlib

        from ..train.teacher import load_teacher_net

        info = self.block.labels.teacher or {}
        path = self.manifest_path.parent / TEACHER_FILE
        if info.get("file") != TEACHER_FILE or not isinstance(info.get("sha256"), str) \
                or not isinstance(info.get("model"), str):
            raise InputDataError(f"an online output's teacher must be {TEACHER_FILE} with its sha256 and model",
                                 path=str(self.manifest_path), key="dcompress.labels.teacher")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputDataError(f"the output's teacher is missing or unreadable ({e.strerror or e})",
                                 path=str(path)) from None
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise InputDataError("the output's teacher differs from the one its manifest records (sha256): altered "
                                 "or damaged", path=str(path), key="dcompress.labels.teacher.sha256")
        return load_teacher_net(info["model"], path, tuple(self.images.shape[1:]), len(self.classes),
                                torch.device("cpu"))

    def set_epoch(self, epoch: int) -> None:
        """Which view `ds[i]` yields (views / online outputs; ignored otherwise). Epochs past the
        stored views cycle through them."""
        self.epoch = int(epoch)

    @torch.no_grad()
    def epoch_batch(self, epoch: int, idx=None, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """View `epoch` of samples `idx` (default all) and its logits: the stored ones, or the
        shipped teacher's (`online`). Only for views / online outputs."""
        idx = np.arange(len(self.keys)) if idx is None else np.asarray(idx)
        x = self.views.images_of(epoch, idx)
        if self.label_kind == "views":
            return x, self.view_logits[torch.from_numpy(idx), epoch % self.num_views]
        self.teacher.to(device)
        return x, self.teacher(x.to(device)).float().cpu()

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int):
        if self.views is None:
            return self.images[i], self.soft_labels[i], self.labels[i]
        x, logits = self.epoch_batch(self.epoch, [i])
        return x[0], torch.softmax(logits[0] / self.temperature, dim=0), self.labels[i]


def load(path: str | Path, images: str = "exact") -> CompressedDataset:
    """Loads a dcompress output folder (or its manifest.json) as a torch Dataset.

    Args:
        images: `exact` (default): the exact float `.npy` tensors where the output stores them
            (synthesis methods), else the image member. `member`: always the image member
            (`.png`, `.jpg`, `.webp`) decoded as an outside reader decodes it (uint8 / 255,
            normalised with the manifest's mean/std): the set webdataset, wids, timm or Hugging
            Face train on. UsageError for another value.
    """
    return CompressedDataset(path, images)


def webdataset_pipeline(path: str | Path):
    """The output as a `webdataset.WebDataset` yielding (uint8 HWC image array, class, logits); for a
    `--label-topk` output the third item is the sample's `(idx, val)` record array (`.topk.npy`;
    `dcompress.io.topk.expand` makes the full-width logits); for a hard-label output (no soft
    member) the pairs (image, class)."""
    from .imageformat import ImageFormat

    mpath = manifest_path(path)
    manifest = read_manifest(mpath)
    urls = shard_paths(mpath, manifest)
    block = manifest.get("dcompress") or {}
    labels = block.get("labels") or {}
    soft = labels.get("soft", "logits.npy")
    image = ImageFormat.parse(block.get("image_format")).member
    import webdataset as wds

    pipe = wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
    if soft is None and labels.get("kind") == "hard":
        return pipe.to_tuple(image, "cls")
    return pipe.to_tuple(image, "cls", soft if soft in ("logits.npy", topk.MEMBER) else "logits.npy")
