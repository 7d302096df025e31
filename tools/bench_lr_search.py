"""The fair protocol's lr search, the full grid against successive halving (`--lr-search
halving`, docs/evaluation.md): each set is evaluated with `evaluate --protocol fair` once per
search, with the same seed and options, and the table gives per set the picked lrs (do they
agree, on every label x augmentation x side the grid searched), the accuracies (mean ± std),
the network-passes trained and the seconds of each search, and halving's share of both.

    python tools/bench_lr_search.py --train /tmp/fm-train --test /tmp/fm-test --cache-dir /tmp/dcache \\
        --work /tmp/bench-lr-search --methods random,herding --ipc 1,10,50 --runs 2 --epochs 100 \\
        --test-limit 2000 --json /tmp/bench-lr-search/lr-search.json

The sets are `--sets DIR,...` (finished dcompress outputs; their recorded input unless `--train`)
and/or random/herding distillations of `--train` made here (`--methods`, `--ipc`, `--labels`,
written under `--work`, reused when up to date). Defaults are evaluate's: DD-Ranking's 5-lr grid,
50 validation images per class, ARS on (`--no-ars`: half the settings). The full-data network
is trained once and cached (`--cache-dir`), so the seconds compared are those of the sides
(`seconds.sets`); the two searches run in turn, the first one alternating from set to set.
Finished rows are kept in the JSON and skipped on a rerun with the same settings. Prints a
Markdown table; exit 1 when a set failed (its row says why).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEARCHES = ("grid", "halving")



def evaluate(args, path: Path, search: str) -> dict:
    """One fair evaluation of the set at `path` with the lr `search`, summarised."""
    from dcompress import api

    t0 = time.time()
    rep = api.evaluate(path, args.test, train=args.train, runs=args.runs, model=args.model, epochs=args.epochs,
                       seed=args.seed, device=args.device, test_limit=args.test_limit, protocol="fair",
                       lr_grid=args.lr_grid, lr_search=search, val_per_class=args.val_per_class, ars=args.ars,
                       full_epochs=args.full_epochs, full_max_samples=args.full_max_samples)
    wall = time.time() - t0
    picks = [{"labels": r["labels"], "aug": r["aug"], "side": side, "lr": r[side]["lr"],
              "lr_source": r[side]["lr_source"], "val_grid": r[side]["val_grid"]}
             for r in rep["fair"]["results"] for side in ("compressed", "random")]
    passes = sum(r[side]["network_passes"] for r in rep["fair"]["results"] for side in ("compressed", "random"))
    return {"lr": rep["protocol"]["lr_used"], "random_lr": rep["random"]["lr"],
            "accuracy": {k: rep["compressed"][k] for k in ("mean", "std", "runs")},
            "random": {k: rep["random"][k] for k in ("mean", "std", "runs")},
            "scores": {k: v["mean"] for k, v in rep["scores"].items() if isinstance(v, dict) and "mean" in v},
            "picks": picks, "network_passes": passes, "seconds": rep["seconds"]["sets"], "wall": round(wall, 1),
            "epochs": rep["protocol"]["epochs"], "model": rep["protocol"]["model"], "samples": rep["samples"],
            "method": rep["method"]}


def compare(name: str, path: Path, grid: dict, halving: dict) -> dict:
    """The row of one set: both searches, whether their picks agree, halving's share of the cost."""
    searched = [(g, h) for g, h in zip(grid["picks"], halving["picks"]) if g["lr_source"] == "grid"]
    same = sum(g["lr"] == h["lr"] for g, h in searched)

    def share(key: str) -> float | None:
        return round(halving[key] / grid[key], 3) if grid[key] else None

    return {"set": name, "path": str(path), "method": grid["method"], "samples": grid["samples"],
            "model": grid["model"], "epochs": grid["epochs"], "grid": grid, "halving": halving,
            "agree": same == len(searched), "sides_agree": same, "sides_searched": len(searched),
            "same_accuracy": grid["accuracy"]["runs"] == halving["accuracy"]["runs"]
            and grid["random"]["runs"] == halving["random"]["runs"],
            "ratio": {"network_passes": share("network_passes"), "seconds": share("seconds")}}


def sets_to_run(args) -> list[tuple[str, Path, dict | None]]:
    """(name, output folder, distill arguments or None for a given set) in table order."""
    out = [(Path(p).name, Path(p), None) for p in (args.sets.split(",") if args.sets else []) if p]
    if args.methods:
        if not args.train:
            raise SystemExit("--methods distils --train: pass --train URLS (or only --sets)")
        for ipc in (int(v) for v in args.ipc.split(",")):
            for method in args.methods.split(","):
                for labels in args.labels.split(","):
                    name = f"{method}-ipc{ipc}-{labels}"
                    out.append((name, Path(args.work) / name, {"method": method, "ipc": ipc, "labels": labels}))
    return out


