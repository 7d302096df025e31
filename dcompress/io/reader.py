"""Reading WebDataset shards into RealData (webdataset walks the tars; `io.decode` decodes).

Nothing is ever unpickled: only image bytes, ASCII `.cls` and `.npy` via `np.load(allow_pickle=False)`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputDataError
from ..core import RealData, TensorStore
from .decode import (BadSample, BadSamples, DecodeOptions, decode_sample, describe_stream_error,  # noqa: F401
                     shape_mismatch, shard_samples, tar_truncation)
from .labels import assign_classes
from .urls import ResolvedInput, is_remote


def read_real(inp: ResolvedInput, opts: DecodeOptions = DecodeOptions(), *, max_bad: int = 100,
              progress: Callable[[int], None] | None = None) -> RealData:
    """Streams every shard once and decodes it into an in-memory RealData.

    Per-sample problems (undecodable or oversized image, no image member, missing,
    non-integer or int64-overflowing label, unreadable/truncated tar) are skipped and counted;
    more than `max_bad` raises TooManyBadSamples (exit 3). Dataset-level problems (no samples,
    mixed image shapes, duplicate keys, negative labels or labels >= MAX_LABEL, labels outside
    the class list) raise InputDataError (exit 4), the label bound at the first offending sample.
    """
    bad = BadSamples(max_bad=max_bad)
    images = _Rows(capacity=_expected_samples(inp))
    labels: list[int | str] = []
    keys: list[str] = []
    seen: dict[str, str] = {}
    shape = None
    for url in inp.urls:
        for sample in shard_samples(url, bad):
            key = sample["__key__"]
            if key in seen:
                raise InputDataError(f"duplicate key (also in {seen[key]})", path=url, key=key)
            seen[key] = url
            try:
                arr, label = decode_sample(sample, opts)
            except BadSample as e:
                bad.add(f"{url}: key {key!r}: {e}")
                continue
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise shape_mismatch(url, key, arr.shape, shape)
            images.append(arr)
            labels.append(label)
            keys.append(key)
            if progress is not None:
                progress(1)
    for url in inp.urls:
        problem = tar_truncation(url)
        if problem:
            bad.add(f"{url}: {problem}")
    if not images:
        raise InputDataError(f"no usable samples in {len(inp.urls)} shard(s) ({inp.description})"
                             + (f"; {bad.count} bad, first: {bad.examples[0]}" if bad.count else ""))
    label_t, class_names, class_source = assign_classes(labels, keys, inp, opts)
    x = torch.from_numpy(images.array())
    mean, std = channel_stats(x)
    fingerprint = fingerprint_of(keys, label_t, x)
    source = {"urls": [u if is_remote(u) else str(Path(u).resolve()) for u in inp.urls],
              "num_samples": len(keys), "fingerprint": fingerprint, "bad_samples": bad.as_dict(),
              "class_counts": torch.bincount(label_t, minlength=len(class_names)).tolist(),
              "decode": opts.to_dict(), "class_source": class_source}
    return RealData(store=TensorStore(x), labels=label_t, keys=keys, class_names=class_names,
                    mean=mean, std=std, source=source)


class _Rows:
    """Decoded images appended into one growing uint8 array (no list of arrays then a stacked
    copy: with the input manifest's sample count the data is held once)."""

    def __init__(self, capacity: int):
        self.capacity, self.n, self.buf = max(capacity, 1), 0, None

    def append(self, arr: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.empty((self.capacity, *arr.shape), dtype=np.uint8)
        elif self.n == self.buf.shape[0]:
            grown = np.empty((2 * self.n, *self.buf.shape[1:]), dtype=np.uint8)
            grown[:self.n] = self.buf
            self.buf = grown
        self.buf[self.n] = arr
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def array(self) -> np.ndarray:
        return self.buf[:self.n]


def _expected_samples(inp: ResolvedInput) -> int:
    """Samples the input's manifest announces for these shards (a capacity hint), else 1024."""
    rows = (inp.manifest or {}).get("shardlist", [])
    names = {Path(u).name for u in inp.urls}
    return sum(r.get("nsamples", 0) for r in rows if Path(r["url"]).name in names) or 1024


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (unbiased) of uint8 images [N, C, H, W], in [0, 1] units: two passes
    over chunks of `chunk` images with float64 sums, so no float copy of the whole set is made."""
    n, c = x.shape[0], x.shape[1]
    count = n * x.shape[2] * x.shape[3]
    total = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n, chunk):
        total += x[s:s + chunk].double().sum((0, 2, 3))
    mean = total / 255.0 / count
    sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, n, chunk):
        d = x[s:s + chunk].double().div_(255.0) - mean.view(1, c, 1, 1)
        sq += (d * d).sum((0, 2, 3))
    std = (sq / max(count - 1, 1)).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def fingerprint_of(keys: list[str], labels: torch.Tensor, images: torch.Tensor) -> str:
    """sha256 over keys, labels and pixels: identifies the decoded content, not the bytes."""
    h = hashlib.sha256()
    h.update("\n".join(keys).encode())
    h.update(labels.numpy().tobytes())
    flat = images.contiguous().numpy()
    for start in range(0, flat.shape[0], 4096):            # the pixel bytes, hashed without a copy
        h.update(flat[start:start + 4096])
    return "sha256:" + h.hexdigest()
