"""io/members.py groups tar members into samples exactly as webdataset's group_by_keys does
(it cannot import webdataset: that imports torch)."""
from __future__ import annotations

import random

import pytest
import webdataset as wds

from dcompress.io.members import group_samples


def webdataset_groups(members, url):
    files = ({"fname": name, "data": data, "__url__": url} for name, data in members)
    return list(wds.tariterators.group_by_keys(files))


NAMES = ["a.png", "a.cls", "a.logits.npy", "b.PNG", "b.json", "dir/c.png", "dir/c.cls", "d", "e.", ".hidden",
         "f.tar.gz", "x/y.z/w.png", "a.png"]


@pytest.mark.parametrize("seed", range(40))
def test_same_samples_as_webdataset(seed):
    rng = random.Random(seed)
    members = [(rng.choice(NAMES), bytes([rng.randrange(256)])) for _ in range(rng.randrange(1, 12))]
    try:
        expected = webdataset_groups(members, "u.tar")
    except ValueError:                       # a member repeated within a sample
        with pytest.raises(ValueError, match="duplicate"):
            list(group_samples(iter(members), "u.tar"))
        return
    assert list(group_samples(iter(members), "u.tar")) == expected


def test_written_output_reads_the_same(real, tmp_path):
    from dcompress import api
    from dcompress.io.members import output_samples, shard_samples

    api.distill(None, "random", out=tmp_path / "o", ipc=2, labels="hard", device="cpu", real=real)
    _, manifest, _, samples = output_samples(tmp_path / "o")
    ours = list(samples)
    shards = [tmp_path / "o" / row["url"] for row in manifest["shardlist"]]   # 6 samples: 6 shards
    theirs = [{k: v for k, v in s.items() if k != "__local_path__"}
              for s in wds.WebDataset(list(map(str, shards)), shardshuffle=False)]
    assert len(shards) == 6 and [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
    assert all(o[k] == t[k] for o, t in zip(ours, theirs) for k in o if k != "__url__")
    assert [s for p in shards for s in shard_samples(p.read_bytes(), str(p))] == ours
