"""Writing sample dicts into WebDataset shards (webdataset's ShardWriter), and the versions of
the libraries that wrote them."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import webdataset as wds


def write_shards(out_dir: Path, samples: Iterable[dict], *, prefix: str, shard_size: int,
                 max_bytes: float = 3e9, start: int = 0) -> list[tuple[Path, int]]:
    """Writes sample dicts (`__key__` + ext -> bytes) into `prefix-%06d.tar` shards of at most
    `shard_size` samples (and about `max_bytes`), through `webdataset.ShardWriter`.

    Tar members get mtime 0 and fixed owner/mode, so equal samples give byte-identical shards.
    `start`: the number of the first shard (a torchrun rank writes shards from the middle).
    Returns [(path, nsamples)] in order.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    counts: Counter[str] = Counter()
    with wds.ShardWriter(str(out_dir / f"{prefix}-%06d.tar"), maxcount=shard_size, maxsize=max_bytes, verbose=0,
                         encoder=False, mtime=0, user="dcompress", group="dcompress",
                         start_shard=start) as writer:
        for sample in samples:
            writer.write(sample)
            counts[writer.fname] += 1
    return [(Path(name), n) for name, n in counts.items()]


def env_versions() -> dict:
    """The versions of the libraries a run used, for the manifest's `env` block. torch's comes
    from the module (it carries the build, e.g. `+cu130`; every writer has torch loaded); the
    others from the installed distributions' metadata, so recording them imports nothing:
    importing torchvision and faiss only for their version strings cost ~3 s per `distill`."""
    import platform

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": _version("torchvision"), "numpy": np.__version__, "webdataset": _version("webdataset")}
    faiss = next((v for v in map(_version, ("faiss-cpu", "faiss-gpu", "faiss")) if v != "?"), None)
    if faiss is not None:
        out["faiss"] = faiss
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
