"""GPU benchmark (runs on CPU too, as the proof's smoke run): training images/s of the trainer's
step as the workflow runs it, for one cell and for a pack of cells, against a naive loop as peers
write it; and the GPU-hours of a config's whole grid from the measured rates.

    python bench/bench_gpu.py --out DIR [--device cuda] [--steps 200] [--repeats 5]

Per architecture (width --width, batch --batch-size, 3x28x28 synthetic images):
- naive: a plain model (no channels_last, no autocast, torch.optim.SGD unfused), a torchvision
  Dataset with per-image transforms in a DataLoader (persistent workers, pinned memory),
  `loss.item()` every step: what a peer's script does;
- one cell: the trainer's step (rethink.train.loop.Member) eager, compiled (--compile), and with
  random crop + flip + rotation (the augmented cells' rate) as the grid config compiles it
  (its compute.compile); nothing else is compiled;
- a pack: --pack cells in lockstep, reported as the pack's images/s (all its cells together)
  beside one cell's, never divided by the naive loop (which trains one model);
- evaluation: images/s of the trainer's evaluate() over the training split;
- start-up and compile seconds, peak GPU memory, training GFLOP per image
  (torch.utils.flop_counter) and MFU against --peak-tflops.
Every rate is the median of --repeats runs of --steps timed steps after a warm-up run. The
training split holds a whole number of batches (--epoch-batches), so no step sees a short last
batch: a compiled step never recompiles for one.

Then the GPU-hours of --grid-config's whole grid, one cell at a time, every cell to max_epochs
(which no cell passes): start-up + training at its architecture's measured rate as the grid
compiles it (the augmented rate for cells with random crop or augmentation) + every evaluation
(train and test split, each eval_every_epochs and at the end) at the measured evaluation rate;
an upper bound on those terms, checkpoint writes not counted. Writes DIR/bench_gpu.md and DIR/bench_gpu.json after each
architecture, so a run stopped midway keeps what it measured.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rethink import plan  # noqa: E402
from rethink.data import sources  # noqa: E402
from rethink.data.shards import write_shard  # noqa: E402
from rethink.fileio import write_text_atomic  # noqa: E402
from rethink.models import build_model  # noqa: E402
from rethink.train import loop  # noqa: E402

from bench_train import PerImage, baseline_transform, hparams  # noqa: E402

REFERENCE_GFLOP = {"inception": 1.2213, "alexnet": 0.143, "mlp_1x512": 0.0048, "mlp_3x512": 0.0080}
# architectures measured under another's name in the grid estimate (BatchNorm only adds work)
STAND_INS = {"inception_nobn": "inception"}
REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (3, 28, 28)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def synthetic(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def write_split(path, images, labels, split):
    attrs = dict(dataset="bench", split=split, noise="clean", level=0.0, seed=-1, shard_index=0, n_shards=1)
    write_shard(path, {"images": images, "labels": labels}, dict(attrs, num_classes=10))
    return [str(path)]


def members(cells, data, dev, tmp, compile_mode):
    """The trainer's pack members for `cells` (the only use of rethink.train.loop's Member here)."""
    cache = loop.SplitCache(dev)
    return [
        loop.Member(
            loop.Job(c, *data, tmp / f"m{i}", tmp / f"m{i}.pt"),
            "bench",
            None,
            (cache.get(data[0], "train", c), cache.get(data[1], "test", c)),
            dev,
            compile_mode,
            echo=False,
        )
        for i, c in enumerate(cells)
    ]


def median_rate(run, images_per_run, repeats, dev):
    """Images/s of run(): the median over `repeats` timed runs, after one warm-up run."""
    rates = []
    for r in range(repeats + 1):
        sync(dev)
        start = time.perf_counter()
        run()
        sync(dev)
        if r:  # the first run warms up (cuDNN autotuning, compilation)
            rates.append(images_per_run / (time.perf_counter() - start))
    return statistics.median(rates)


def step_rate(pack, steps, repeats, dev):
    """Images/s of a pack's lockstep steps (all its members' images)."""

    def run():
        for _ in range(steps):
            for m in pack:
                m.train_step()

    return median_rate(run, steps * sum(m.bs for m in pack), repeats, dev)


def eval_rate(member, repeats, dev):
    """Images/s of the trainer's evaluation (eval mode, whole split) over the training split."""
    split, hp = member.train_split, member.hp
    return median_rate(
        lambda: loop.evaluate(member.model, split, hp["crop_size"], member.amp, member.fmt, dev),
        split.n,
        repeats,
        dev,
    )


