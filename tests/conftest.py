"""Tiny fixtures written on the fly (no fixtures on disk)."""
from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds


# The device the method unit tests run on: `DCOMPRESS_TEST_DEVICE=cuda make test` runs them on a
# GPU (CI has none; bitwise resume equalities are promised on the CPU only).
TEST_DEVICE = os.environ.get("DCOMPRESS_TEST_DEVICE", "cpu")


@pytest.fixture
def device():
    import torch

    return torch.device(TEST_DEVICE)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Fixtures are tiny: intra-op threads buy nothing, and on a busy 2-core machine every
    OpenMP region of a 2-thread pool waits for a time slice (measured 2-10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Module- and session-scoped fixtures run before the per-test cache below is set: they get
    this session's cache, never the user's ~/.cache/dcompress (decoded stores, teachers)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "session-cache"))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_images(n_per_class: int, classes: int = 3, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent blobs so tiny networks can learn something."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(classes):
        cy, cx = (c + 1) * size // (classes + 1), size // 2
        for _ in range(n_per_class):
            blob = 200 * np.exp(-((yy - cy - rng.normal(0, 1.5)) ** 2 + (xx - cx - rng.normal(0, 1.5)) ** 2) / 18.0)
            img = np.clip(blob + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
            xs.append(img)
            ys.append(c)
    return np.stack(xs), np.array(ys, dtype=np.uint8)


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    prefix = {"train": "train", "test": "t10k"}[split]
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", *images.shape) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", labels.shape[0]) + labels.tobytes())


def tiny_real():
    """30 in-memory 28x28 images of 3 classes as RealData (no shards): for method unit tests."""
    import torch

    from dcompress.core import RealData, TensorStore

    x, y = make_images(10, classes=3)
    return RealData(store=TensorStore(torch.from_numpy(x).unsqueeze(1)), labels=torch.from_numpy(y).long(),
                    keys=[f"k{i:03d}" for i in range(len(y))], class_names=["a", "b", "c"],
                    mean=(0.2,), std=(0.3,), source={"fingerprint": "tiny"})


def write_tar(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path), encoder=False, mtime=0) as w:
        for s in samples:
            w.write(s)
    return path


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("idx")
    x, y = make_images(12, classes=3)
    write_idx(d, "train", x, y)
    xt, yt = make_images(6, classes=3, seed=1)
    write_idx(d, "test", xt, yt)
    return d


@pytest.fixture(scope="session")
def shards(idx_dir, tmp_path_factory) -> dict:
    from dcompress.io.sources import make_shards

    base = tmp_path_factory.mktemp("shards")
    make_shards(idx_dir, base / "train", fmt="idx", split="train", shard_size=10)
    make_shards(idx_dir, base / "test", fmt="idx", split="test", shard_size=100)
    return {"train": base / "train", "test": base / "test"}


@pytest.fixture(scope="module")
def real(shards):
    """The `shards` training split decoded into RealData."""
    from dcompress.api import load_real

    return load_real(str(shards["train"]))


def frontier_without_times(report: dict) -> dict:
    """A frontier report without what differs between two runs of the same frontier: the
    wall-clock `seconds` of the points and of the whole."""
    import json

    r = json.loads(json.dumps(report))
    r.pop("seconds", None)
    for p in r["points"]:
        p.pop("seconds", None)
    return r
