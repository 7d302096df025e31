"""Fashion-MNIST accuracy benchmark: distill with each method x IPC, evaluate, print a table.

    python tools/bench_fmnist.py --methods random,dc,dsa,dm --ipc 1,10 --budget cpu --runs 2 --out results.json

For every method x ipc: `dcompress.api.distill` with the budget's config overrides, then
`dcompress.train.evaluate.evaluate` (`--runs` fresh networks, mean ± std, the full 10k test set
unless --test-limit) with the method's own protocol (budgets may shorten its epochs). Prints a
markdown table next to the published ConvNet F-MNIST numbers (methods.md §9.1) and writes all
rows, with the exact settings used, to --out.

Budgets (one dict, BUDGETS; a method without an entry gets the budget's "*" entry, i.e. its own
defaults, so any registered method runs — add an entry to shorten a new method):

    smoke  seconds: proves the pipeline (2-3 iterations, 2 eval epochs, 1000 test images).
    cpu    ~2 h on 2 CPU cores for the default `--methods random,dc,dsa,dm --ipc 1,10 --runs 2`:
           reduced iterations and batch_real (performance.md §B7 calibration), DC/DSA IPC 10 with
           10 outer x 5 inner loops, every evaluation 300 epochs. NOT comparable to the papers.
           MTT/DATM/DD: reduced iterations and syn_steps; mtt/datm share one expert buffer of
           2 experts x 6 epochs on 500 images per class, trained once under --work (the
           "experts" entry). Run mtt and datm in one process, or build the buffer first: a
           second process finding it half-trained by another stops and says so.
    paper  the published settings: each method's Config defaults (= the reference's) and its
           own evaluation protocol (DC 300 epochs no aug; DSA/DM 1000 epochs with DSA). GPU work.

`--protocol fair` evaluates each set with `evaluate --protocol fair` instead (docs/evaluation.md):
the set and same-size random subsets with the same recipe and labels, lr from a grid on a
validation split, full-data accuracy (cached), DD-Ranking HLR/IOR/LRS/ARS; it prints a second
table of those scores. Its knobs per budget are in FAIR (the "fair-cpu" budget shrinks the
evaluation network and epochs so that all methods at IPC 1 and 10 fit a CPU afternoon).
`--methods all` runs every registered method (new methods join without editing this file).
`--merge a.json,b.json` prints the tables of earlier runs' --out files (one process per method
keeps each run short).

On a shared 2-core machine pass `--threads 1`: two OpenMP threads were 2-6x slower than one
while other jobs ran (docs/results.md, "Iteration time (CPU)").

Fashion-MNIST shards: `dcompress shard /usr/share/datasets/fashion-mnist /tmp/fm-train --format idx
--split train` (and `--split test` -> /tmp/fm-test); created here when missing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FMNIST_RAW = Path("/usr/share/datasets/fashion-mnist")

# method -> config overrides ("sets") and evaluation epochs (None = the method's protocol).
BUDGETS: dict[str, dict[str, dict]] = {
    "smoke": {
        "*": {"sets": {}, "eval_epochs": 2},
        "dm": {"sets": {"iterations": 3, "batch_real": 16}, "eval_epochs": 2},
        "dc": {"sets": {"iterations": 1, "batch_real": 16, "outer_loop": 2, "inner_loop": 1}, "eval_epochs": 2},
        "dsa": {"sets": {"iterations": 1, "batch_real": 16, "outer_loop": 2, "inner_loop": 1}, "eval_epochs": 2},
        "mtt": {"sets": {"iterations": 2, "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1}, "eval_epochs": 2},
        "datm": {"sets": {"iterations": 2, "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1,
                          "current_max_start_epoch": 1}, "eval_epochs": 2},
        "dd": {"sets": {"iterations": 2, "batch_real": 64, "distill_epochs": 1}, "eval_epochs": 2},
        # expert buffer for mtt/datm: experts x epochs on `per_class` images of each class
        "experts": {"experts": 1, "epochs": 2, "per_class": 10},
    },
    "cpu": {
        "*": {"sets": {}, "eval_epochs": 300},
        # B7: DM IPC 1, 200 its, batch_real 64 ≈ 4.5 min; IPC 10, 100 its, batch_real 256 ≈ 15 min
        "dm": {"sets": {"iterations": 200, "batch_real": 64}, "eval_epochs": 300,
               "ipc": {10: {"iterations": 100, "batch_real": 128}}},
        # DC IPC 1 (1 outer step, 0.19 TF): 2.3-3.4 s/it at batch_real 64 (docs/results.md) -> ~3 min.
        # IPC 10 with the reference (10, 50) loops is ~20 TF/it (the inner epochs dominate); 10 outer x
        # 5 inner = 1.9 TF matching + 1.3 TF inner ≈ 1 min/it at ~50 GFLOP/s -> 10 its ≈ 11 min.
        "dc": {"sets": {"iterations": 50, "batch_real": 64}, "eval_epochs": 300,
               "ipc": {10: {"iterations": 10, "outer_loop": 10, "inner_loop": 5}}},
        "dsa": {"sets": {"iterations": 50, "batch_real": 64}, "eval_epochs": 300,
                "ipc": {10: {"iterations": 10, "outer_loop": 10, "inner_loop": 5}}},
        # Measured with one thread (2026-11-28): MTT IPC 1, 20 syn_steps: 3.0 s/it; IPC 10, 10
        # syn_steps (all 100 images per step): 19 s/it; DATM alike (20.6 s/it). Window: start
        # epochs [0, 4) of 6-epoch experts, 2 expert epochs per target (DATM's window fixed there).
        "mtt": {"sets": {"iterations": 150, "syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 4},
                "eval_epochs": 300, "ipc": {10: {"iterations": 40, "syn_steps": 10}}},
        "datm": {"sets": {"iterations": 150, "syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 4,
                          "current_max_start_epoch": 4}, "eval_epochs": 300,
                 "ipc": {10: {"iterations": 40, "syn_steps": 10}}},
        # DD (LeNet, 10 steps x 3 epochs, batch_real 1024): 0.13 s/it at IPC 1, 0.42 s/it at IPC 10.
        "dd": {"sets": {"iterations": 2000}, "eval_epochs": 300, "ipc": {10: {"iterations": 1500}}},
        # 2 experts x 6 epochs (SGD 0.01, DSA, batch 256) on 500 images per class: the full 60k
        # images cost ~5 min per epoch here.
        "experts": {"experts": 2, "epochs": 6, "per_class": 500},
    },
    "paper": {
        "*": {"sets": {}, "eval_epochs": None},
    },
    # --protocol fair on 2 CPU cores: short distillations and 100-epoch evaluations of a narrower
    # ConvNet-3 (FAIR["fair-cpu"]); every (method, IPC) stays under ~15 min. Not comparable to papers.
    "fair-cpu": {
        "*": {"sets": {}, "eval_epochs": 100},
        "dm": {"sets": {"iterations": 50, "batch_real": 64}, "eval_epochs": 100},
        "dc": {"sets": {"iterations": 10, "batch_real": 64}, "eval_epochs": 100,
               "ipc": {10: {"iterations": 3, "outer_loop": 10, "inner_loop": 5}}},
        "dsa": {"sets": {"iterations": 10, "batch_real": 64}, "eval_epochs": 100,
                "ipc": {10: {"iterations": 3, "outer_loop": 10, "inner_loop": 5}}},
        "mtt": {"sets": {"iterations": 40, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 4},
                "eval_epochs": 100},
        "datm": {"sets": {"iterations": 40, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 4,
                          "current_max_start_epoch": 4}, "eval_epochs": 100},
        "dd": {"sets": {"iterations": 300}, "eval_epochs": 100},
        "experts": {"experts": 2, "epochs": 6, "per_class": 100},
    },
}

# --protocol fair per budget: FairConfig/FullDataConfig values, the evaluation network (None: the
# method's) and a test subset (None: the full test set).
FAIR: dict[str, dict] = {
    "smoke": {"lr_grid": (0.01, 0.1), "val_per_class": 2, "full_epochs": 1, "full_max_samples": 2000,
              "model": None, "test_limit": None},
    "cpu": {"lr_grid": (0.001, 0.005, 0.01, 0.05, 0.1), "val_per_class": 50, "full_epochs": 5,
            "full_max_samples": None, "model": None, "test_limit": None},
    "fair-cpu": {"lr_grid": (0.001, 0.01, 0.1), "val_per_class": 20, "full_epochs": 2, "full_max_samples": 20000,
                 "model": "convnet_w32", "test_limit": 1000},
    "paper": {"lr_grid": (0.001, 0.005, 0.01, 0.05, 0.1), "val_per_class": 50, "full_epochs": 200,
              "full_max_samples": None, "model": None, "test_limit": None},
}

# Published ConvNet-3 F-MNIST accuracy (methods.md §9.1; ✓ verified, ~ secondary), ipc -> "mean±std".
PUBLISHED = {
    "random": {1: "51.4±3.8 ~", 10: "73.8±0.7 ~", 50: "82.5±0.7 ~"},
    "herding": {1: "67.0±1.9 ~", 10: "71.1±0.7 ~", 50: "71.9±0.8 ~"},
    "kcenter": {1: "66.9±1.8 ~", 10: "54.7±1.5 ~", 50: "68.3±0.8 ~"},
    "dc": {1: "70.5±0.6 ✓", 10: "82.3±0.4 ✓", 50: "83.6±0.4 ✓"},
    "dsa": {1: "70.6±0.6 ✓", 10: "84.6±0.3 ✓", 50: "88.7±0.2 ✓"},
    "dm": {1: "70.7±0.6 ~", 10: "83.5±0.3 ~", 50: "88.1±0.6 ~"},
    "mtt": {1: "75.1±0.9 ~", 10: "87.2±0.3 ~", 50: "88.3±0.1 ~"},
}


def settings_for(budget: str, method: str, ipc: int, labels: str | None = None) -> dict:
    """The budget entry for (method, ipc): config overrides, eval epochs, options, label mode.

    Label mode: `labels` (--labels) if given, else the entry's, else "hard" for selection
    methods (the published coreset rows use hard labels; `--labels auto` would train a teacher
    and evaluate with its soft labels, a different protocol) and "auto" for the others (hard for
    DC/DSA/DM/MTT, learned for DATM).
    """
    from dcompress.registry import get_method

    table = BUDGETS[budget]
    entry = table.get(method, table["*"])
    sets = {**entry.get("sets", {}), **entry.get("ipc", {}).get(ipc, {})}
    default_labels = "hard" if get_method(method).info.kind == "selection" else "auto"
    return {"sets": sets, "eval_epochs": entry.get("eval_epochs"), "options": entry.get("options", {}),
            "labels": labels or entry.get("labels", default_labels)}


def class_subset(real, per_class: int, seed: int):
    """`per_class` random samples of each class of `real` (RealData), its fingerprint marked."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([real.sample_class(c, per_class, g) for c in range(real.num_classes)]).sort().values
    return real.subset(idx, fingerprint=f"{real.source.get('fingerprint')}:subset{per_class}x{seed}")


