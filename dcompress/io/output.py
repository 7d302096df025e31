"""Writing a CompressedSet as compact shards + manifest.json (format: docs/format.md).

Per sample: the image (`.png`, 8-bit, de-normalised; `.jpg` / `.webp` with `--image-format`,
io/imageformat.py), `.cls`, the soft labels when the labels carry any (`.logits.npy` float16
[C], `.topk.npy` or `.views.npy`; none for hard or online labels), for synthetic images the
exact normalised float32 tensor `.npy` [C, H, W], and `.json` only when asked (`sample_json`).
Beside the shards, in the same atomic write: `provenance.jsonl` (each sample's provenance, when
the method records any), `_info.json` (timm) and `README.md` (Hugging Face dataset card),
`grid.png`, and with a run's metrics `metrics.jsonl` + `loss.png`.

Two steps, so that several writers (torchrun ranks, api/write.py) can share one folder:
`write_rows` writes the shards of a range of samples, `finish_output` completes the folder.
Nothing here knows of ranks or of the atomic swap around the folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..faults import crash_point
from ..core import CompressedSet, denormalize_to_u8
from .cards import CARD, TIMM_INFO, dataset_card, timm_info_bytes
from .figures import GRID, LOSS, class_grid, figure_title, loss_curve, png_bytes
from .manifest import MANIFEST, ShardRow, build_manifest
from .schema import CompressedBlock
from .safe_write import write_json
from .metrics import METRICS, jsonl_bytes
from .codecs import encode_npy, encode_png, json_bytes
from .writer import write_shards
from . import topk, viewlabels
from .imageformat import IMAGE_MEMBERS

PREFIX = "data"
SHARD_MAX_BYTES = 3e9                # the writer's size limit of one shard (io/writer.write_shards)
# webdataset hands each DataLoader worker whole shards and fails a worker that gets none
# ("fewer shards than workers"): a small set is split into at least this many shards.
MIN_SHARDS = 8


def sample_key(label: int, slot: int) -> str:
    """`c0003-00007`: class 3, 8th image of that class. No dots (webdataset splits on them)."""
    return f"c{label:04d}-{slot:05d}"


LABEL_MEMBERS = ("logits.npy", topk.MEMBER, viewlabels.MEMBER)
PROVENANCE = "provenance.jsonl"      # one line per sample: its key and the method's provenance
TAR_BLOCK, TAR_RECORD = 512, 10240   # a tar member: 512-byte header + data padded to 512; end: 2 blocks, record


def provenance_bytes(cset: CompressedSet) -> bytes | None:
    """`provenance.jsonl`: `{"key", ...}` per sample with the method's `sources` entry (the
    facts the manifest does not hold: RDED's crops, a selection's source keys); None when the
    method records none."""
    if not cset.sources:
        return None
    keys = sample_keys(cset.labels.tolist())
    return b"".join(json_bytes({"key": keys[i], **cset.sources[i]}) + b"\n" for i in range(len(cset.sources)))


def sample_keys(labels: list[int]) -> list[str]:
    """Each sample's key: its class and its rank within its class."""
    per_class: dict[int, int] = {}
    keys = []
    for y in labels:
        slot = per_class.get(int(y), 0)
        per_class[int(y)] = slot + 1
        keys.append(sample_key(int(y), slot))
    return keys