def naive_rate(images, labels, arch, width, hp, dev, steps, repeats, workers):
    """The common way: a plain fp32 model and SGD, per-image transforms in a DataLoader with
    persistent workers, loss.item() every step; `steps` timed steps per run."""
    torch.manual_seed(0)
    model = build_model(arch, SHAPE, 10, width).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"])
    dataset = PerImage(images.transpose(0, 2, 3, 1), labels, baseline_transform(False))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=hp["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=workers > 0,
    )
    batches = iter(loader)

    def run():
        nonlocal batches
        for _ in range(steps):
            try:
                x, y = next(batches)
            except StopIteration:  # a new epoch, as a peer's `for epoch ...: for x, y in loader` has
                batches = iter(loader)
                x, y = next(batches)
            loss = F.cross_entropy(model(x.to(dev, non_blocking=True)), y.to(dev, non_blocking=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()

    return median_rate(run, steps * hp["batch_size"], repeats, dev)


def flops_per_image(cell, dev, bs=8):
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _, _, _, _ = loop.setup(cell, SHAPE, 10, dev, amp_dtype=None)
    x, y = torch.randn(bs, *SHAPE, device=dev), torch.randint(0, 10, (bs,), device=dev)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / bs / 1e9


def grid_cells(configfile):
    """A config's compute.compile and (model, hparams, n_train, n_test) of each of its cells (the
    only use of rethink.plan here)."""
    grid = plan.load(configfile)
    config, cells = grid.config, grid.cells
    return config["compute"]["compile"], [
        (
            spec["arch"],
            spec["hparams"],
            *(sources.split_size(config["datasets"][cell.dataset], split) for split in ("train", "test")),
        )
        for cell, spec in cells.values()
    ]


def grid_hours(cells, plain_rate, results):
    """GPU-hours of every cell to max_epochs, one at a time, at the measured rates (`plain_rate`:
    the key of the cells without augmentation's); None when an architecture was not measured."""
    seconds = 0.0
    for arch, hp, n_train, n_test in cells:
        r = results.get(STAND_INS.get(arch, arch))
        if r is None or plain_rate not in r:
            return None
        train_rate = r["per_cell_augmented"] if hp["augment"] or hp["random_crop"] else r[plain_rate]
        evaluations = math.ceil(hp["max_epochs"] / hp["eval_every_epochs"]) + 1  # epoch 0 ... max_epochs
        seconds += (
            r["startup_s"] + hp["max_epochs"] * n_train / train_rate + evaluations * (n_train + n_test) / r["eval"]
        )
    return seconds / 3600


def measure(arch, args, grid_compile, data, images, labels, dev, tmp):
    hp = dict(
        hparams(False, args.batch_size),
        device=dev.type,
        max_epochs=10**6,
        eval_every_epochs=10**6,
        checkpoint_minutes=10**6,
    )
    cell = {"cell": f"bench/{arch}", "arch": arch, "width": args.width, "seed": 0, "hparams": hp}
    row = {}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    (one,) = members([cell], data, dev, tmp / arch, "off")
    sync(dev)
    row["startup_s"] = time.perf_counter() - start  # model, data on the device, epoch-0 evaluation
    row["per_cell_eager"] = step_rate([one], args.steps, args.repeats, dev)
    row["eval"] = eval_rate(one, args.repeats, dev)
    row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del one
    augmented = dict(cell, hparams=dict(hp, random_crop=True, augment=True))
    row["per_cell_augmented"] = step_rate(
        members([augmented], data, dev, tmp / f"{arch}-aug", grid_compile), args.steps, args.repeats, dev
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    pack = members([dict(cell, seed=s) for s in range(args.pack)], data, dev, tmp / f"{arch}-pack", "off")
    row["pack"] = step_rate(pack, max(1, args.steps // args.pack), args.repeats, dev)
    row["pack_peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del pack
    if args.compile != "off":
        (compiled,) = members([cell], data, dev, tmp / f"{arch}-c", args.compile)
        start = time.perf_counter()
        for _ in range(3):  # compilation, and with CUDA graphs their warm-up and capture
            compiled.train_step()
        sync(dev)
        row["compile_s"] = time.perf_counter() - start
        row["per_cell_compiled"] = step_rate([compiled], args.steps, args.repeats, dev)
        del compiled
    row["naive"] = naive_rate(images, labels, arch, args.width, hp, dev, args.steps, args.repeats, args.naive_workers)
    row["gflop_per_image"] = flops_per_image(cell, dev)
    row["per_cell"] = max(row["per_cell_eager"], row.get("per_cell_compiled", 0))  # the faster way
    row["cell_over_naive"] = row["per_cell"] / row["naive"]
    row["pack_over_cell"] = row["pack"] / row["per_cell_eager"]
    peak = args.peak_tflops * 1e12
    row["mfu_cell"] = row["per_cell"] * row["gflop_per_image"] * 1e9 / peak
    row["mfu_pack"] = row["pack"] * row["gflop_per_image"] * 1e9 / peak
    return row


def report(args, meta, results, grid):
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        args.out / "bench_gpu.json", json.dumps({"meta": meta, "results": results, "grid": grid}, indent=2) + "\n"
    )
    reference = args.width == 1.0
    lines = [
        f"## bench_gpu on {meta['device']} ({meta['date']}, torch {meta['torch']}, CUDA {meta['cuda']})",
        "",
        f"Width {args.width:g}, batch {args.batch_size}, 3x28x28, {meta['n_train']} training images "
        f"({args.epoch_batches} whole batches); median of {args.repeats} runs of {args.steps} steps after a "
        f"warm-up run. Naive: plain fp32 model and SGD, DataLoader ({args.naive_workers} persistent workers) "
        f"with per-image transforms, loss.item() per step. One cell: the trainer's step, eager and compiled "
        f"(torch.compile mode {args.compile}); pack: {args.pack} cells in lockstep, images/s of all of them. "
        "Cell / naive compares one model with one model.",
        "",
        f"| model | naive (img/s) | one cell eager | one cell compiled | augmented (compile {grid['compile']}) | "
        "cell / naive | "
        f"pack of {args.pack} (img/s) | pack / cell | eval (img/s) | GFLOP/img{' (ref)' if reference else ''} | "
        "MFU cell | MFU pack | start-up s | compile s | peak GiB cell / pack |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, r in results.items():
        gflop = f"{r['gflop_per_image']:.4f}" + (f" ({REFERENCE_GFLOP[arch]})" if reference else "")
        compiled = f"{r['per_cell_compiled']:,.0f}" if "per_cell_compiled" in r else "not measured"
        mem = f"{r['peak_mem_gib']:.2f} / {r['pack_peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "(CPU)"
        lines.append(
            f"| {arch} | {r['naive']:,.0f} | {r['per_cell_eager']:,.0f} | {compiled} | "
            f"{r['per_cell_augmented']:,.0f} | {r['cell_over_naive']:.1f}x | {r['pack']:,.0f} | "
            f"{r['pack_over_cell']:.2f}x | {r['eval']:,.0f} | {gflop} | {r['mfu_cell']:.1%} | {r['mfu_pack']:.1%} | "
            f"{r['startup_s']:.1f} | {r.get('compile_s', 0):.1f} | {mem} |"
        )
    if grid["hours"] is None and set(results) >= set(REFERENCE_GFLOP):
        lines += [
            "",
            f"Whole grid of {grid['config']}: not estimated, its compute.compile {grid['compile']} was not measured.",
        ]
    if grid["hours"] is not None:
        lines += [
            "",
            f"Whole grid of {grid['config']} ({grid['cells']} cells, one at a time, every cell to max_epochs, "
            f"compute.compile {grid['compile']}): {grid['hours']:.2f} GPU-hours for start-up, training (at the "
            "rate above as the grid compiles it; the augmented rate for cells with random crop or augmentation) "
            "and every evaluation (at the eval rate), all measured here; an upper bound on these, checkpoint "
            "writes not counted.",
        ]
    write_text_atomic(args.out / "bench_gpu.md", "\n".join(lines) + "\n")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", nargs="+", default=list(REFERENCE_GFLOP), choices=list(REFERENCE_GFLOP))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=200, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pack", type=int, default=8, help="cells in the packed measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epoch-batches", type=int, default=390, help="training split = this many whole batches")
    p.add_argument("--n-test", type=int, default=1000, help="test split (evaluated at each cell's start)")
    p.add_argument("--naive-workers", type=int, default=4, help="the naive loop's DataLoader workers")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--compile", default="reduce-overhead", choices=loop.COMPILE_MODES)
    p.add_argument("--grid-config", default=str(REPO / "config/paper-fashion-mnist.yaml"))
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    tmp = pathlib.Path(tempfile.mkdtemp())
    images, labels = synthetic(args.batch_size * args.epoch_batches, 0)
    data = (
        write_split(tmp / "train.h5", images, labels, "train"),
        write_split(tmp / "test.h5", *synthetic(args.n_test, 1), "test"),
    )
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": loop.device_name(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "n_train": len(labels),
        **{k: v for k, v in vars(args).items() if k != "out"},
    }
    grid_compile, cells = grid_cells(args.grid_config)  # before measuring: a bad config fails fast
    # the rate the grid's cells without augmentation train at: as its compute.compile has them
    plain_rate = (
        "per_cell_eager" if grid_compile == "off" else "per_cell_compiled" if grid_compile == args.compile else None
    )
    grid = {"config": args.grid_config, "compile": grid_compile, "cells": len(cells), "hours": None}
    results = {}
    for arch in args.archs:
        results[arch] = measure(arch, args, grid_compile, data, images, labels, dev, tmp)
        grid["hours"] = grid_hours(cells, plain_rate, results)
        lines = report(args, meta, results, grid)
        print(f"# {arch}: {json.dumps(results[arch])}", flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