def ensure_experts(args, real_train, device) -> tuple[Path, dict] | None:
    """The budget's expert buffer for mtt/datm (trained once under --work), or None to let the
    method train its default buffer (the "paper" budget: its full-data default)."""
    from dcompress.train.experts import ExpertConfig, train_experts

    e = BUDGETS[args.budget].get("experts")
    if e is None:
        return None
    path = Path(args.work) / "experts"
    subset = class_subset(real_train, e["per_class"], args.seed)
    t0 = time.time()
    rep = train_experts(subset, path, num_experts=e["experts"], config=ExpertConfig(epochs=e["epochs"], seed=args.seed),
                        device=device)
    if rep["busy"]:
        sys.exit(f"another process is training experts {rep['busy']} of {path}: wait for it, then rerun")
    return path, {**e, "train_s": round(time.time() - t0, 1), "trained_now": rep["trained"]}


def ensure_shards(path: Path, split: str) -> Path:
    if (path / "manifest.json").exists():
        return path
    cmd = [sys.executable, "-m", "dcompress.cli", "shard", str(FMNIST_RAW), str(path), "--format", "idx",
           "--split", split, "--json"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return path


def run_one(spec: str, ipc: int, args, real_train, real_test) -> dict:
    """`spec` is a method name, or `name:labels` (e.g. herding:teacher) for that method's label mode."""
    from dcompress.api import distill
    from dcompress.train.evaluate import evaluate
    from dcompress.api import resolve_device
    from dcompress.registry import get_method

    method, _, labels = spec.partition(":")
    s = settings_for(args.budget, method, ipc, labels or args.labels)
    out = Path(args.work) / f"{method}{'-' + labels if labels else ''}-ipc{ipc}"
    buffer, experts = None, None
    if get_method(method).info.needs_experts:
        built = ensure_experts(args, real_train, resolve_device(args.device))
        if built is not None:
            buffer, experts = str(built[0]), built[1]
    t0 = time.time()
    rep = distill(str(args.train), method, out=out, ipc=ipc, seed=args.seed, device=args.device,
                  sets=[f"{k}={v}" for k, v in s["sets"].items()], labels=s["labels"], flags=s["options"] or None,
                  experts=buffer, real=real_train, resume=True, overwrite=True)
    t_distill = time.time() - t0
    t1 = time.time()
    if args.protocol == "fair":
        from dcompress.train.fair import FairConfig, FullDataConfig

        f = FAIR[args.budget]
        ev = evaluate(out, real_test, train=real_train, runs=args.runs, epochs=s["eval_epochs"], seed=args.seed,
                      device=resolve_device(args.device), test_limit=args.test_limit or f["test_limit"],
                      model=f["model"], protocol="fair",
                      fair=FairConfig(lr_grid=f["lr_grid"], val_per_class=f["val_per_class"]),
                      full_data=FullDataConfig(epochs=f["full_epochs"], max_samples=f["full_max_samples"]))
    else:
        ev = evaluate(out, real_test, train=real_train, runs=args.runs, epochs=s["eval_epochs"], seed=args.seed,
                      device=resolve_device(args.device), random_baseline=args.baseline,
                      test_limit=args.test_limit)
    import torch

    row = {"method": method, "ipc": ipc, "budget": args.budget, "threads": torch.get_num_threads(), "sets": s["sets"], "labels": rep["labels"],
           "eval_epochs": ev["protocol"]["epochs"],
           "protocol": ev["protocol"], "accuracy": ev["compressed"], "random_baseline": ev.get("random"),
           "experts": experts, "test_samples": ev["test_samples"], "distill_s": round(t_distill, 1), "eval_s": round(time.time() - t1, 1),
           "distill_report": rep, "published": PUBLISHED.get(method, {}).get(ipc)}
    if "scores" in ev:
        row.update(evaluation="fair", scores=ev["scores"], fair=ev["fair"], delta=ev["delta"])
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| method | IPC | accuracy % (mean ± std) | runs | labels | eval protocol | published (§9.1) | distill s | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, p = r["accuracy"], r["protocol"]
        proto = f"{p['name']}: {p['model']}, {p['epochs']} ep, aug {p['aug'] or 'none'}"
        lines.append(f"| {r['method']} | {r['ipc']} | {a['mean']:.2f} ± {a['std']:.2f} | {len(a['runs'])} | {r['labels']} | {proto} "
                     f"| {r['published'] or '–'} | {r['distill_s']:.0f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


def _pm(s: dict | None) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s else "–"


def fair_markdown(rows: list[dict]) -> str:
    """The fair-protocol table: accuracies under the same recipe and labels, and the scores."""
    lines = ["| method | IPC | labels | set % | random % | IOR (pts) | beats random? | set, hard labels % | "
             "full data % | HLR (pts) | LRS % | ARS % | lr set / random |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("evaluation") != "fair":
            continue
        f, sc = r["fair"], r["scores"]
        hard = next(x for x in f["results"] if x["labels"] == "hard" and x["aug"] == (r["protocol"]["aug"] or "none"))
        ior = sc["ior"]
        verdict = "yes" if ior["mean"] - ior["std"] > 0 else ("no" if ior["mean"] + ior["std"] < 0 else "tie")
        lines.append(f"| {r['method']} | {r['ipc']} | {f['labels']} | {_pm(r['accuracy'])} | {_pm(r['random_baseline'])} "
                     f"| {_pm(ior)} | {verdict} | {_pm(hard['compressed'])} | {f['full_data']['percent']:.2f} "
                     f"| {_pm(sc['hlr'])} | {_pm(sc['lrs'])} | {_pm(sc.get('ars'))} "
                     f"| {r['protocol']['lr_used']:g} / {r['random_baseline']['lr']:g} |")
    return "\n".join(lines)


def tables(rows: list[dict]) -> str:
    fair = [r for r in rows if r.get("evaluation") == "fair"]
    return markdown(rows) + ("\n\n" + fair_markdown(fair) if fair else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="random,dc,dsa,dm", help="comma list of registered method names "
                    "(name:labels picks that method's label mode, e.g. herding:teacher), or all")
    ap.add_argument("--ipc", default="1,10", help="comma list of images per class")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--runs", type=int, default=2, help="fresh evaluation networks per set")
    ap.add_argument("--out", default="results.json", help="JSON file of all rows")
    ap.add_argument("--work", default="bench-fmnist-out", help="folder for the distilled sets")
    ap.add_argument("--train", type=Path, default=Path("/tmp/fm-train"))
    ap.add_argument("--test", type=Path, default=Path("/tmp/fm-test"))
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on a fixed random test subset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--labels", default=None, help="label mode for every method (default: hard for selection "
                    "methods, auto for the others)")
    ap.add_argument("--baseline", action="store_true", help="also train a same-size random subset per set")
    ap.add_argument("--protocol", choices=("own", "fair"), default="own",
                    help="fair: evaluate --protocol fair with the budget's FAIR settings (scores table)")
    ap.add_argument("--merge", default=None, help="comma list of earlier --out files: print their tables, run nothing")
    args = ap.parse_args(argv)
    if args.merge:
        rows = [row for f in args.merge.split(",") if f for row in json.loads(Path(f).read_text())["rows"]]
        print(tables(rows))
        return 0
    if args.budget == "smoke" and args.test_limit is None:
        args.test_limit = 1000

    import torch

    from dcompress.api import load_real
    from dcompress.registry import get_method

    if args.threads:
        torch.set_num_threads(args.threads)

    if args.methods == "all":
        from dcompress.registry import list_methods

        methods = [c.info.name for c in list_methods()]
    else:
        methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        get_method(m.partition(":")[0])   # any registered method; unknown names fail before any work
    ipcs = [int(i) for i in args.ipc.split(",") if i]
    real_train = load_real(str(ensure_shards(args.train, "train")))
    real_test = load_real(str(ensure_shards(args.test, "test")))
    rows = []
    for ipc in ipcs:
        for m in methods:
            print(f"[bench_fmnist] {m} ipc {ipc} ({args.budget}) ...", file=sys.stderr, flush=True)
            rows.append(run_one(m, ipc, args, real_train, real_test))
            a = rows[-1]["accuracy"]
            print(f"[bench_fmnist]   {a['mean']:.2f} ± {a['std']:.2f}  distill {rows[-1]['distill_s']:.0f}s "
                  f"eval {rows[-1]['eval_s']:.0f}s", file=sys.stderr, flush=True)
            Path(args.out).write_text(json.dumps({"rows": rows}, indent=1, default=str))
    table = tables(rows)
    print(table)
    Path(args.out).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows, "table": table}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
