"""The decoded store (io.store, io.store_build) and `dcompress cache`: decoded once, identical for any number of
workers, reopened instead of re-decoded, rebuilt when the input or the decode options change,
damaged stores quarantined, never deleted while in use, nothing half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_images, png_bytes, write_tar
from dcompress.api import load_real
from dcompress.cli import app
from dcompress.errors import BusyError, TooManyBadSamples
from dcompress.io.decode import DecodeOptions
from dcompress.io.reader import read_real
from dcompress.io.stats import fingerprint_of, stats_from_sums
from dcompress.io.store import DecodedStore, open_store
from dcompress.io.urls import resolve_urls

runner = CliRunner()


@pytest.fixture
def input_dir(tmp_path) -> Path:
    """5 shards of 8 28x28 images of 3 classes (+ one undecodable sample in shard 2)."""
    x, y = make_images(14, classes=3)
    order = np.random.default_rng(0).permutation(len(y))[:40]
    d = tmp_path / "in"
    d.mkdir()
    for s in range(5):
        samples = [{"__key__": f"s{i:04d}", "png": png_bytes(x[i]), "cls": str(int(y[i])).encode()}
                   for i in order[s * 8:(s + 1) * 8]]
        if s == 2:
            samples.append({"__key__": "broken", "png": b"not a png", "cls": b"1"})
        write_tar(d / f"part-{s:03d}.tar", samples)
    return d


def _files(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    for k in ("build_s", "workers", "created"):
        meta.pop(k)
    return {"meta": meta, **{n: (folder / n).read_bytes() for n in ("images.u8", "labels.npy", "keys.npy")}}


def test_workers_build_identical_stores_and_reads_equal_a_direct_decode(input_dir, tmp_path):
    inp = resolve_urls(str(input_dir))
    stores = {}
    for w in (1, 2):
        s, arrays, info = open_store(inp, DecodeOptions(), cache=tmp_path / f"c{w}", max_bad=5, workers=w)
        assert not info["reused"] and info["workers"] == w and arrays["labels"].shape == (40,)
        stores[w] = s
    assert _files(stores[1].folder) == _files(stores[2].folder)
    real = read_real(inp, DecodeOptions(), max_bad=5, cache=tmp_path / "c1")
    assert real.source["store"]["reused"] and real.source["bad_samples"]["count"] == 1
    # the same pixels, keys and labels as decoding the shards directly, in stream order
    from dcompress.io.codecs import decode_image
    import webdataset as wds
    direct = [(s["__key__"], decode_image(s["png"], "png"), int(s["cls"]))
              for u in sorted(map(str, input_dir.glob("*.tar"))) for s in wds.WebDataset(u, shardshuffle=False)
              if s["__key__"] != "broken"]
    x = torch.from_numpy(np.stack([d[1] for d in direct]))
    assert list(real.keys) == [d[0] for d in direct] and real.labels.tolist() == [d[2] for d in direct]
    idx = torch.tensor([7, 3, 3, 39, 0, 8, 9, 10, 2])          # unsorted, repeated, runs of consecutive rows
    assert torch.equal(real.get_u8(idx), x[idx]) and torch.equal(real.get_u8(torch.arange(40)), x)
    assert real.source["fingerprint"] == fingerprint_of([d[0] for d in direct], real.labels, x)
    from dcompress.io.stats import channel_stats
    assert (real.mean, real.std) == channel_stats(x)


def test_a_changed_shard_or_decode_option_builds_a_new_store(input_dir):
    first = load_real(str(input_dir))
    again = load_real(str(input_dir))
    assert again.source["store"]["reused"] and again.source["store"]["key"] == first.source["store"]["key"]
    other = load_real(str(input_dir), max_pixels=10_000)                 # a decode option: another store
    assert not other.source["store"]["reused"] and other.source["store"]["key"] != first.source["store"]["key"]
    shard = input_dir / "part-004.tar"
    x, _ = make_images(2, classes=1, seed=5)
    write_tar(shard, [{"__key__": "new0", "png": png_bytes(x[0]), "cls": b"0"}])   # same name, new content
    changed = load_real(str(input_dir))
    assert not changed.source["store"]["reused"] and len(changed) == 33 and "new0" in list(changed.keys)
    assert changed.source["fingerprint"] != first.source["fingerprint"]


def test_a_damaged_store_is_quarantined_and_rebuilt(input_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DCOMPRESS_CACHE", str(tmp_path / "cache"))
    real = load_real(str(input_dir))
    folder = Path(real.source["store"]["path"])
    expected = real.get_u8(torch.arange(len(real)))
    del real
    with open(folder / "images.u8", "r+b") as f:
        f.truncate(100)
    notes = []
    again = load_real(str(input_dir), note=notes.append)
    assert not again.source["store"]["reused"] and torch.equal(again.get_u8(torch.arange(len(again))), expected)
    assert any("damaged" in n and "quarantine" in n for n in notes)
    assert list((tmp_path / "cache" / "quarantine").glob("store-*"))


def test_a_reopened_store_still_enforces_max_bad(input_dir):
    load_real(str(input_dir), max_bad=5)
    with pytest.raises(TooManyBadSamples):
        load_real(str(input_dir), max_bad=0)


def test_remote_input_without_md5_is_decoded_but_not_kept(input_dir, tmp_path):
    urls = [f"pipe:cat {p}" for p in sorted(input_dir.glob("*.tar"))]
    real = load_real(urls)
    info = real.source["store"]
    assert info["path"] is None and "md5" in info["why_not_cached"] and len(real) == 40
    assert torch.equal(real.get_u8(torch.arange(3)), load_real(str(input_dir)).get_u8(torch.arange(3)))
    assert not list((Path(os.environ["DCOMPRESS_CACHE"]) / "stores").glob("ephemeral-*"))


def test_cache_ls_rm_prune(input_dir, tmp_path):
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["distill", str(input_dir), "--method", "random", "--ipc", "1", "--labels", "hard",
                            "-o", str(tmp_path / "out"), "--cache-dir", str(cache), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["store"]["path"].startswith(str(cache))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dcompress"]["source"]["store"] == report["store"]["path"]
    ls = json.loads(runner.invoke(app, ["cache", "ls", "--cache-dir", str(cache), "--json"]).stdout)
    names = [e["name"] for e in ls["entries"]]
    assert names == [f"stores/{report['store']['key']}"] and ls["total_bytes"] > 40 * 784
    # in use by this process: rm refuses (exit 8), prune skips it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCOMPRESS_CACHE", str(cache))
        held = load_real(str(input_dir))
        r = runner.invoke(app, ["cache", "rm", names[0], "--cache-dir", str(cache), "--json"])
        assert r.exit_code == BusyError.exit_code and "in use" in json.loads(r.stdout)["error"]
        (cache / "stores" / "deadbeef.tmp-999999999").mkdir()        # a killed builder's leftovers
        r = runner.invoke(app, ["cache", "prune", "--max-size", "0", "--cache-dir", str(cache), "--json"])
        pruned = json.loads(r.stdout)
        assert r.exit_code == 0 and pruned["skipped_in_use"] == names and pruned["leftovers_removed"]
        del held
    import gc
    gc.collect()
    dry = json.loads(runner.invoke(app, ["cache", "prune", "--older-than", "0", "--dry-run", "--cache-dir",
                                         str(cache), "--json"]).stdout)
    assert dry["removed"] == names and (cache / names[0]).is_dir()
    r = runner.invoke(app, ["cache", "rm", "--all", "--cache-dir", str(cache), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == names and not (cache / names[0]).exists()
    for bad in (["cache", "rm", "stores/nope"], ["cache", "rm"], ["cache", "ls", "--kind", "x"],
                ["cache", "prune", "--max-size", "lots"]):
        r = runner.invoke(app, [*bad, "--cache-dir", str(cache), "--json"])
        assert r.exit_code == 2 and "error" in json.loads(r.stdout), bad


BUILD = """
import json, sys
from dcompress.api import load_real
r = load_real(sys.argv[1], workers=int(sys.argv[2]))
print(json.dumps(r.source["store"]))
"""


def test_concurrent_commands_build_once_and_a_killed_build_leaves_nothing(input_dir, tmp_path):
    env = {**os.environ, "DCOMPRESS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path.cwd())}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(input_dir), "2"], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    infos = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in procs]
    assert sorted(i["reused"] for i in infos) == [False, True] and infos[0]["key"] == infos[1]["key"]
    # killed just before the rename: no store, no temp folder survives the next run
    cache2 = tmp_path / "cache2"
    r = subprocess.run([sys.executable, "-c", BUILD, str(input_dir), "1"], capture_output=True, text=True,
                       env={**env, "DCOMPRESS_CACHE": str(cache2), "DCOMPRESS_CRASH_AT": "store.built"})
    assert r.returncode != 0
    assert [p.name for p in (cache2 / "stores").iterdir() if ".tmp-" in p.name]
    r = subprocess.run([sys.executable, "-c", BUILD, str(input_dir), "1"], capture_output=True, text=True,
                       env={**env, "DCOMPRESS_CACHE": str(cache2)})
    assert r.returncode == 0, r.stderr
    assert not [p.name for p in (cache2 / "stores").iterdir() if ".tmp-" in p.name]


def test_store_read_checks_its_bounds(input_dir):
    real = load_real(str(input_dir))
    assert isinstance(real.store, DecodedStore)
    assert real.get_u8(torch.tensor([], dtype=torch.int64)).shape == (0, 1, 28, 28)
    with pytest.raises(IndexError):
        real.get_u8(torch.tensor([40]))
    assert stats_from_sums([0], [0], 1) == ((0.0,), (0.0,))
