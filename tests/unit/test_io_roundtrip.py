"""Shards written by io.writer read back through io.reader: pixels, labels, keys, statistics and
fingerprint equal the direct computation; the loader reads an output back."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from dcompress.io.codecs import encode_png
from dcompress.io.reader import read_real
from dcompress.io.stats import channel_stats, fingerprint_of
from dcompress.io.urls import resolve_urls
from dcompress.io.writer import write_shards


def test_write_then_read_gives_the_same_data_stats_and_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (23, 3, 9, 7), dtype=np.uint8)
    y = rng.integers(0, 4, 23)
    y[:4] = np.arange(4)
    samples = ({"__key__": f"s{i:03d}", "png": encode_png(x[i]), "cls": str(int(y[i])).encode()} for i in range(23))
    written = write_shards(tmp_path, samples, prefix="t", shard_size=10)
    assert [(p.name, n) for p, n in written] == [("t-000000.tar", 10), ("t-000001.tar", 10), ("t-000002.tar", 3)]
    real = read_real(resolve_urls(str(tmp_path / "t-{000000..000002}.tar")))
    assert torch.equal(real.get_u8(torch.arange(23)), torch.from_numpy(x)) and real.labels.tolist() == y.tolist()
    assert list(real.keys) == [f"s{i:03d}" for i in range(23)] and real.num_classes == 4
    xf = torch.from_numpy(x).double().div(255).transpose(0, 1).reshape(3, -1)
    assert (real.mean, real.std) == (tuple(round(float(v), 6) for v in xf.mean(1)),
                                     tuple(round(float(v), 6) for v in xf.std(1)))
    h = hashlib.sha256()
    h.update("\n".join(real.keys).encode())
    h.update(real.labels.numpy().tobytes())
    h.update(x.tobytes())
    assert real.source["fingerprint"] == "sha256:" + h.hexdigest()


def test_stats_and_fingerprint_do_not_depend_on_chunking():
    x = torch.randint(0, 256, (50, 2, 3, 3), dtype=torch.uint8)
    assert channel_stats(x, chunk=7) == channel_stats(x, chunk=4096)
    keys, labels = [str(i) for i in range(50)], torch.zeros(50, dtype=torch.int64)
    assert fingerprint_of(keys, labels, x) == fingerprint_of(keys, labels, x.clone())
