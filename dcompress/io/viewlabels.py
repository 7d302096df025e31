"""Per-view soft labels (`distill --labels views`, docs/format.md "View labels").

A sample's `<key>.views.npy` holds its E views as one structured array of E records (`np.save`,
no pickle): the view's augmentation (`augment.views.VIEW`: crop box, flip, CutMix partner key,
mixed box, λ) and the teacher's logits for exactly that view: `logits` float16 [C], or with
`--label-topk K` the K largest as `idx` (uint16, int32 beyond 65,536 classes) and `val`
(float16), largest first. Stored per sample, so replaying view e of a sample needs nothing but
the sample and its partner: no batch size, worker count or order to reproduce.
"""
from __future__ import annotations

import numpy as np

MEMBER = "views.npy"
FORMAT = 2                  # labels format of view-label outputs (1: one vector per image)


def record_dtype(num_classes: int, k: int | None = None) -> np.dtype:
    from ..augment.views import VIEW

    fields = [(name, VIEW.fields[name][0]) for name in VIEW.names]
    if k is None:
        return np.dtype(fields + [("logits", "<f2", (num_classes,))])
    idx = "<u2" if num_classes <= 65536 else "<i4"
    return np.dtype(fields + [("idx", idx, (k,)), ("val", "<f2", (k,))])


def pack(views: np.ndarray, logits: np.ndarray, k: int | None = None) -> np.ndarray:
    """E view records and their float logits [E, C] -> the structured [E] array a sample stores."""
    logits = np.asarray(logits, dtype=np.float32)
    out = np.zeros(views.shape[0], dtype=record_dtype(logits.shape[1], k))
    for name in views.dtype.names:
        out[name] = views[name]
    if k is None:
        out["logits"] = logits.astype(np.float16)
    else:
        idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        out["idx"], out["val"] = idx, np.take_along_axis(logits, idx, axis=1).astype(np.float16)
    return out


def unpack(rec: np.ndarray, num_classes: int, k: int | None, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """A sample's stored array -> (its E view records, float32 logits [E, C], -inf outside the
    K kept classes). ValueError naming what is wrong: another record layout, a view count other
    than `epochs`, a class index out of range or repeated, a non-finite logit."""
    from ..augment.views import VIEW

    want = record_dtype(num_classes, k)
    if rec.ndim != 1 or rec.dtype != want:
        raise ValueError(f"expected {epochs} view records of {want.descr}, found {rec.dtype.descr} {list(rec.shape)}")
    if rec.shape[0] != epochs:
        raise ValueError(f"holds {rec.shape[0]} views, the manifest says {epochs}")
    views = np.zeros(epochs, dtype=VIEW)
    for name in VIEW.names:
        views[name] = rec[name]
    if k is None:
        logits = rec["logits"].astype(np.float32)
    else:
        idx = rec["idx"].astype(np.int64)
        if idx.min(initial=0) < 0 or idx.max(initial=0) >= num_classes or \
                any(np.unique(row).size != row.size for row in idx):
            raise ValueError(f"class indices must be distinct and in [0, {num_classes})")
        logits = np.full((epochs, num_classes), -np.inf, dtype=np.float32)
        np.put_along_axis(logits, idx, rec["val"].astype(np.float32), axis=1)
    finite = logits[np.isfinite(logits)] if k is not None else logits
    if k is not None and finite.size != epochs * k or not np.isfinite(finite).all():
        raise ValueError("non-finite logit")
    return views, logits
