"""`distill --budget`: a size in bytes (or a share of the input's bytes) turned into the IPC
whose output fits it, from the output's bytes measured member by member.

The estimate is the writer's own arithmetic: every tar member is a 512-byte header plus its
payload padded to 512 bytes, every shard ends with two zero blocks and is padded to a 10,240-byte
record, and the shard count is `io.output.output_shard_size`'s. The writer's split of a small set
into at least 8 shards (for DataLoader workers) costs a 10,240-byte record per shard: under a
budget the split is lowered (8, 4, 2, then 1 shard) when it is what keeps IPC from growing, and
the chosen `min_shards` is recorded in the budget block and used by the writer. Payload sizes are exact where
they are fixed (`.cls`, `.npy` tensors, label arrays, the online teacher's weights) and
measured where they vary: a handful of real images per class encoded in the chosen format, the
largest of them taken for every sample (synthesis: the largest PNG any image of that shape can
be). The IPC chosen is the largest whose estimate fits; the written bytes are then reported as
`budget.achieved` and `budget.fits` (docs/format.md, "Budgets").
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import UsageError

UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_BUDGET = re.compile(r"^\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?)\s*([a-z%]*)\s*$", re.I)
PER_CLASS = 8                        # real images encoded per class to measure the image member


def parse_budget(text: str) -> tuple[str, float]:
    """`50MB`, `1.5GiB`, `500KB`, `123456` (bytes) -> ("bytes", n); `1%` -> ("share", 0.01).
    Decimal units (kB/MB/GB/TB: powers of 1000) and binary ones (KiB/MiB/GiB/TiB: of 1024);
    UsageError for anything else, a negative or zero size, or a share above 100 %."""
    m = _BUDGET.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or (unit not in UNITS and unit != "%"):
        raise UsageError(f"--budget must be a size such as 50MB, 1.5GiB, 500KB or a share of the input such as 1%, "
                         f"got {text!r}")
    value = float(m.group(1))
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--budget must be positive, got {text!r}")
    if unit == "%":
        if value > 100:
            raise UsageError(f"--budget share must be at most 100%, got {text!r}")
        return "share", value / 100
    return "bytes", value * UNITS[unit]


def input_bytes(real) -> int:
    """The input shards' total size on disk; UsageError when one is not a local file."""
    total = 0
    for url in real.source.get("urls") or []:
        path = Path(url[len("file:"):] if str(url).startswith("file:") else url)
        if not path.is_file():
            raise UsageError(f"--budget as a share needs local input shards ({url} is not a file): give bytes, "
                             "e.g. --budget 50MB")
        total += path.stat().st_size
    if not total:
        raise UsageError("--budget as a share needs the input's shards: give bytes, e.g. --budget 50MB")
    return total


def member(nbytes: int) -> int:
    """A tar member's size on disk: header + payload padded to 512 bytes."""
    from ..io.output import TAR_BLOCK

    return TAR_BLOCK + TAR_BLOCK * math.ceil(nbytes / TAR_BLOCK)


def label_mode(req) -> str:
    """The labels the run writes, as far as the request says before the method runs (`auto`
    for a synthesis method that may learn labels: counted as one soft vector per image)."""
    info = req.method_class.info
    if req.labels != "auto":
        return req.labels
    return info.default_labels or ("teacher" if info.kind == "selection" else "learned")


def sample_bytes(real, req, fmt, *, image: int | None = None) -> dict:
    """Bytes on disk per output sample, by role: `images` (image member, + the exact `.npy` of
    synthesis unless `--no-exact-images`), `labels` (the soft member of the labels written), `other` (`.cls`, `.json`).
    `image`: the image member's payload (default: measured, `image_payload`)."""
    from ..io.codecs import encode_npy, json_bytes

    c, h, w = real.image_shape
    synthetic = req.method_class.info.kind == "synthesis"
    images = member(image_payload(real, fmt, synthetic) if image is None else image)
    if req.keeps_exact:
        images += member(len(encode_npy(np.zeros((c, h, w), np.float32))))
    n = real.num_classes
    labels = label_bytes(real, req, label_mode(req))
    other = member(len(str(n - 1)))
    if req.sample_json:
        longest = max(real.class_names, key=len)
        meta = {"class": n - 1, "class_name": longest, "method": req.method, "slot": 99999,
                "source_key": max(real.keys, key=len), "source_index": len(real)}
        other += member(len(json_bytes(meta)) + 256)       # + room for a method's own provenance
    return {"images": images, "labels": labels, "other": other}


def views_per_image(req) -> int:
    """E of `views` / `online` labels: --label-views, else the default protocol's 301 passes
    (the real E follows the method's protocol, known after it ran)."""
    from ..augment.views import ViewConfig

    return (req.view_config or ViewConfig()).epochs or 301


