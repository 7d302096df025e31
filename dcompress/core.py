"""Core data types shared by every stage. No side effects on import.

Data flows: shards -> RealData -> Method.fit -> CompressedSet -> shards + manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch

from .io.schema import EvalProtocol

LogFn = Callable[[dict], None]


class Store(Protocol):
    """Where RealData's decoded uint8 pixels live: an input's decoded store on disk
    (`io.store.DecodedStore`, rows read with `pread`) or in memory (TensorStore). Readers ask
    for rows, never for the whole array."""

    shape: tuple[int, int, int, int]                 # [N, C, H, W]

    def read(self, idx: torch.Tensor) -> torch.Tensor:  # uint8 [len(idx), C, H, W], CPU
        ...


class TensorStore:
    """An in-memory uint8 tensor [N, C, H, W] as a Store."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"TensorStore needs uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
        self.images = images
        self.shape = tuple(int(v) for v in images.shape)

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]


@dataclass
class RealData:
    """A decoded image-classification dataset over a pixel Store.

    Methods and trainers read batches (`get`, `get_u8`, `sample_class`, `class_indices`,
    `RealView`), never the whole array, so the store can be larger than memory.

    Attributes:
        store: the uint8 pixels [N, C, H, W] (`io.store.DecodedStore`, or `TensorStore` in memory).
        labels: int64 tensor [N], values in [0, num_classes).
        keys: sample keys as read from the shards (unique), length N.
        class_names: one name per class index.
        mean, std: per-channel normalisation, in [0, 1] pixel units.
        source: provenance (urls, fingerprint, counts, skipped samples).
    """

    store: Store
    labels: torch.Tensor
    keys: list[str]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: dict = field(default_factory=dict)
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.store.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices (int64, ascending) of the samples of class `c`."""
        if self._by_class is None:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class[c]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def normalize(self, images_u8: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 [B, C, H, W] -> float32 normalised on `device`."""
        return normalize(images_u8.to(device), self.mean, self.std)

    def get(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Normalised float32 images for sample indices `idx`."""
        return self.normalize(self.store.read(idx), device)

    def get_u8(self, idx: torch.Tensor) -> torch.Tensor:
        """The stored uint8 images [len(idx), C, H, W] of sample indices `idx` (CPU)."""
        return self.store.read(idx)

    def subset(self, idx: torch.Tensor, **source: Any) -> "RealData":
        """The samples `idx` as a new in-memory RealData (same classes and normalisation);
        `source` entries update the provenance (e.g. a fingerprint naming the subset)."""
        return RealData(store=TensorStore(self.store.read(idx)), labels=self.labels[idx].clone(),
                        keys=[self.keys[i] for i in idx.tolist()], class_names=self.class_names, mean=self.mean,
                        std=self.std, source={**self.source, **source})

    def sample_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` random indices of class `c` (without replacement when n <= class size)."""
        pool = self.class_indices(c)
        if n <= pool.numel():
            return pool[torch.randperm(pool.numel(), generator=generator)[:n]]
        return pool[torch.randint(pool.numel(), (n,), generator=generator)]


class RealView:
    """Samples `indices` of a RealData as a batch source: `len(view)`, `view.get(pos, device)`
    (normalised float32 of positions `pos`), `view.labels`. Trainers read batches through it
    instead of holding the whole normalised set on the device (4x the uint8 bytes)."""

    def __init__(self, real: "RealData", indices: torch.Tensor):
        self.real, self.indices = real, indices
        self.labels = real.labels[indices]

    def __len__(self) -> int:
        return int(self.indices.numel())

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.real.image_shape)

    def get(self, positions: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.real.get(self.indices[positions.cpu()], device)


def batch_of(images, positions: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Rows `positions` of a float tensor (already on its device) or of a RealView, on `device`."""
    if isinstance(images, torch.Tensor):
        return images[positions.to(images.device)]
    return images.get(positions, device)


def normalize(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    x = images_u8.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def pixel_range(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low, high) per channel of normalised images that are valid pixels: where 0 and 1 land
    after normalisation with `mean`/`std`."""
    return tuple((0 - m) / s for m, s in zip(mean, std)), tuple((1 - m) / s for m, s in zip(mean, std))


def denormalize_to_u8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """float normalised [B, C, H, W] -> uint8 (clamped, rounded)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).mul(255.0).round().clamp(0, 255).to(torch.uint8)


@dataclass
class CompressedSet:
    """The result of a method.

    Attributes:
        images: float32 [M, C, H, W], normalised with the input's mean/std.
        labels: int64 [M] hard labels (the class each image stands for).
        logits: float32 [M, num_classes] learned logits, or None (the runner then
            fills teacher or one-hot logits according to `--labels`).
        label_kind: "hard" | "teacher" | "learned" | "views" | "online".
        views: `views`/`online` labels: each sample's E view records [M, E]
            (`augment.views.VIEW`); view_logits: `views` labels: the teacher's float32 logits
            of every view [M, E, num_classes].
        synthetic: True for synthesis methods (their exact tensors are stored as .npy).
        sources: per-sample provenance dicts, e.g. {"source_key": k} or {"slot": i}.
        lr: learned learning rate (MTT/DATM), or None.
        lrs: learned per-step learning rates (DD), or None.
        protocol: the method's own evaluation protocol.
        info: method-specific provenance for the manifest (JSON-serialisable).
        extra_files: auxiliary files for the output folder (e.g. DQ's bins.npy), listed in
            the manifest under `extra_files`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor | None = None
    label_kind: str = "hard"
    synthetic: bool = False
    sources: list[dict] = field(default_factory=list)
    lr: float | None = None
    lrs: list[float] | None = None
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    info: dict = field(default_factory=dict)
    extra_files: dict = field(default_factory=dict)  # name -> bytes, written beside the shards
    views: Any = None
    view_logits: Any = None

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass(frozen=True)
class RunSpec:
    """Everything a method needs besides data and its own Config.

    Attributes:
        ipc: images per class to produce.
        device: where to compute.
        seed: the run's seed: every random draw of a method comes from
            `seeds.derive(seed, *tags)` (dcompress/seeds.py).
        work_dir: private scratch folder of this run (checkpoints live here).
        resume: continue from the last checkpoint in `work_dir` when present.
        ckpt_every: checkpoint period in iterations (synthesis methods).
        cache_dir: shared cache (teacher networks, expert buffers).
        teacher: path to a user-provided teacher checkpoint, or None.
        ratio: `--ratio` (fraction of each class kept) when given instead of `--ipc`.
        experts: the expert buffer folder given with `--experts` (MTT/DATM), or None.
        teacher_config: the TeacherConfig for a teacher trained here (None: defaults).
        progress: callback(completed, total, description) for long loops.
        ckpt: the run's Checkpointer (load/save/due), or None.
        pixel_range: (low, high) per channel of the normalised images that are valid pixels
            ((0 - mean) / std, (1 - mean) / std), or None. When set (`--no-exact-images`),
            SynthesisLoop projects the optimised images into it after every iteration, so the
            8-bit PNG written is the set that was optimised, up to rounding.
    """

    ipc: int
    device: torch.device = torch.device("cpu")
    seed: int = 0
    work_dir: Path = Path(".")
    resume: bool = True
    ckpt_every: int = 50
    cache_dir: Path = Path(".")
    teacher: Path | None = None
    ratio: float | None = None
    experts: Path | None = None
    teacher_config: Any = None
    progress: Callable[[int, int, str], None] | None = None
    ckpt: Any = None          # checkpoint.Checkpointer for this run (None: no checkpoints)
    pixel_range: tuple | None = None   # (low, high) per channel: images kept in range (--no-exact-images)


class Method(Protocol):
    """What every method implements. See docs/adding-a-method.md."""

    info: ClassVar[Any]       # registry.MethodInfo
    Config: ClassVar[type]    # frozen dataclass; defaults = the reference's

    def __init__(self, config: Any) -> None: ...

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        """The compressed set of `real`; every random draw from `derive(spec.seed, *tags)`."""

