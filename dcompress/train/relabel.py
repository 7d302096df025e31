"""A teacher's labels for every view of a set: what `--labels views` stores, what the fair
protocol gives a random subset so that both sides train on the same kind of labels, and what
an `--labels online` loader computes on the fly (augment/views.py says what a view is).

View e of the set is drawn from `derive(seed, "views", e)` over the samples in set order, so the
views of a set depend on its seed, its keys and the ViewConfig only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..augment.views import ViewConfig, draw, render
from ..seeds import derive


def sample_keys(labels: torch.Tensor) -> list[tuple[int, int]]:
    """(class, slot) of each sample in set order, the slot its rank within its class: the key
    `c{class:04d}-{slot:05d}` under which io/output.py writes it."""
    seen: dict[int, int] = {}
    keys = []
    for y in labels.tolist():
        keys.append((int(y), seen.get(int(y), 0)))
        seen[int(y)] = keys[-1][1] + 1
    return keys


@dataclass
class SetViews:
    """The views of a set (images normalised [N, C, H, W], hard labels [N]) under `config`:
    `epoch(e)` draws (and caches) epoch e's N records; `images_of(e)` renders them."""

    images: torch.Tensor
    labels: torch.Tensor
    config: ViewConfig
    seed: int
    stored: np.ndarray | None = None      # a `views` output's records [N, E]: replayed, epoch e mod E

    def __post_init__(self) -> None:
        self.keys = sample_keys(self.labels)
        self.index_of = {k: i for i, k in enumerate(self.keys)}
        self._drawn: dict[int, np.ndarray] = {}

    def epoch(self, e: int) -> np.ndarray:
        if self.stored is not None:
            return self.stored[:, e % self.stored.shape[1]]
        if e not in self._drawn:
            self._drawn[e] = draw(self.config, derive(self.seed, "views", e), self.keys, tuple(self.images.shape[-2:]))
        return self._drawn[e]

    def images_of(self, e: int, idx=None) -> torch.Tensor:
        idx = np.arange(len(self.keys)) if idx is None else idx
        return render(self.images, self.epoch(e), self.index_of, idx)


@torch.no_grad()
def label_views(views: SetViews, epochs: int, teacher_logits, log=None) -> tuple[np.ndarray, np.ndarray]:
    """Every view of `epochs` epochs and the teacher's float32 logits for it:
    (records [N, E], logits [N, E, C]). `teacher_logits(x)` maps rendered views to logits."""
    recs, logits = [], []
    for e in range(epochs):
        recs.append(views.epoch(e))
        logits.append(teacher_logits(views.images_of(e)).float().cpu().numpy())
        if log is not None and (e + 1) % max(1, epochs // 10) == 0:
            log({"event": "progress", "stage": "views", "done": e + 1, "total": epochs})
    return np.stack(recs, axis=1), np.stack(logits, axis=1)


def view_training(images: torch.Tensor, labels: torch.Tensor, config: ViewConfig, seed: int, epochs: int,
                  teacher_logits, label_topk: int | None = None):
    """`train_on_set`'s `epoch_data` for a set labelled online: pass p trains on view p mod
    `epochs` of every image, labelled by `teacher_logits` in the stored form of a `views` set
    with `label_topk` (float16, top-K) — how the fair protocol gives a random subset the same
    labels as the set it is compared with."""
    from ..io import topk

    sv = SetViews(images, labels, config, seed)

    def epoch_data(p: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = sv.images_of(p % epochs)
        return x, topk.stored_form(teacher_logits(x).float().cpu(), label_topk)
    return epoch_data