def label_bytes(real, req, mode: str) -> int:
    """Bytes on disk of one sample's soft-label member when the labels are `mode` (0 for hard
    and online labels, which store none)."""
    from ..io import topk, viewlabels
    from ..io.codecs import encode_npy

    k, n = req.label_topk, real.num_classes
    if mode in ("hard", "online"):
        return 0
    if mode == "views":
        return member(len(encode_npy(np.zeros(views_per_image(req), viewlabels.record_dtype(n, k)))))
    if k is not None:
        return member(len(encode_npy(np.zeros(k, topk.record_dtype(n)))))
    return member(len(encode_npy(np.zeros(n, np.float16))))


def image_payload(real, fmt, synthetic: bool) -> int:
    """The largest image member payload to expect: `PER_CLASS` real images of every class
    encoded in `fmt` (the first ones of each class: the estimate is the same on every rerun),
    or for synthesis (PNG of optimised pixels, which compress worse than real ones) zlib's bound
    for the raw pixels plus PNG's chunks."""
    import torch

    c, h, w = real.image_shape
    if synthetic:
        raw = c * h * w + h                               # + one filter byte per row
        return raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13 + 57 + 12 * math.ceil(raw / 8192)
    idx = torch.cat([real.class_indices(y)[:PER_CLASS] for y in range(real.num_classes)])
    u8 = real.get_u8(idx).numpy()
    return max(len(fmt.encode(img)) for img in u8)


SHARD_SPLITS = (8, 4, 2, 1)           # min_shards tried under a budget, the writer's default first


def output_bytes(n: int, per_sample: int, shard_size: int, teacher: int = 0, min_shards: int | None = None) -> int:
    """Bytes on disk of `n` samples of `per_sample` bytes each in the writer's shards (+ the
    online teacher's `teacher`), split as `output_shard_size(n, shard_size, min_shards)`."""
    from ..io.output import MIN_SHARDS, TAR_BLOCK, TAR_RECORD, output_shard_size

    if n < 1:
        return teacher
    per = output_shard_size(n, shard_size, MIN_SHARDS if min_shards is None else min_shards)
    full, rest = divmod(n, per)
    shard = lambda m: TAR_RECORD * math.ceil((m * per_sample + 2 * TAR_BLOCK) / TAR_RECORD)  # noqa: E731
    return full * shard(per) + (shard(rest) if rest else 0) + teacher


def teacher_bytes(real, req) -> int:
    """An online output's `teacher.pt` (0 for other labels): `weights_bytes`."""
    return weights_bytes(real, req) if label_mode(req) == "online" else 0


def weights_bytes(real, req) -> int:
    """The teacher's weights as `torch.save` writes them (what `--labels online` ships)."""
    import io

    import torch

    from ..nets import build_net

    net = build_net(req.teacher_config.model, real.image_shape[0], real.num_classes, tuple(real.image_shape[1:]))
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    return len(buf.getvalue())


def choose(real, req, fmt) -> dict:
    """The budget block of `req.budget` on `real`: `requested` (as typed), `bytes` (resolved),
    `ipc` (the largest whose estimate fits, at most the smallest class), `estimated` (its bytes),
    `per_sample` (bytes on disk by role), `min_shards` (the writer's split: 8 unless fewer shards
    fit a larger IPC, SHARD_SPLITS). UsageError when even IPC 1 in one shard does not fit."""
    kind, value = parse_budget(req.budget)
    budget = int(value * input_bytes(real)) if kind == "share" else int(value)
    roles = sample_bytes(real, req, fmt)
    per_sample, teacher = sum(roles.values()), teacher_bytes(real, req)
    n_cls = real.num_classes
    costs = {k: (lambda ipc, k=k: output_bytes(ipc * n_cls, per_sample, req.shard_size, teacher, k))
             for k in SHARD_SPLITS}
    if costs[1](1) > budget:
        raise UsageError(f"--budget {req.budget} ({budget:,} bytes) is below one image per class: the smallest "
                         f"budget that fits is {costs[1](1):,} bytes (IPC 1: {n_cls} samples of about "
                         f"{per_sample:,} bytes on disk in one shard"
                         f"{f' + the {teacher:,}-byte teacher' if teacher else ''})")
    cap = min(real.class_counts())
    best = None                                       # (ipc, min_shards): the largest IPC, then the most shards
    for k, cost in costs.items():
        if cost(1) > budget:
            continue
        # cost grows with ipc but not strictly (shard count)
        ipc = max(i for i in range(1, cap + 1) if cost(i) <= budget) if cap <= 4096 else _search(cost, budget, cap)
        if best is None or ipc > best[0]:
            best = (ipc, k)
    ipc, k = best
    return {"requested": str(req.budget), "bytes": budget, "ipc": ipc, "estimated": costs[k](ipc),
            "min_shards": k, "per_sample": roles, **({"teacher": teacher} if teacher else {}),
            **({"input_bytes": input_bytes(real)} if kind == "share" else {}),
            **({"capped_by_class_size": True} if ipc == cap and costs[k](cap) < budget else {})}


def _search(cost, budget: int, cap: int) -> int:
    """The largest ipc <= cap with cost(ipc) <= budget, for large classes: bisection to the
    boundary, then a scan down past the shard-count steps."""
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    best = lo
    for i in range(min(cap, lo + 64), lo, -1):
        if cost(i) <= budget:
            return i
    return best
