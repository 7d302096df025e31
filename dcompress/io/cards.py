"""Descriptions of an output folder for readers other than dcompress (format: docs/format.md).

- `_info.json` for timm's WebDataset reader (`timm/data/readers/reader_wds.py`: `_load_info`
  reads `root/_info.json`; `_parse_split_info` wants `splits[split]` with `name`,
  `num_samples`, `filenames`, `shard_lengths`), so that
  `timm.data.create_dataset("wds/NAME", root=OUT, split="train")` reads the shards.
- `README.md`, a Hugging Face dataset card whose YAML `configs` point `data_files` at the
  shards, so that `datasets.load_dataset(OUT)` reads samples instead of the manifest.

Both are functions of the manifest only (no timestamps): the same run gives the same bytes.
"""
from __future__ import annotations

import json

from .imageformat import ImageFormat
from .manifest import ShardRow
from .schema import CompressedBlock

TIMM_INFO = "_info.json"
CARD = "README.md"
SPLIT = "train"


def timm_info(name: str, shards: list[ShardRow], class_names: list[str]) -> dict:
    """The `_info.json` dict: one split `train` listing every shard and its sample count."""
    return {"name": name, "num_classes": len(class_names),
            "splits": {SPLIT: {"name": SPLIT, "num_samples": sum(r.nsamples for r in shards),
                               "filenames": [r.url for r in shards],
                               "shard_lengths": [r.nsamples for r in shards]}}}


def timm_info_bytes(name: str, shards: list[ShardRow], class_names: list[str]) -> bytes:
    return (json.dumps(timm_info(name, shards, class_names), indent=2) + "\n").encode()


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def dataset_card(name: str, block: CompressedBlock, shard_glob: str, *, files: list[str], num_shards: int) -> str:
    """The README.md dataset card: YAML front matter for `datasets`, then a short description and
    how each reader sees the set (which of them see the soft labels; `num_workers` and shards).

    Args:
        name: the manifest's `name`.
        block: the manifest's `dcompress` block (filled in by `io.output.finish_output`: urls and num_samples set).
        shard_glob: pattern matching the shards and nothing else, e.g. `data-*.tar`.
        files: the other files of the folder (listed in the card).
        num_shards: the number of shards.
    """
    m = block.method
    classes = block.class_names
    c, h, w = block.image_shape
    kind = block.labels.kind
    soft = block.labels.soft
    image = ImageFormat.parse(block.image_format).member
    label_text = {"hard": "one-hot (argmax = `cls`)", "teacher": "logits of a teacher network",
                  "learned": "logits learned by the method"}.get(kind, kind)
    stored = ("float16 logits `[C]`" if soft != "topk.npy" else
              f"the {block.labels.topk} largest logits as `(idx, val)` records")
    shown = classes[:100]
    class_rows = "\n".join(f"| {i} | {_cell(n)} |" for i, n in enumerate(shown))
    more = f"\n\n… and {len(classes) - len(shown)} more (see `manifest.json`)." if len(classes) > len(shown) else ""
    lr = block.learned.lr
    lr_line = f"- learned learning rate: {lr:.6g} (use it when training on this set)\n" if lr is not None else ""
    extra = ", ".join(f"`{f}`" for f in files)
    if soft == "topk.npy":
        decode = (f'rec = np.load(io.BytesIO(s["topk.npy"]))      # {block.labels.topk} (idx, val) records\n'
                  f'logits = dcompress.io.topk.expand(rec, {len(classes)}, {block.labels.topk})  '
                  f'# [C], -inf where not kept')
    elif soft is None:
        decode = 'cls = int(s["cls"])                             # the label: this output stores no soft labels'
    else:
        decode = f'logits = np.load(io.BytesIO(s["{soft}"]))  # float16'
    if soft is None:
        labels_line = ("- labels: `cls` (hard label; no soft labels are stored)" if kind == "hard" else
                       "- labels: `cls` (hard label); soft labels come from the teacher shipped beside the shards "
                       "(`teacher.pt`), which `dcompress.load` runs on every view")
        soft_cell, soft_name = "`cls`", "none"
    else:
        labels_line = (f"- labels: `cls` (hard label) and `{soft}` (soft labels, {stored}: {label_text};\n"
                       f"  softmax at temperature {block.labels.temperature})")
        soft_cell, soft_name = f"soft labels from `{soft}`, `cls`", f"`{soft}`"
    members = ", ".join([f"`{image}`", "`cls`", *([f"`{soft}`"] if soft else []),
                         *(["`npy` (exact float32 normalised tensor)"] if block.exact_tensor else [])])
    return f"""---
configs:
- config_name: default
  data_files:
  - split: {SPLIT}
    path: "{shard_glob}"
task_categories:
- image-classification
tags:
- dcompress
- dataset-compression
- webdataset
---

# {name}

A compressed image-classification training set written by dcompress {block.version or ""}: **{m.name}** ({m.kind}),
IPC {m.ipc} (images per class), {len(classes)} classes, {block.num_samples} images of
{c}×{h}×{w}, seed {m.seed}, in {num_shards} shards.

{labels_line}
{lr_line}- source: {block.source.num_samples} images, fingerprint `{block.source.fingerprint}`
- per sample: {members} (`{image}`: {block.image_format or "png"} images)
- normalisation: mean {list(block.normalization.mean)}, std {list(block.normalization.std)}
- other files: `manifest.json` (shard index + full provenance), {extra}

## Reading it

`OUT` is this folder. Not every reader sees the soft labels:

| reader | sees |
|---|---|
| `dcompress.load` | images (the exact `npy` tensors when present), {soft_cell}, the learned lr |
| `webdataset`, `wids` | every member as bytes; the soft labels are {soft_name}, which you decode yourself |
| timm (`wds/` reader, `_info.json`) | image + `cls` only: the soft labels are ignored |
| Hugging Face `datasets` (webdataset loader) | one column per member; training recipes take image + `cls`, a soft-label column ({soft_name}) is raw and unused unless you map it yourself |

```python
import dcompress                                    # images, soft labels, learned lr
ds = dcompress.load("OUT")

import io, numpy as np, webdataset as wds           # plain WebDataset: decode the soft labels yourself
for s in wds.WebDataset("OUT/{block.urls}", shardshuffle=False):
    {decode.replace(chr(10), chr(10) + "    ")}

import timm.data                                    # timm (reads _info.json): image + cls only
timm.data.create_dataset("wds/{name}", root="OUT", split="train")

import datasets                                     # Hugging Face (reads this card's configs)
datasets.load_dataset("OUT", split="train")
```

Soft label = `softmax(logits / {block.labels.temperature})`.

**`num_workers`.** webdataset gives each DataLoader worker whole shards and fails a worker that gets
none (`No samples found ... fewer shards than workers`): with `wds.WebDataset`, use
at most {num_shards} workers for this folder. For more workers, draw shards with replacement,
`wds.WebDataset(urls, resampled=True, shardshuffle=False).with_epoch(n)` (n samples per worker and
epoch), or use an indexed reader: `dcompress.load` and `wids.ShardListDataset("OUT/manifest.json")`
are map-style datasets that any number of workers can share.

## Classes

| cls | name |
|---|---|
{class_rows}{more}
"""
