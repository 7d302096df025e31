"""Reading WebDataset shards into RealData: through the decoded store (`store.open_store`), which
decodes an input once with parallel workers (`store_build`) and is reopened in milliseconds by
every later command.

Nothing is ever unpickled: only image bytes, text labels and `.npy` via `np.load(allow_pickle=False)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..cache import cache_root
from ..core import RealData
from .decode import DecodeOptions
from .store import KeyList, open_store
from .urls import ResolvedInput


def read_real(inp: ResolvedInput, opts: DecodeOptions = DecodeOptions(), *, max_bad: int | None = None,
              workers: int | None = None, cache: Path | None = None,
              progress: Callable[[int, int], None] | None = None,
              note: Callable[[str], None] | None = None) -> RealData:
    """The input as RealData over its decoded store (built on first use by `workers` processes,
    default: one per core).

    Per-sample problems (undecodable or oversized image, no image member, missing or malformed
    label, bad member names) are skipped and counted once each, by cause; more than `max_bad`
    (None: 100) raises TooManyBadSamples (exit 3). A damaged shard (it ends early, or disagrees
    with its input-manifest row) raises InputDataError naming it, unless `max_bad` is given: then
    its lost samples count as bad ones. Dataset-level problems (unreadable files, no samples,
    mixed image shapes, duplicate keys, labels outside [0, MAX_LABEL) or the class list) raise
    InputDataError (exit 4) naming the shard and key; no sample of a shard carrying its label
    is a UsageError (exit 2: the `label_key`). `source["input"]` is the accounting (samples
    expected, read, used; bad samples; damaged shards), the same for a reused store.
    """
    store, arrays, info = open_store(inp, opts, cache=cache or cache_root(), max_bad=max_bad,
                                     workers=workers, progress=progress, note=note)
    meta = store.meta
    labels = torch.from_numpy(arrays["labels"])
    source = {"urls": meta["urls"], "num_samples": int(meta["shape"][0]), "fingerprint": meta["fingerprint"],
              "bad_samples": meta["bad_samples"], "class_counts": meta["class_counts"], "decode": meta["decode"],
              "class_source": meta["class_source"], "store": info,
              "input": {**meta["input"], "bad_samples": meta["bad_samples"]}}
    return RealData(store=store, labels=labels, keys=KeyList(arrays["keys"]), class_names=list(meta["class_names"]),
                    mean=tuple(meta["mean"]), std=tuple(meta["std"]), source=source)
