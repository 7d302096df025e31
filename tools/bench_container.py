"""Where an output's bytes go, by input: `distill --budget` at a few budgets on one or more inputs,
and the byte report's split into images / labels / other members / container (tar headers,
padding, end-of-archive records).

    python tools/bench_container.py --input fm=/tmp/fm-train --input rgb64=/tmp/rgb64 \\
        --budgets 0.5%,5% --method random --labels hard --work /tmp/bench-container \\
        --json docs/bench/container.json

Shows the container's share falling as images grow (issue 25): a 28x28 grey PNG is a few hundred
bytes inside three 512-byte-aligned tar members, a 64x64 colour image several kilobytes. Inputs
given as `name=URLS` (`--label-key` for shards whose class is not `.cls`, e.g. json:label).
Prints a Markdown table; finished rows are kept in the JSON and skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def row_for(name: str, urls: str, budget: str, args) -> dict:
    from dcompress import api

    out = args.work / f"{name}-{budget.replace('%', 'pct')}-{args.method}-{args.labels}"
    t0 = time.time()
    rep = api.distill(urls, args.method, out=out, budget=budget, labels=args.labels, seed=args.seed,
                      device="cpu", label_key=args.label_key.get(name, "cls"), overwrite=True)
    b = rep["bytes"]
    real_shape = json.loads((out / "manifest.json").read_text())["dcompress"]["image_shape"]
    total = b["total"]
    return {"input": name, "image_shape": real_shape, "budget": budget, "budget_bytes": rep["budget"]["bytes"],
            "ipc": rep["ipc"], "samples": rep["samples"], "total": total,
            "images": b.get("images", 0), "labels": b.get("labels", 0), "other": b.get("other", 0),
            "container": b.get("container", 0),
            "container_share": round(b.get("container", 0) / total, 4) if total else None,
            "bytes_per_sample": round(total / rep["samples"], 1), "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", action="append", required=True, help="name=URLS (repeatable)")
    ap.add_argument("--label-key", action="append", default=[], help="name=KEY for an input's label key")
    ap.add_argument("--budgets", default="0.5%,5%")
    ap.add_argument("--method", default="random")
    ap.add_argument("--labels", default="hard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    args.label_key = dict(kv.split("=", 1) for kv in args.label_key)
    inputs = [kv.split("=", 1) for kv in args.input]
    args.work.mkdir(parents=True, exist_ok=True)
    settings = {"method": args.method, "labels": args.labels, "seed": args.seed}
    prior = json.loads(args.json.read_text()) if args.json.exists() else {}
    rows = prior.get("rows", []) if prior.get("settings") == settings else []
    for name, urls in inputs:
        for budget in [b.strip() for b in args.budgets.split(",") if b.strip()]:
            if any(r["input"] == name and r["budget"] == budget for r in rows):
                continue
            rows.append(row_for(name, urls, budget, args))
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print("| input | image | budget | IPC | output bytes | images | labels | other members | container | "
          "container share | bytes / sample |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c, h, w = r["image_shape"]
        print(f"| {r['input']} | {c}x{h}x{w} | {r['budget']} ({r['budget_bytes']:,}) | {r['ipc']} | {r['total']:,} | "
              f"{r['images']:,} | {r['labels']:,} | {r['other']:,} | {r['container']:,} | "
              f"{100 * r['container_share']:.1f} % | {r['bytes_per_sample']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
