"""The Python API under the CLI: distill, evaluate, plan. No printing here.

Every function returns a JSON-able report dict; errors are `dcompress.errors` exceptions.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import __version__
from .checkpoint import Checkpointer
from .config import config_dict, resolve_config
from .errors import UsageError
from .faults import crash_point
from .io.atomic import check_target, work_dir_for
from .io.output import one_hot_logits, write_output
from .io.shards import env_versions, read_real, resolve_urls
from .registry import get_method
from .train.teacher import get_teacher
from .types import RealData, RunSpec, default_paths

ProgressFn = Callable[[int, int, str], None]
LABEL_MODES = ("auto", "hard", "teacher", "learned")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def ipc_from(real: RealData, ipc: int | None, ratio: float | None) -> int:
    """Images per class from --ipc or --ratio (fraction of the input, class-balanced)."""
    if (ipc is None) == (ratio is None):
        raise UsageError("give exactly one of --ipc or --ratio")
    if ratio is not None:
        if not (0 < ratio <= 1):
            raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
        return max(1, round(ratio * len(real) / real.num_classes))
    if ipc < 1:
        raise UsageError(f"--ipc must be >= 1, got {ipc}")
    return ipc


def load_real(urls: str | Iterable[str], *, max_bad: int = 100, progress: ProgressFn | None = None) -> RealData:
    inp = resolve_urls(urls)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress and done[0] % 2000 == 0:
            progress(done[0], 0, "reading shards")
    return read_real(inp, max_bad=max_bad, progress=tick)


def plan(real: RealData, method: str, ipc: int, cfg, shard_size: int) -> dict:
    c, h, w = real.image_shape
    m_cls = get_method(method)
    n_out = ipc * real.num_classes
    def member(nbytes: float) -> float:  # tar: 512-byte header + data padded to 512
        return 512 + 512 * math.ceil(nbytes / 512)
    per_sample = (member(0.7 * c * h * w + 70) + member(2) + member(128 + 2 * real.num_classes) + member(120)
                  + (member(128 + 4 * c * h * w) if m_cls.info.kind == "synthesis" else 0))
    return {"method": method, "kind": m_cls.info.kind, "classes": real.num_classes, "class_names": real.class_names,
            "class_counts": real.class_counts(), "input_samples": len(real), "image_shape": [c, h, w],
            "ipc": ipc, "output_samples": n_out, "shards": max(1, math.ceil(n_out / shard_size)),
            "estimated_output_bytes": int(n_out * per_sample + 10240), "config": config_dict(cfg),
            "bad_samples": real.source["bad_samples"]}


def distill(urls, method: str, *, out: str | Path, ipc: int | None = None, ratio: float | None = None,
            seed: int = 0, device: str = "auto", config: str | Path | None = None, sets: Iterable[str] = (),
            resume: bool = True, labels: str = "auto", teacher: str | Path | None = None, max_bad: int = 100,
            shard_size: int = 1000, ckpt_every: int = 50, dry_run: bool = False, options: dict | None = None,
            progress: ProgressFn | None = None, log: Callable[[dict], None] | None = None,
            real: RealData | None = None) -> dict:
    """Compresses the dataset at `urls` with `method` into `out`; returns the run report."""
    m_cls = get_method(method)
    cfg = resolve_config(m_cls.Config, file=config, sets=list(sets))
    if labels not in LABEL_MODES:
        raise UsageError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {shard_size}")
    dev = resolve_device(device)
    out = Path(out).absolute()
    if not dry_run:
        check_target(out)
    t0 = time.time()
    if real is None:
        real = load_real(urls, max_bad=max_bad, progress=progress)
    n_ipc = ipc_from(real, ipc, ratio)
    t_read = time.time() - t0
    if dry_run:
        return {"status": "dry-run", "plan": plan(real, method, n_ipc, cfg, shard_size)}
    log = log or (lambda _: None)
    identity = {"method": method, "config": config_dict(cfg), "ipc": n_ipc, "seed": seed, "device": dev.type,
                "fingerprint": real.source["fingerprint"], "options": options or {}, "labels": labels}
    ckpt = Checkpointer(work_dir_for(out), identity, every=ckpt_every, resume=resume)
    spec = RunSpec(ipc=n_ipc, device=dev, seed=seed, work_dir=ckpt.dir, resume=resume, ckpt_every=ckpt_every,
                   cache_dir=default_paths()["cache"], teacher=Path(teacher) if teacher else None,
                   options={"ratio": ratio, **(options or {})}, progress=progress, ckpt=ckpt)
    generator = torch.Generator().manual_seed(seed)
    t1 = time.time()
    cset = m_cls(cfg).fit(real, spec, generator=generator, log=log)
    t_fit = time.time() - t1
    mode = labels
    if mode == "auto":
        mode = "learned" if cset.logits is not None else ("teacher" if m_cls.info.kind == "selection" else "hard")
    teacher_info = None
    if mode == "learned":
        if cset.logits is None:
            raise UsageError(f"--labels learned: method {method!r} does not learn labels")
    elif mode == "teacher":
        t = get_teacher(real, spec, log=log)
        teacher_info = t.info
        cset.logits = t.logits(cset.images, dev)
    else:
        cset.logits = one_hot_logits(cset.labels, real.num_classes)
    cset.label_kind = mode
    protocol = dataclasses.replace(cset.protocol, soft_labels=mode != "hard")
    t2 = time.time()
    block = {
        "version": __version__, "kind": "compressed",
        "method": {"name": method, "kind": m_cls.info.kind, "ipc": n_ipc, "ratio": ratio, "seed": seed,
                   "device": dev.type, "config": config_dict(cfg), "options": {k: str(v) for k, v in (options or {}).items()}},
        "source": {k: real.source[k] for k in ("urls", "num_samples", "fingerprint", "class_counts")},
        "bad_samples": real.source["bad_samples"],
        "class_names": real.class_names,
        "labels": {"hard": "cls", "soft": "logits.npy", "kind": mode, "dtype": "float16", "temperature": 1.0,
                   "teacher": teacher_info},
        "normalization": {"mean": list(real.mean), "std": list(real.std)},
        "image_shape": list(real.image_shape),
        "exact_tensor": "npy" if cset.synthetic else None,
        "learned": {"lr": cset.lr, "lrs": cset.lrs},
        "eval_protocol": dataclasses.asdict(protocol),
        "info": cset.info,
        "env": env_versions(),
    }
    block["timings"] = {"read_s": round(t_read, 2), "fit_s": round(t_fit, 2)}
    manifest = write_output(out, cset, class_names=real.class_names, mean=real.mean, std=real.std,
                            method=method, block=block, shard_size=shard_size)
    crash_point("distill.written")
    ckpt.clear()
    return {"status": "ok", "out": str(out), "method": method, "ipc": n_ipc, "samples": len(cset),
            "shards": len(manifest["shardlist"]), "labels": mode, "learned_lr": cset.lr,
            "bad_samples": real.source["bad_samples"]["count"], "resumed_from": ckpt.resumed_from,
            "timings": {**block["timings"], "write_s": round(time.time() - t2, 2)}}