def fmt(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def table(rows: list[dict]) -> str:
    """The Markdown table and a summary line."""
    lines = ["| set | images | lr set grid → halving | lr random grid → halving | agree (sides) | set % grid | "
             "set % halving | random % grid | random % halving | passes grid | passes halving | s grid | "
             "s halving | halving / grid passes | halving / grid s |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | error: {r['error'][:100].replace('|', '/')} |")
            continue
        g, h, q = r["grid"], r["halving"], r["ratio"]
        lines.append(f"| {r['set']} | {r['samples']} | {g['lr']:g} → {h['lr']:g} | {g['random_lr']:g} → "
                     f"{h['random_lr']:g} | {'yes' if r['agree'] else 'no'} ({r['sides_agree']}/"
                     f"{r['sides_searched']}) | {fmt(g['accuracy'])} | {fmt(h['accuracy'])} | {fmt(g['random'])} | "
                     f"{fmt(h['random'])} | {g['network_passes']:,} | {h['network_passes']:,} | {g['seconds']:.1f} | "
                     f"{h['seconds']:.1f} | {q['network_passes']} | {q['seconds']} |")
    ok = [r for r in rows if "error" not in r]
    if ok:
        sides = sum(r["sides_searched"] for r in ok)
        passes = [sum(r[s]["network_passes"] for r in ok) for s in SEARCHES]
        secs = [sum(r[s]["seconds"] for r in ok) for s in SEARCHES]
        lines += ["", f"Picks agree on {sum(r['sides_agree'] for r in ok)} of {sides} searched sides "
                      f"({sum(r['agree'] for r in ok)} of {len(ok)} sets); halving trained "
                      f"{passes[1]:,} of the grid's {passes[0]:,} network-passes "
                      f"({passes[1] / max(passes[0], 1):.3f}) in {secs[1]:.1f} of {secs[0]:.1f} s "
                      f"({secs[1] / max(secs[0], 1e-9):.3f})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--train", default=None, help="training shards: the input of --methods, the fair protocol's "
                                                  "training input (default for --sets: each set's recorded one)")
    ap.add_argument("--test", required=True, help="test shards")
    ap.add_argument("--sets", default=None, help="comma list of dcompress output folders")
    ap.add_argument("--methods", default="random,herding", help="distilled here from --train ('' for none)")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--labels", default="hard", help="distill label modes, comma list")
    ap.add_argument("--work", default="/tmp/bench-lr-search", help="where --methods' sets are written")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="evaluation epochs (default: the protocol's)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--lr-grid", default=None, help="default: evaluate's (DD-Ranking's 5 lrs)")
    ap.add_argument("--val-per-class", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--full-epochs", type=int, default=None)
    ap.add_argument("--full-max-samples", type=int, default=None)
    ap.add_argument("--no-ars", dest="ars", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None, help="DCOMPRESS_CACHE: teachers, decoded stores, full-data network")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, default=None, help="results (finished rows are kept and skipped)")
    args = ap.parse_args(argv)
    import torch

    from dcompress import api

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cache_dir:
        os.environ["DCOMPRESS_CACHE"] = str(Path(args.cache_dir).absolute())
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "threads", "cache_dir")}
    state = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    if state.get("settings") != settings:
        state = {"settings": settings, "rows": []}
    done = {r["set"] for r in state["rows"] if "error" not in r}
    state["rows"] = [r for r in state["rows"] if "error" not in r]

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(state, indent=1) + "\n")

    from dcompress.errors import Interrupted

    for i, (name, path, make) in enumerate(sets_to_run(args)):
        if name in done:
            continue
        try:
            if make is not None:
                api.distill(str(args.train), make["method"], out=path, ipc=make["ipc"], labels=make["labels"],
                            seed=args.seed, device=args.device)
            order = SEARCHES if i % 2 == 0 else SEARCHES[::-1]     # neither search always pays the warm-up
            runs = {s: evaluate(args, path, s) for s in order}
            row = compare(name, path, runs["grid"], runs["halving"])
        except Interrupted:
            raise                       # Ctrl-C / SIGTERM stops the benchmark (rerun to continue)
        except Exception as e:  # noqa: BLE001 - a failed set is recorded, the others go on
            row = {"set": name, "path": str(path), "error": f"{type(e).__name__}: {e}"}
        state["rows"].append(row)
        save()
        print(json.dumps({k: v for k, v in row.items() if k not in ("grid", "halving")}), file=sys.stderr, flush=True)
    print(table(state["rows"]))
    return 1 if any("error" in r for r in state["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
