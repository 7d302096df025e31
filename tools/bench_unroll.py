"""Peak memory and time per outer iteration of `unroll`: "full" vs "constant" vs syn_steps.

MTT setting: ConvNet-3 (width 128, instance norm = GroupNorm(128,128), avg-pool, 1x28x28 input
padded to 32 by the first conv's padding 3, 10 classes; 317,706 params), `batch_syn` synthetic
images as the leaf plus a learnable syn_lr, inner loss CE over the whole synthetic batch, outer
loss ‖θ_N − θ*‖² / ‖θ_0 − θ*‖².

Each (mode, syn_steps) measurement runs in a fresh subprocess, so the process peak memory belongs
to that configuration alone: on CPU the peak RSS (VmHWM, reset after warm-up through
/proc/self/clear_refs) minus the RSS before the timed iteration; on CUDA
`torch.cuda.max_memory_allocated` minus the allocation before it. Modes are interleaved
(full, constant, then constant, full, ...) over --rounds rounds and the medians are reported,
wall time and process CPU time (the CPU time is the steadier number on a shared machine).

    python tools/bench_unroll.py                          # default: steps 10,20,40,80, 3 rounds
    python tools/bench_unroll.py --steps 10,20 --rounds 3 --reps 1   # a reduced run (docs/unrolling.md)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MIB = 2**20


# ------------------------------------------------------------------ worker (one configuration)

def convnet_flat(generator, dtype, device, channel=1, num_classes=10, width=128, depth=3):
    """(θ_0, forward(θ, x)) for the reference ConvNet-3 on 28x28 inputs, written functionally."""
    import torch
    import torch.nn.functional as F

    shapes, c_in = [], channel
    for _ in range(depth):
        shapes += [(width, c_in, 3, 3), (width,), (width,), (width,)]  # conv w, conv b, norm w, norm b
        c_in = width
    shapes += [(num_classes, width * 4 * 4), (num_classes,)]
    parts = []
    for k, s in enumerate(shapes):
        if k < 4 * depth and k % 4 == 2:
            parts.append(torch.ones(s))
        elif k < 4 * depth and k % 4 == 3:
            parts.append(torch.zeros(s))
        else:  # PyTorch's default Conv/Linear bound 1/sqrt(fan_in), drawn from our generator
            fan_in = shapes[k if len(s) > 1 else k - 1][1] * (9 if k < 4 * depth else 1)
            parts.append((torch.rand(s, generator=generator) * 2 - 1) / fan_in ** 0.5)
    theta0 = torch.cat([p.reshape(-1) for p in parts]).to(dtype=dtype, device=device)
    sizes = [int(torch.Size(s).numel()) for s in shapes]

    def forward(theta, x):
        ps = [t.view(s) for t, s in zip(torch.split(theta, sizes), shapes)]
        h = x
        for d in range(depth):
            w, b, gw, gb = ps[4 * d:4 * d + 4]
            h = F.conv2d(h, w, b, padding=3 if (d == 0 and channel == 1) else 1)
            h = F.avg_pool2d(F.relu(F.group_norm(h, width, gw, gb)), 2)
        return F.linear(h.flatten(1), ps[-2], ps[-1])

    return theta0, forward


def make_net(which, generator, dtype, device):
    """ConvNet-3 as (θ_0, forward): "dcompress" = the package net via `forward_flat`; "local" = `convnet_flat`."""
    if which == "dcompress":
        from dcompress.nets import build_net
        from dcompress.nets.functional import flat_params, forward_flat

        net = build_net("convnet", 1, 10, (28, 28), generator=generator).to(device=device, dtype=dtype)
        return flat_params(net), lambda theta, x: forward_flat(net, theta, x)
    return convnet_flat(generator, dtype, device)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    from dcompress.train.unroll import step_graph_bytes, unroll

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), torch.float32
    g = torch.Generator().manual_seed(0)
    theta0, forward = make_net(args.net, g, dtype, device)
    target = theta0 + 0.01 * torch.randn(theta0.numel(), generator=g).to(device)
    X = torch.randn(args.batch_syn, 1, 28, 28, generator=g).to(device).requires_grad_(True)
    y = (torch.arange(args.batch_syn) % 10).to(device)
    syn_lr = torch.tensor(0.01, device=device, requires_grad=True)

    def inner(theta, i):
        return F.cross_entropy(forward(theta, X), y)

    def outer(theta):
        return ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()

    step_bytes = step_graph_bytes(inner, lambda i: syn_lr, theta0)
    unroll(inner, lambda i: syn_lr, theta0, 2, outer, [X, syn_lr], mode=args.mode)  # warm-up
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    times, cpu_times = [], []
    for _ in range(args.reps):
        t0, c0 = time.perf_counter(), time.process_time()
        res = unroll(inner, lambda i: syn_lr, theta0, args.one_steps, outer, [X, syn_lr], mode=args.mode)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _status_kib("VmHWM") * 1024
    return {"mode": args.mode, "steps": args.one_steps, "batch_syn": args.batch_syn,
            "time_s": min(times), "cpu_s": min(cpu_times), "peak_mib": (peak - base) / MIB, "base_mib": base / MIB,
            "step_graph_mib": step_bytes / MIB, "loss": res.loss, "n_params": theta0.numel()}


# ------------------------------------------------------------------ driver

def run_one(args, mode: str, steps: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--one-steps", str(steps),
           "--batch-syn", str(args.batch_syn), "--threads", str(args.threads), "--device", args.device,
           "--reps", str(args.reps), "--net", args.net]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker failed ({mode}, {steps} steps):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="10,20,40,80", help="comma-separated syn_steps values")
    p.add_argument("--batch-syn", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration (median)")
    p.add_argument("--reps", type=int, default=2, help="timed outer iterations per subprocess (min)")
    p.add_argument("--modes", default="full,constant")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker; 1 keeps OpenMP spin-waits out of CPU time on a shared machine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--net", choices=["dcompress", "local"], default="dcompress",
                   help="ConvNet-3 from dcompress.nets (forward_flat) or this file's functional copy")
    p.add_argument("--json", help="also write all raw measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--one-steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    steps_list = [int(s) for s in args.steps.split(",")]
    modes = args.modes.split(",")
    raw: list[dict] = []
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for steps in steps_list:
            order = modes if r % 2 == 0 else modes[::-1]  # ABBA across rounds: no mode always goes first
            for mode in order:
                m = run_one(args, mode, steps)
                m["round"] = r
                raw.append(m)
                print(f"round {r} {mode:>8} steps {steps:3d}: {m['time_s']:7.2f} s wall {m['cpu_s']:7.2f} s cpu  "
                      f"peak +{m['peak_mib']:8.1f} MiB",
                      file=sys.stderr, flush=True)

    def med(mode, steps, key):
        return statistics.median(m[key] for m in raw if m["mode"] == mode and m["steps"] == steps)

    step_mib = raw[0]["step_graph_mib"]
    print(f"\nConvNet-3 w128 1x28x28 ({args.net}), {raw[0]['n_params']} params, batch_syn {args.batch_syn}, device {args.device}, "
          f"{args.threads} threads, {args.rounds} rounds (median), total {time.perf_counter() - t_start:.0f} s")
    print(f"saved-tensor graph per unrolled step (step_graph_bytes): {step_mib:.1f} MiB "
          f"= {step_mib / args.batch_syn:.2f} MiB per image-step")
    both = {"full", "constant"} <= set(modes)
    head = "| syn_steps | " + " | ".join(f"{m} peak MiB | {m} wall s/it | {m} CPU s/it" for m in modes)
    head += " | full est. MiB | constant/full wall | constant/full CPU |" if both else " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for steps in steps_list:
        cells = [f"{med(m, steps, 'peak_mib'):.0f} | {med(m, steps, 'time_s'):.2f} | {med(m, steps, 'cpu_s'):.2f}"
                 for m in modes]
        row = f"| {steps} | " + " | ".join(cells)
        if both:
            ratio = [med("constant", steps, k) / med("full", steps, k) for k in ("time_s", "cpu_s")]
            row += f" | {step_mib * steps:.0f} | {ratio[0]:.2f} | {ratio[1]:.2f} |"
        else:
            row += " |"
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