def iter_samples(cset: CompressedSet, class_names: list[str], method: str, u8: np.ndarray,
                 label_topk: int | None = None, sizes: dict[str, int] | None = None, rows: range | None = None,
                 encoded: list[bytes] | None = None, image_member: str = "png", sample_json: bool = False):
    """The samples of `rows` (default all) of the set, in order; `label_topk` stores the K largest
    logits (`.topk.npy`) instead of `.logits.npy`; a set with view labels stores `.views.npy`
    (io/viewlabels.py); `hard` and `online` labels no soft member (the class is `.cls`; the
    output's teacher labels each view). `encoded`: the images' bytes (member `image_member`,
    io/imageformat.py), else PNG of `u8`. `sample_json`: also the per-sample `.json`. `sizes`
    (when given) sums each member's payload bytes by extension."""
    full = cset.logits.detach().cpu().float().numpy() if cset.logits is not None else None
    logits = full.astype(np.float16) if full is not None else None
    exact = cset.images.detach().cpu().float().numpy()
    per_class: dict[int, int] = {}
    slots = []
    for y in cset.labels.tolist():                  # a sample's slot: its rank within its class
        slots.append(per_class.get(int(y), 0))
        per_class[int(y)] = slots[-1] + 1
    for i in range(len(cset)) if rows is None else rows:
        crash_point("output.sample")
        y = int(cset.labels[i])
        slot = slots[i]
        sample = {"__key__": sample_key(y, slot),
                  image_member: encoded[i] if encoded is not None else encode_png(u8[i]), "cls": str(y).encode()}
        if sample_json:
            meta = {"class": y, "class_name": class_names[y], "method": method, "slot": slot}
            if i < len(cset.sources):
                meta.update(cset.sources[i])
            sample["json"] = json_bytes(meta)
        if cset.view_logits is not None:
            sample[viewlabels.MEMBER] = encode_npy(viewlabels.pack(cset.views[i], cset.view_logits[i], label_topk))
        elif full is None or cset.label_kind == "hard":
            pass                                    # online: the output's teacher labels each view; hard: .cls
        elif label_topk is None:
            sample["logits.npy"] = encode_npy(logits[i])
        else:
            sample[topk.MEMBER] = encode_npy(topk.prune(full[i], label_topk))
        if cset.synthetic:
            sample["npy"] = encode_npy(exact[i])
        if sizes is not None:
            for ext, data in sample.items():
                if ext != "__key__":
                    sizes[ext] = sizes.get(ext, 0) + len(data)
        yield sample


def byte_counts(sizes: dict[str, int], shard_bytes: int, teacher_bytes: int | None = None) -> dict[str, int]:
    """The manifest's `bytes`: member payloads by role (images: .png/.jpg/.webp + .npy; labels:
    .logits.npy, .topk.npy or .views.npy; other: .cls + .json), `container` (tar headers,
    padding and end blocks: the shards on disk minus the payloads), `shards` (on disk),
    `teacher` (an online output's teacher.pt) and `total` (what a training job reads: shards +
    teacher). images + labels + other + container == shards."""
    images = sum(v for k, v in sizes.items() if k in IMAGE_MEMBERS + ("npy",))
    labels = sum(v for k, v in sizes.items() if k in LABEL_MEMBERS)
    payload = sum(sizes.values())
    out = {"images": images, "labels": labels, "other": payload - images - labels,
           "container": shard_bytes - payload, "shards": shard_bytes}
    if teacher_bytes is not None:
        out["teacher"] = teacher_bytes
    return {**out, "total": shard_bytes + (teacher_bytes or 0)}


def image_bytes(cset: CompressedSet, mean, std) -> np.ndarray:
    """The set's images as the 8-bit pixels its `.png` members hold, uint8 [N, C, H, W]."""
    return denormalize_to_u8(cset.images.detach().cpu().float(), mean, std).numpy()


