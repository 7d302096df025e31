"""Exact `.npy` against the `.png` an outside reader loads, per synthesis method.

A synthesis output stores each image as the exact float tensor (`.npy`, what `dcompress.load`
and `evaluate` train on) and as a clamped 8-bit `.png` (what webdataset, wids, timm and Hugging
Face train on). This distils one set per method and measures both:

    python tools/bench_exact.py --train /tmp/fm-train --test /tmp/fm-test --work /tmp/bench-exact \\
        --cache-dir /tmp/dcache --methods dm,dc,dsa,mtt,datm,dd,sre2l --ipc 10 --runs 3 --epochs 300 \\
        --set dm:iterations=200 --set dc:iterations=20 --set dsa:iterations=20 --set mtt:iterations=100 \\
        --set datm:iterations=100 --set dd:iterations=50 --set sre2l:iterations=200 \\
        --json docs/bench/fmnist-exact.json --md docs/bench/fmnist-exact.md

Each set is distilled at `--ipc` with its `--set method:key=value` overrides (`--set
teacher:key=value` for a teacher trained here: SRe2L's BatchNorm teacher; mtt and datm get a
buffer of `--num-experts` x `--expert-epochs` experts built once under `--work`, `--set
experts:key=value` for its config, or `--experts`),
then evaluated once with `evaluate` (the set's own protocol, `--epochs` passes, or `--protocol
fair`): `--runs` networks on the exact tensors and `--runs` on the `.png` members, at the same lr
with the same inits and seeds (`outside_reader` in the report). Per method: the fraction of the
exact tensor's pixel values outside [0, 1], the largest |exact − png| (pixel units), both
accuracies (mean ± std), their difference, whether they agree within the spread (|difference|
≤ the larger std), and the bytes of the `.npy` and `.png` members. Finished rows are kept in
the JSON and skipped on a rerun of the same settings. With `--in-range`, each method is also
distilled with `--no-exact-images` (its pixels projected into range after every iteration, the
PNG alone written) and evaluated the same way: added to the rows already measured. Prints (and
with `--md` writes) a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEW_LABELS = ("views", "online")



def member_bytes(out: Path) -> dict:
    """Payload bytes of the exact tensors (`<key>.npy`) and of the image members (`<key>.png`,
    `.jpg`, `.webp`) of an output's shards (tar headers and padding not counted)."""
    from dcompress.io.imageformat import IMAGE_MEMBERS
    from dcompress.io.manifest import read_manifest, shard_paths

    sizes = {"npy": 0, "image": 0}
    for url in shard_paths(out / "manifest.json", read_manifest(out / "manifest.json")):
        with tarfile.open(url) as t:
            for m in t.getmembers():
                ext = m.name.rsplit("/", 1)[-1].split(".", 1)[1] if "." in m.name else ""
                if ext == "npy":
                    sizes["npy"] += m.size
                elif ext in IMAGE_MEMBERS:
                    sizes["image"] += m.size
    return sizes


def ensure_experts(args, real) -> Path:
    """The expert buffer for mtt / datm: `--experts`, else built once under --work."""
    from dcompress import api

    if args.experts:
        return Path(args.experts)
    path = Path(args.work) / "experts"
    sets = [s.split(":", 1)[1] for s in args.set if s.startswith("experts:")]
    rep = api.experts(None, out=path, num_experts=args.num_experts, epochs=args.expert_epochs, seed=args.seed,
                      device=args.device, sets=sets, real=real)
    if rep.get("busy"):
        sys.exit(f"another process is training experts {rep['busy']} of {path}: wait for it, then rerun")
    return path


def distill_and_evaluate(args, method: str, out: Path, real, test, **kw) -> tuple[dict, dict, dict]:
    """`method` distilled into `out` as the row asks (`kw`: distill's extra keywords) and
    evaluated (the set's own protocol or fair): (distill report, evaluate report, seconds)."""
    from dcompress import api
    from dcompress.registry import get_method

    info = get_method(method).info
    sets = [s.split(":", 1)[1] for s in args.set if s.startswith(method + ":")]
    teacher_sets = [s.split(":", 1)[1] for s in args.set if s.startswith("teacher:")]
    extra = {"label_views": args.epochs + 1} if info.default_labels in VIEW_LABELS and args.epochs else {}
    if info.needs_experts:
        extra["experts"] = str(ensure_experts(args, real))
    t0 = time.time()
    rep = api.distill(None, method, out=out, ipc=args.ipc, seed=args.seed, device=args.device, sets=sets,
                      teacher_sets=teacher_sets, real=real, overwrite=True, **extra, **kw)
    t1 = time.time()
    fair = args.protocol == "fair"
    ev = api.evaluate(out, test, train=real if fair else None, runs=args.runs, epochs=args.epochs, seed=args.seed,
                      device=args.device, random_baseline=fair, test_limit=args.test_limit, protocol=args.protocol,
                      **({"lr_grid": args.lr_grid, "val_per_class": args.val_per_class, "ars": False,
                          "full_epochs": 1, "full_max_samples": 2000} if fair else {}))
    return rep, ev, {"distill": round(t1 - t0, 1), "evaluate": round(time.time() - t1, 1)}


