"""Top-k pruned soft labels (`distill --label-topk K`, docs/format.md "Top-k soft labels").

A sample's `<key>.topk.npy` holds its K largest logits as one structured array of K records
`(idx, val)`: `idx` the class index (uint16 when the set has at most 65,536 classes, else
int32), `val` the logit (float16), largest first, ties by lower class index. One `.npy`
(`np.save`, no pickle) instead of an `.npz`: a zip member carries a timestamp, and outputs must be
byte-identical for the same seed and inputs.

Reading it back (`expand`): a full-width logit vector [C] with the K kept logits in place and
`-inf` everywhere else, so `softmax(logits / T)` is the teacher's distribution renormalised over
its K most likely classes and exactly 0 elsewhere, at every temperature.
"""
from __future__ import annotations

import numpy as np

MEMBER = "topk.npy"


def record_dtype(num_classes: int) -> np.dtype:
    return np.dtype([("idx", "<u2" if num_classes <= 65536 else "<i4"), ("val", "<f2")])


def prune(logits: np.ndarray, k: int) -> np.ndarray:
    """[C] float logits -> the structured [k] record array (largest first, ties: lower index)."""
    row = np.asarray(logits, dtype=np.float32)
    idx = np.argsort(-row, kind="stable")[:k]
    out = np.empty(k, dtype=record_dtype(row.shape[0]))
    out["idx"], out["val"] = idx, row[idx].astype(np.float16)
    return out


def expand(rec: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """The structured record array of one sample -> float32 [num_classes] logits, -inf where not
    kept. ValueError (naming what is wrong) for a foreign array: not K records of (idx, val),
    an index out of range or repeated, or a non-finite value."""
    names = rec.dtype.names or ()
    if rec.ndim != 1 or rec.shape[0] != k or set(names) != {"idx", "val"}:
        raise ValueError(f"expected {k} records (idx, val), found {rec.dtype} {list(rec.shape)}")
    if rec["idx"].dtype.kind not in "iu" or rec["val"].dtype.kind != "f":
        raise ValueError(f"expected integer idx and float val, found {rec.dtype}")
    idx = rec["idx"].astype(np.int64)
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= num_classes or np.unique(idx).size != idx.size:
        raise ValueError(f"class indices must be distinct and in [0, {num_classes}), found {idx.tolist()[:8]}")
    val = rec["val"].astype(np.float32)
    if not np.isfinite(val).all():
        raise ValueError("non-finite logit")
    out = np.full(num_classes, -np.inf, dtype=np.float32)
    out[idx] = val
    return out


def stored_form(logits, k: int | None):
    """What a set's soft labels look like after writing and reading them back, for [N, C] logits
    (a torch tensor or an array, same type back): float16-rounded, and with `k` only each row's K
    largest kept (ties: lower index) and -inf elsewhere, as `prune` then `expand` do. The fair
    baselines give their random subsets' teacher logits this form, so both sides train on labels
    of the same precision and pruning."""
    import torch

    as_tensor = isinstance(logits, torch.Tensor)
    arr = (logits.detach().cpu().numpy() if as_tensor else np.asarray(logits)).astype(np.float32)
    out = arr.astype(np.float16).astype(np.float32)
    if k is not None and k < arr.shape[1]:
        drop = np.argsort(-arr, axis=1, kind="stable")[:, k:]
        np.put_along_axis(out, drop, -np.inf, axis=1)
    return torch.from_numpy(out).to(logits.device) if as_tensor else out