def output_shard_size(n: int, shard_size: int, min_shards: int = MIN_SHARDS) -> int:
    """Samples per output shard for a set of `n` samples: `shard_size` (`--shard-size`, the upper
    bound), lowered to `n // min_shards` so that a set of at least `min_shards` samples makes
    `min_shards` to 2 * `min_shards` - 1 shards, and a smaller one one shard per sample.
    `min_shards` is MIN_SHARDS except under `--budget`, where api/budget.choose lowers it (4, 2,
    1) when the split's tar records would not fit. A function of its arguments only: every
    torchrun rank computes the same size."""
    return max(1, min(shard_size, n // max(1, min_shards)))


def one_writer(cset: CompressedSet, shard_size: int) -> bool:
    """Whether one process must write every shard: when a shard could reach the writer's size
    limit, the writer cuts it early and renumbers the rest, which only a single writer sees."""
    if not len(cset):
        return True
    labels = cset.view_logits[0].size if cset.view_logits is not None else (
        cset.logits.shape[1] if cset.logits is not None else 0)
    per_sample = 2 * cset.images[0].numel() * 4 + 8 * labels + 8192
    return shard_size * per_sample > SHARD_MAX_BYTES


def write_rows(tmp: Path, cset: CompressedSet, rows: range, *, start: int, class_names: list[str], method: str,
               u8: np.ndarray, shard_size: int, label_topk: int | None = None,
               sizes: dict[str, int] | None = None, encoded: list[bytes] | None = None,
               image_member: str = "png", sample_json: bool = False) -> list[ShardRow]:
    """Writes the samples of `rows` into shards `PREFIX-<start>.tar`, `PREFIX-<start + 1>.tar`, ...
    of `tmp` (`shard_size` samples each; numbered from `start`, so that shard k of a set holds
    rows [k * shard_size, (k + 1) * shard_size) whoever writes it). `sizes` (when given) sums each
    member's payload bytes by extension. `encoded`, `image_member`, `sample_json`: as
    `iter_samples`. Returns the shards' manifest rows."""
    samples = iter_samples(cset, class_names, method, u8, label_topk, sizes, rows, encoded=encoded,
                           image_member=image_member, sample_json=sample_json)
    written = write_shards(tmp, samples,
                           prefix=PREFIX, shard_size=shard_size, max_bytes=SHARD_MAX_BYTES, start=start)
    return [ShardRow.of_file(p, n) for p, n in written]


def finish_output(tmp: Path, cset: CompressedSet, shards: list[ShardRow], sizes: dict[str, int], *, name: str,
                  class_names: list[str], u8: np.ndarray, block: CompressedBlock,
                  metrics: list[dict] | None = None) -> dict:
    """Completes the output folder `tmp` whose shards are written (`shards`, any order; `sizes`:
    their member payload bytes by extension): reader descriptions, figures and, last, the
    manifest, under the dataset name `name`. `block` is the run's manifest block; `num_samples`, `extra_files`, `urls`,
    `files` and `bytes` are filled in here. `metrics`: the run's `MetricsLog.rows()`, written as
    `metrics.jsonl` (+ `loss.png` when it has iteration rows); None writes neither.
    Returns the manifest dict."""
    from .loader import TEACHER_FILE

    shards = sorted(shards, key=lambda row: row.url)
    files = dict(cset.extra_files)
    provenance = provenance_bytes(cset)
    if provenance is not None:
        files[PROVENANCE] = provenance
    teacher = len(files[TEACHER_FILE]) if block.labels.kind == "online" and TEACHER_FILE in files else None
    counts = byte_counts(sizes, sum((tmp / row.url).stat().st_size for row in shards), teacher)
    budget = None if block.budget is None else {
        **block.budget, "achieved": counts["total"], "fits": counts["total"] <= block.budget["bytes"]}
    block = dataclasses.replace(block, num_samples=len(cset), extra_files=sorted(files),
                                urls=f"{PREFIX}-{{000000..{len(shards) - 1:06d}}}.tar", bytes=counts, budget=budget)
    roles = {"timm_info": TIMM_INFO, "card": CARD, "grid": GRID}
    files[TIMM_INFO] = timm_info_bytes(name, shards, class_names)
    files[GRID] = png_bytes(class_grid(u8, cset.labels.cpu().numpy(), class_names, figure_title(block)))
    if metrics is not None:
        files[METRICS] = jsonl_bytes(metrics)
        roles["metrics"] = METRICS
        curve = loss_curve(metrics, f"{figure_title(block)}: loss")
        if curve is not None:
            files[LOSS] = png_bytes(curve)
            roles["loss_curve"] = LOSS
    block = dataclasses.replace(block, files=roles)
    files[CARD] = dataset_card(name, block, f"{PREFIX}-*.tar", files=sorted(files),
                               num_shards=len(shards)).encode()
    for fname, data in files.items():
        (tmp / fname).write_bytes(data)
    manifest = build_manifest(name, shards, block)
    crash_point("output.manifest")
    write_json(tmp / MANIFEST, manifest, indent=2)
    return manifest


def one_hot_logits(labels: torch.Tensor, num_classes: int, scale: float = 1.0) -> torch.Tensor:
    """Logits whose softmax is (nearly) one-hot would need ±inf; we store the one-hot vector
    itself scaled by `scale` and declare label kind "hard" in the manifest (argmax = label)."""
    return torch.nn.functional.one_hot(labels, num_classes).float() * scale