def run_row(args, method: str, real, test) -> dict:
    from dcompress.registry import get_method

    info = get_method(method).info
    if info.kind != "synthesis":
        raise SystemExit(f"{method} is a {info.kind} method: it stores no exact tensors (synthesis methods only)")
    out = Path(args.work) / f"{method}-ipc{args.ipc}"
    rep, ev, seconds = distill_and_evaluate(args, method, out, real, test)
    sets = [s.split(":", 1)[1] for s in args.set if s.startswith(method + ":")]
    exact, o = ev["compressed"], ev["outside_reader"]
    png = {k: o[k] for k in ("mean", "std", "runs")} if "mean" in o else exact   # no difference: the same set
    diff = round(png["mean"] - exact["mean"], 2)
    return {"method": method, "ipc": args.ipc, "sets": sets, "labels": rep["labels"], "samples": rep["samples"],
            "image_member": o["images"], "differs_from_exact": o.get("differs_from_exact", False),
            "pixels_out_of_range": o.get("pixels_out_of_range"), "max_abs_diff": o.get("max_abs_diff"),
            "exact": exact, "png": png, "difference": diff, "agree": abs(diff) <= max(exact["std"], png["std"]),
            "lr": ev["protocol"]["lr_used"], "eval_epochs": ev["protocol"]["epochs"], "model": ev["protocol"]["model"],
            "bytes": member_bytes(out),
            "seconds": seconds}


def in_range_row(args, row: dict, real, test) -> dict:
    """`--in-range`: the same method distilled with `--no-exact-images` (pixels projected into
    range after every iteration, the PNG alone written) and evaluated as the exact row was: the
    accuracy of a set whose PNG is what was optimised, next to the exact form's."""
    method = row["method"]
    out = Path(args.work) / f"{method}-ipc{args.ipc}-in-range"
    _, ev, seconds = distill_and_evaluate(args, method, out, real, test, exact_images=False)
    got, exact = ev["compressed"], row["exact"]
    diff = round(got["mean"] - exact["mean"], 2)
    return {**row, "in_range": {**got, "difference": diff, "agree": abs(diff) <= max(exact["std"], got["std"]),
                                "png_bytes": member_bytes(out)["image"],
                                "seconds": seconds}}


def pm(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(state: dict) -> str:
    s = state["settings"]
    lines = [f"Synthesis sets at IPC {s['ipc']}, {s['protocol']} protocol, {s['epochs'] or 'default'} epochs, "
             f"{s['runs']} runs, seed {s['seed']}: every set trained on its exact `.npy` tensors and on its `.png` "
             "members (what an outside reader loads), same lr, inits and seeds. Accuracies in %, mean ± std.", "",
             "| method | pixels outside [0, 1] | max abs diff | exact acc % | PNG acc % | PNG − exact | within spread "
             "| .npy bytes | .png bytes | in range, PNG alone % | in range − exact |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in state["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error'][:80].replace('|', '/')} | | | | | | | | | |")
            continue
        gap, most = r["pixels_out_of_range"], r["max_abs_diff"]
        lines.append(f"| {r['method']} | {'–' if gap is None else f'{100 * gap:.2f} %'} | "
                     f"{'–' if most is None else f'{most:.4f}'} | "
                     f"{pm(r['exact'])} | {pm(r['png'])} | {r['difference']:+.2f} | {'yes' if r['agree'] else 'no'} | "
                     f"{r['bytes']['npy']:,} | {r['bytes']['image']:,} | "
                     + (f"{pm(r['in_range'])} | {r['in_range']['difference']:+.2f} |" if "in_range" in r else "– | – |"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--work", default="/tmp/bench-exact")
    ap.add_argument("--cache-dir", default=None, help="dcompress cache (DCOMPRESS_CACHE)")
    ap.add_argument("--methods", default="dm,dc,dsa,mtt,datm,dd,sre2l")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="method:key=value (teacher:key=value, "
                    "experts:key=value), repeatable")
    ap.add_argument("--runs", type=int, default=3, help="networks per form (at least 2: a spread to compare with)")
    ap.add_argument("--epochs", type=int, default=None, help="evaluation passes (default: each method's protocol)")
    ap.add_argument("--protocol", choices=("own", "fair"), default="own")
    ap.add_argument("--lr-grid", default="0.01,0.1", help="fair protocol only")
    ap.add_argument("--val-per-class", type=int, default=20, help="fair protocol only")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--experts", default=None, help="an expert buffer for mtt / datm (default: built under --work)")
    ap.add_argument("--num-experts", type=int, default=2)
    ap.add_argument("--expert-epochs", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--in-range", action="store_true", help="also distil each method with --no-exact-images "
                    "(pixels kept in range, the PNG alone) and evaluate it; added to rows already measured")
    args = ap.parse_args(argv)
    if args.runs < 2:
        ap.error("--runs must be at least 2: agreement is judged against the spread over runs")
    if args.cache_dir:
        os.environ["DCOMPRESS_CACHE"] = str(args.cache_dir)
    import torch

    from dcompress import api

    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "md", "methods", "threads", "in_range")}
    state = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    if state.get("settings") != settings:
        state = {"settings": settings, "rows": []}
    done = {r["method"] for r in state["rows"] if "error" not in r}
    state["rows"] = [r for r in state["rows"] if "error" not in r]
    real = api.load_real(args.train)
    test = api.load_real(args.test, class_names=real.class_names)

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(state, indent=1) + "\n")
    from dcompress.errors import Interrupted

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method in done and not (args.in_range and not any("in_range" in r for r in state["rows"]
                                                                if r["method"] == method)):
            continue
        try:
            row = next((r for r in state["rows"] if r["method"] == method), None) or run_row(args, method, real, test)
            state["rows"] = [r for r in state["rows"] if r["method"] != method]
            if args.in_range:
                row = in_range_row(args, row, real, test)
        except Interrupted:
            raise                       # Ctrl-C / SIGTERM stops the benchmark (rerun to continue)
        except Exception as e:  # noqa: BLE001 - a failed method is recorded, the others go on
            row = {"method": method, "ipc": args.ipc, "error": f"{type(e).__name__}: {e}"}
        state["rows"].append(row)
        save()
        print(json.dumps(row), file=sys.stderr, flush=True)
    table = markdown(state)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)
    print(table, end="")
    return 1 if any("error" in r for r in state["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
