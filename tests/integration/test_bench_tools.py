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
