"""Derived seeds: every random draw in dcompress comes from a generator derived from the run's
seed and a few tags (iteration, class, purpose), never from the global RNG or the clock.

    g = derive(seed, it, c)        # the draws of iteration `it` for class `c`
    g = derive(seed, "init", c)    # class c's initial synthetic images (every synthesis method)
    g = derive(seed, "fit")        # a selection method's one stream (random, DQ's bin sampling)
    g = derive(seed, "expert", 3)  # expert 3 of a buffer

The one way a method gets randomness: `derive(spec.seed, *tags)`, the tags naming what the
draws are for: an iteration (and class, outer step) for per-iteration draws, a purpose name
("init", "net", "experts", "epoch", "fit", ...) for the rest. `Method.fit` takes no generator.

A derived stream depends on (seed, tags) only: a resumed run needs no RNG state, and work split
over processes (classes, experts, evaluation runs) draws the same numbers as one process.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit integer seed from sha256 of (seed, *tags)."""
    key = ":".join(["dcompress", str(int(seed)), *map(str, tags)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def derive(seed: int, *tags: Any) -> torch.Generator:
    """A CPU torch.Generator seeded from (seed, *tags); equal arguments give equal streams."""
    return torch.Generator().manual_seed(derive_seed(seed, *tags))
