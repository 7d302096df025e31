"""Small shared pieces of the methods: selection results, and what the synthesis methods share
(per-class initial images from derived seeds, per-class draws, results)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..augment import dsa as _dsa
from ..core import CompressedSet, LogFn, RealData, RunSpec
from ..io.schema import EvalProtocol
from ..errors import InputDataError, UsageError


def check_ipc(real: RealData, ipc: int) -> None:
    """InputDataError naming the class when a class has fewer than `ipc` images."""
    if ipc < 1:
        raise InputDataError(f"--ipc must be >= 1, got {ipc}")
    for c, n in enumerate(real.class_counts()):
        if n < ipc:
            damaged = (real.source.get("input") or {}).get("damaged_shards") or []
            lost = (f"; {sum(d['lost'] for d in damaged)} sample(s) were lost to {len(damaged)} damaged shard(s) "
                    f"skipped under --max-bad (first: {damaged[0]['url']}: {damaged[0]['problem']})") if damaged else ""
            raise InputDataError(f"class {c} ({real.class_names[c]!r}) has {n} images, fewer than --ipc {ipc}{lost}")


def selection_result(real: RealData, indices: list[torch.Tensor], info: dict | None = None,
                     extra: list[dict] | None = None) -> CompressedSet:
    """A CompressedSet of real samples: `indices[c]` are the picks of class c, in pick order."""
    idx = torch.cat([torch.as_tensor(i, dtype=torch.int64) for i in indices])
    sources = [{"source_key": real.keys[int(i)], "source_index": int(i)} for i in idx]
    if extra is not None:
        for s, e in zip(sources, extra):
            s.update(e)
    return CompressedSet(images=real.get(idx), labels=real.labels[idx].clone(), synthetic=False,
                         sources=sources, info=info or {})


def class_labels(num_classes: int, ipc: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(ipc)


def select_on_teacher_features(real: RealData, spec: RunSpec, log: LogFn,
                               order: Callable[[torch.Tensor, int], torch.Tensor]) -> CompressedSet:
    """Per class, `order(class embeddings, ipc)` picks indices on the teacher's penultimate
    embeddings (herding, k-center): the shared body of the embedding-greedy baselines."""
    from ..train.teacher import get_teacher, teacher_features

    check_ipc(real, spec.ipc)
    feats = teacher_features(get_teacher(real, spec, log=log), real, spec.device, log=log)
    picks = []
    for c in range(real.num_classes):
        pool = real.class_indices(c)
        picks.append(pool[order(feats[pool], spec.ipc)])
    return selection_result(real, picks, info={"features": "teacher_embedding", "feature_dim": feats.shape[1]})


# ---------------------------------------------------------------------------------------------
# Shared by the synthesis methods

def eval_model_for(model: str) -> str:
    """The evaluation network of a distillation network: ConvNet BN variants are evaluated
    without BN (reference `get_eval_pool('S')`: 'ConvNetBN' -> 'ConvNet')."""
    name = model.strip().lower()
    if not name.startswith("convnet"):
        return model
    tokens = [t for t in name.removeprefix("convnetbn").removeprefix("convnet").split("_") if t and t != "bn"]
    return "_".join(["convnet", *tokens])


def parse_strategy_or_usage(strategy: str | None) -> str | None:
    """Validates a DSA strategy string early; None/'' /'none' disable augmentation."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return None
    from ..augment import dsa

    try:
        dsa.parse_strategy(strategy)
    except (ValueError, KeyError) as e:
        raise UsageError(f"bad dsa_strategy {strategy!r}: {e}") from None
    return strategy


# ----------------------------------------------------------------------------------------------
# Loop bookkeeping


def init_images_by_class(real: RealData, classes, ipc: int, init: str, seed: int,
                         device: torch.device) -> tuple[torch.Tensor, list[str | None]]:
    """Initial synthetic images of `classes` [len(classes)*ipc, ch, H, W] (in that order) and each
    slot's source key; class c's draw comes from `derive(seed, "init", c)`, so it does not depend
    on the other classes. 'real': random real images of the class; 'noise': N(0, 1)."""
    from ..seeds import derive

    parts, keys = [], []
    for c in classes:
        g = derive(seed, "init", c)
        if init == "real":
            idx = real.sample_class(c, ipc, g)
            parts.append(real.get(idx, device))
            keys += [real.keys[int(i)] for i in idx]
        elif init == "noise":
            ch, h, w = real.image_shape
            parts.append(torch.randn(ipc, ch, h, w, generator=g).to(device))
            keys += [None] * ipc
        else:
            raise UsageError(f"init must be 'real' or 'noise', got {init!r}")
    return torch.cat(parts), keys


@dataclass
class ClassDraw:
    """One class's random draws for an iteration: real sample indices and Siamese aug params."""

    real_idx: torch.Tensor
    aug: object | None


def draw_class(real: RealData, c: int, batch_real: int, strategy: str | None, generator: torch.Generator,
               device: torch.device) -> ClassDraw:
    """Class c's draws for one iteration: `batch_real` real indices, then one Siamese DSA draw
    (DM; DC/DSA's image-slot split, whose whole batches draw the same way)."""
    idx = real.sample_class(c, batch_real, generator)
    params = None
    if strategy is not None:
        params = _dsa.make_params(strategy, idx.numel(), real.image_shape, generator=generator,
                                 siamese=True, device=device)
    return ClassDraw(idx, params)


def slot_sources(init_keys: list[str | None], ipc: int) -> list[dict]:
    """Each synthetic image's `sources` entry: its `slot` within its class (class-major rows) and
    the key of the real image it started from (None: noise)."""
    return [{"slot": i % ipc, "init_source_key": k} for i, k in enumerate(init_keys)]


def synthesis_result(images: torch.Tensor, real: RealData, ipc: int, init_keys: list[str | None],
                     protocol: EvalProtocol, info: dict) -> CompressedSet:
    """CompressedSet of optimised images, hard labels (class-major), `slot_sources`."""
    return CompressedSet(images=images.detach().float().cpu().clone(), labels=class_labels(real.num_classes, ipc),
                         logits=None, synthetic=True, sources=slot_sources(init_keys, ipc), protocol=protocol,
                         info=info)
