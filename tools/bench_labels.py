"""Label encodings on Fashion-MNIST (issue 22): accuracy and bytes of each (method, IPC, labels)
under the fair protocol, every set next to random subsets with the same labels.

    python tools/bench_labels.py --train /tmp/fm-train --test /tmp/fm-test --work /tmp/bench-labels \\
        --methods random,herding,rded,dm --ipc 1,10 --labels hard,teacher,views --runs 2 --epochs 100 \\
        --json docs/bench/fmnist-labels.json

One teacher is trained first with `dcompress teacher`'s defaults (its validation and test accuracy
and its time are reported) and every set is labelled by it (`--teacher`); SRe2L inverts a
BatchNorm teacher trained the same way (`--bn`). Each set is evaluated with `evaluate --protocol
fair` (`--epochs` passes; views sets store `--epochs + 1` views, one per pass): the set and
same-size random subsets with the same labels, lr picked on a validation split, `--runs` runs.
Finished rows are kept in the JSON and skipped on a rerun. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def teacher_row(train, test, out: Path, bn: bool) -> dict:
    """Trains (or reuses) the teacher; its validation accuracy, test accuracy and time."""
    import torch

    from dcompress import api
    from dcompress.core import normalize
    from dcompress.train.loop import accuracy
    from dcompress.train.teacher import load_teacher_net, read_sidecar

    rep = api.teacher(str(train), out=out, bn=bn)
    meta = read_sidecar(out.with_suffix(".json"))
    real = api.load_real(str(train))
    test_data = api.load_real(str(test))
    net = load_teacher_net(meta["model"], out, real.image_shape, real.num_classes, torch.device("cpu"))
    x = normalize(test_data.get_u8(torch.arange(len(test_data))), real.mean, real.std)
    return {"model": meta["model"], "path": str(out), "val_accuracy": meta.get("val_accuracy"),
            "test_accuracy": round(100 * accuracy(net, x, test_data.labels, device=torch.device("cpu")), 2),
            "train_seconds": meta.get("train_seconds"), "train_samples": meta.get("train_samples"),
            "weights_bytes": meta.get("weights_bytes"), "reused": rep.get("up_to_date", False)}


def run_row(args, method: str, ipc: int, labels: str, teacher: Path) -> dict:
    from dcompress import api

    out = Path(args.work) / f"{method}-ipc{ipc}-{labels}"
    extra = {}
    if labels in ("views", "online"):
        extra = {"label_views": args.epochs + 1}
    topk = None
    if labels.startswith("views-top"):
        topk, labels = int(labels.split("top")[1]), "views"
        extra = {"label_views": args.epochs + 1}
    t0 = time.time()
    sets = [kv.split(":", 1)[1] for kv in args.method_sets.split(",") if kv.startswith(method + ":")]
    rep = api.distill(str(args.train), method, out=out, ipc=ipc, labels=labels, teacher=teacher, device="cpu",
                      label_topk=topk, overwrite=True, seed=args.seed, sets=sets, **extra)
    t_distill = time.time() - t0
    t1 = time.time()
    ev = api.evaluate(out, str(args.test), train=str(args.train), runs=args.runs, epochs=args.epochs,
                      protocol="fair", lr_grid=args.lr_grid, val_per_class=args.val_per_class, ars=False,
                      full_epochs=1, full_max_samples=2000, teacher=teacher, test_limit=args.test_limit,
                      device="cpu", seed=args.seed)
    b = dict(rep["bytes"] or {})
    if labels == "online":
        b["teacher"] = (out / "teacher.pt").stat().st_size
    own = ev["fair"]["labels"]
    main = next(r for r in ev["fair"]["results"] if r["labels"] == own)
    return {"method": method, "ipc": ipc, "labels": labels + (f"-top{topk}" if topk else ""), "sets": sets, "bytes": b,
            "set": main["compressed"], "random": main["random"], "ior": ev["scores"].get("ior"),
            "set_lr": main["compressed"]["lr"], "random_lr": main["random"]["lr"],
            "seconds": {"distill": round(t_distill, 1), "evaluate": round(time.time() - t1, 1)}}


def fmt(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--work", default="/tmp/bench-labels")
    ap.add_argument("--methods", default="random,herding,rded,dm")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--labels", default="hard,teacher,views", help="hard, teacher, views, online, views-topK")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr-grid", default="0.01,0.1")
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method-sets", default="dm:iterations=60,dm:batch_real=32,sre2l:cda=true",
                    help="method:key=value config overrides, comma-separated")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    state = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    state.setdefault("settings", {k: v for k, v in vars(args).items() if k != "json"} | {"json": str(args.json)})
    state.setdefault("rows", [])
    teacher = Path(args.work) / "teacher.pt"
    state["teacher"] = teacher_row(args.train, args.test, teacher, bn=False)
    methods = args.methods.split(",")
    if "sre2l" in methods:
        state["bn_teacher"] = teacher_row(args.train, args.test, Path(args.work) / "teacher-bn.pt", bn=True)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(state, indent=1) + "\n")
    done = {(r["method"], r["ipc"], r["labels"]) for r in state["rows"]}
    for ipc in map(int, args.ipc.split(",")):
        for method in methods:
            for labels in args.labels.split(","):
                if (method, ipc, labels) in done:
                    continue
                t = Path(args.work) / ("teacher-bn.pt" if method == "sre2l" else "teacher.pt")
                try:
                    row = run_row(args, method, ipc, labels, t)
                except Exception as e:  # noqa: BLE001 - a failed row is recorded, the grid goes on
                    row = {"method": method, "ipc": ipc, "labels": labels, "error": f"{type(e).__name__}: {e}"}
                state["rows"].append(row)
                save()
                print(json.dumps(row), file=sys.stderr, flush=True)
    t = state["teacher"]
    print(f"teacher {t['model']}: validation {t['val_accuracy']}, test {t['test_accuracy']} %, "
          f"{t['train_seconds']} s on {t['train_samples']} samples")
    print("| method | IPC | labels | images B | labels B | teacher B | shards B | set acc % | random acc % (same labels) "
          "| set − random |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in state["rows"]:
        if "error" in r:
            print(f"| {r['method']} | {r['ipc']} | {r['labels']} | error: {r['error'][:80]} |")
            continue
        b = r["bytes"]
        print(f"| {r['method']} | {r['ipc']} | {r['labels']} | {b.get('images', 0):,} | {b.get('labels', 0):,} | "
              f"{b.get('teacher', 0):,} | {b.get('shards', 0):,} | {fmt(r['set'])} | {fmt(r['random'])} | "
              f"{r['set']['mean'] - r['random']['mean']:+.2f} |")


if __name__ == "__main__":
    main()
