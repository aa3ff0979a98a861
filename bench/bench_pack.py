"""How to train K cells of one architecture in one process: the lockstep pack the trainer uses
(K models, one SGD step of each in turn) against one vmapped model stack
(torch.func.stack_module_state + vmap: one batched kernel per layer for all K).

    python bench/bench_pack.py [--device cuda] [--k 4] [--steps 20] [--repeats 3] [--out DIR]

Prints, per model, seconds per pack step (K cells one step each) of both, and their ratio.
Forward + backward + SGD update, batch 32 (CPU) or 128 (CUDA), 3x28x28. Writes its section of
docs/BENCHMARKS.md, or with --out DIR (the GPU proof) DIR/bench_pack.md and DIR/bench_pack.json.
"""

import argparse
import copy
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from rethink.fileio import write_text_atomic
from rethink.models import build_model
from rethink.train.loop import device_name

from report import publish

WIDTHS = {"inception": 0.125, "alexnet": 0.25, "mlp_1x512": 1.0, "mlp_3x512": 1.0}  # the default config's


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(step, steps, repeats, dev):
    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(dev)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def pack_steps(arch, width, k, bs, dev):
    """Two ways to take one SGD step of K models (seeds 0..K-1) on their own batches."""
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(arch, (3, 28, 28), 10, width).to(dev).train())
    x = torch.randn(k, bs, 3, 28, 28, device=dev)
    y = torch.randint(0, 10, (k, bs), device=dev)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]

    def lockstep():
        for i, (m, opt) in enumerate(zip(models, opts, strict=True)):
            loss = F.cross_entropy(m(x[i]), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    params, buffers = stack_module_state(copy.deepcopy(models))
    base = copy.deepcopy(models[0]).to("meta")
    stacked_opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9)

    def loss_of(p, b, xi, yi):
        return F.cross_entropy(functional_call(base, (p, b), (xi,)), yi)

    def stacked():
        loss = vmap(loss_of, randomness="different")(params, buffers, x, y).sum()
        stacked_opt.zero_grad(set_to_none=True)
        loss.backward()
        stacked_opt.step()

    return lockstep, stacked


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    p.add_argument("--out", type=pathlib.Path, help="write DIR/bench_pack.{md,json} instead of docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    dev, k = torch.device(args.device), args.k
    bs = 128 if dev.type == "cuda" else 32
    if dev.type == "cpu":
        torch.set_num_threads(1)
    rows, results = [], {}
    for arch, width in WIDTHS.items():
        lockstep, stacked = pack_steps(arch, width, k, bs, dev)
        a = timed(lockstep, args.steps, args.repeats, dev)
        b = timed(stacked, args.steps, args.repeats, dev)
        results[arch] = {"width": width, "lockstep_s": a, "vmap_s": b}
        rows.append(f"| {arch} ({width:g}) | {a:.4f} | {b:.4f} | {b / a:.2f}x |")
        print(rows[-1], flush=True)
    lines = [
        f"## Packs: lockstep vs a vmapped model stack on {dev.type} (`bench/bench_pack.py`)",
        "",
        f"{datetime.date.today().isoformat()} on {device_name(dev)}, {len(os.sched_getaffinity(0))} CPU cores, "
        f"torch {torch.__version__}, Python {platform.python_version()}. K = {k} cells, batch {bs}, 3x28x28, "
        f"forward + backward + SGD; median of {args.repeats} runs of {args.steps} pack steps.",
        "Lockstep = the trainer's pack (one step of each model in turn); vmap = torch.func.stack_module_state + "
        "vmap, one stacked step. Ratio above 1: the stack is slower.",
        "",
        "| model (width) | lockstep: K steps (s) | vmap: one stacked step (s) | vmap / lockstep |",
        "|---|---:|---:|---:|",
        *rows,
    ]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"date": datetime.date.today().isoformat(), "device": device_name(dev), "torch": torch.__version__}
        write_text_atomic(args.out / "bench_pack.json", json.dumps(dict(meta, k=k, batch=bs, results=results)) + "\n")
        write_text_atomic(args.out / "bench_pack.md", "\n".join(lines) + "\n")
    publish(f"bench_pack_{dev.type}", lines, write=not (args.no_write or args.out))


if __name__ == "__main__":
    main()
