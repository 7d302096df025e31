"""The accuracy benchmark script runs end to end (smoke budget) on tiny shards, so it cannot rot."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fmnist", ROOT / "tools" / "bench_fmnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_fmnist_smoke_table(shards, tmp_path, capsys):
    bench = _bench()
    methods = ["random", "dm", "dc", "mtt", "datm", "dd"]
    rc = bench.main(["--methods", ",".join(methods), "--ipc", "1", "--budget", "smoke", "--runs", "1",
                     "--train", str(shards["train"]), "--test", str(shards["test"]), "--work", str(tmp_path / "w"),
                     "--out", str(tmp_path / "r.json"), "--threads", "1"])
    assert rc == 0
    out = json.loads((tmp_path / "r.json").read_text())
    rows = {r["method"]: r for r in out["rows"]}
    assert sorted(rows) == sorted(methods)
    for m, r in rows.items():
        assert r["eval_epochs"] == 2 and len(r["accuracy"]["runs"]) == 1 and 0 <= r["accuracy"]["mean"] <= 100
        assert r["protocol"]["name"] == ("dc" if m == "random" else m)
    # mtt and datm used the budget's expert buffer, built once and recorded in the rows
    assert rows["mtt"]["experts"]["experts"] == 1 and rows["datm"]["experts"]["trained_now"] == []
    assert rows["mtt"]["distill_report"]["labels"] == "hard" and rows["datm"]["labels"] == "learned"
    assert rows["mtt"]["protocol"]["lr_used"] != rows["mtt"]["protocol"]["lr"]   # the learned lr
    table = capsys.readouterr().out
    assert table.startswith("| method | IPC |") and table.count("\n| ") == len(methods)  # one row per method after the header and rule


def test_bench_fmnist_fair_protocol_tables(shards, tmp_path, capsys):
    bench = _bench()
    common = ["--ipc", "1", "--budget", "smoke", "--runs", "2", "--protocol", "fair", "--train", str(shards["train"]),
              "--test", str(shards["test"]), "--work", str(tmp_path / "w"), "--threads", "1"]
    assert bench.main(["--methods", "random", "--out", str(tmp_path / "a.json"), *common]) == 0
    assert bench.main(["--methods", "random:teacher", "--out", str(tmp_path / "b.json"), *common]) == 0
    capsys.readouterr()
    assert bench.main(["--merge", f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}"]) == 0
    text = capsys.readouterr().out
    fair = text.split("\n\n")[1].splitlines()
    assert fair[0].startswith("| method | IPC | labels | set % | random % | IOR") and len(fair) == 4
    assert fair[2].startswith("| random | 1 | hard |") and fair[3].startswith("| random | 1 | soft |")
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert rows[0]["labels"] == "teacher" and rows[0]["fair"]["teacher"]["same_as_set"] is True
    assert {"hlr", "ior", "lrs", "ars"} <= set(rows[0]["scores"])


def _load(name: str):
    import sys

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod                     # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_bench_iter_decode_smoke(shards, tmp_path, capsys):
    """The reader benchmark (issue #15's decode figures) runs on tiny shards and checks its decoders
    give Pillow's pixels before it times them."""
    rc = _load("bench_iter").main(["decode", "--train", str(shards["train"]), "--shards", "2", "--rounds", "1",
                                   "--json", str(tmp_path / "d.json")])
    assert rc == 0
    rates = json.loads((tmp_path / "d.json").read_text())["samples_per_s"]
    assert {"raw tar walk (webdataset)", "dcompress reader (read_shard)",
            "store worker (read, decode, checks, write, sums)"} <= set(rates)
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values())
    assert "time vs raw tar walk" in capsys.readouterr().out


def test_bench_exact_smoke(shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DCOMPRESS_CACHE", str(tmp_path / "cache"))
    args = ["--train", str(shards["train"]), "--test", str(shards["test"]), "--work", str(tmp_path / "w"),
            "--methods", "dm", "--ipc", "1", "--runs", "2", "--epochs", "1", "--test-limit", "12",
            "--set", "dm:model=convnet_w16", "--set", "dm:iterations=3", "--set", "dm:batch_real=8",
            "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")]
    assert _load("bench_exact").main(args) == 0
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["method"] == "dm" and row["differs_from_exact"] and len(row["png"]["runs"]) == 2
    assert row["difference"] == round(row["png"]["mean"] - row["exact"]["mean"], 2)
    assert row["bytes"]["npy"] == 3 * (4 * 28 * 28 + 128) and 0 < row["bytes"]["image"] < row["bytes"]["npy"]
    table = capsys.readouterr().out
    assert "| dm |" in table and table == (tmp_path / "r.md").read_text()
    assert _load("bench_exact").main(args) == 0              # a rerun keeps the finished row
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == [row]
    assert _load("bench_exact").main(args + ["--in-range"]) == 0   # adds the in-range set to the row
    grown = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(grown) == 1 and {k: v for k, v in grown[0].items() if k != "in_range"} == row
    assert len(grown[0]["in_range"]["runs"]) == 2 and grown[0]["in_range"]["png_bytes"] > 0
    assert "in range" in (tmp_path / "r.md").read_text()


def test_bench_lr_search_compares_grid_and_halving(shards, tmp_path, capsys):
    """The lr-search benchmark on tiny shards: a set distilled here and a given one, both
    searches, the picks, the passes (halving trains fewer) and the table."""
    from dcompress.api import distill

    given = tmp_path / "given"
    distill(str(shards["train"]), "random", out=given, ipc=2, labels="hard", seed=1)
    argv = ["--train", str(shards["train"]), "--test", str(shards["test"]), "--sets", str(given), "--methods",
            "herding", "--ipc", "1", "--work", str(tmp_path / "w"), "--epochs", "2", "--runs", "2", "--model",
            "convnet_w8", "--val-per-class", "2", "--full-epochs", "1", "--test-limit", "12", "--no-ars",
            "--device", "cpu", "--json", str(tmp_path / "r.json")]
    rc = _load("bench_lr_search").main(argv)
    assert rc == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["set"] for r in rows] == ["given", "herding-ipc1-hard"]
    for r in rows:
        assert r["sides_searched"] == 2 and r["agree"] == (r["sides_agree"] == 2)
        # 5 lrs, 3 passes: the grid 5 x 3 + 3 per side; halving 5 x 1, 2 x 0 (rungs at 1, 1, 3), 1 x 2, + 3
        assert r["grid"]["network_passes"] == 2 * 18 and r["halving"]["network_passes"] == 2 * 10
        assert r["ratio"]["network_passes"] == round(20 / 36, 3)
        assert all(p["lr"] in (0.001, 0.005, 0.01, 0.05, 0.1) for s in ("grid", "halving") for p in r[s]["picks"])
        if r["agree"]:
            assert r["same_accuracy"]
    out = capsys.readouterr().out
    assert out.startswith("| set | images | lr set grid → halving") and "Picks agree on" in out
    # a rerun with the same settings keeps the finished rows
    assert _load("bench_lr_search").main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == rows
