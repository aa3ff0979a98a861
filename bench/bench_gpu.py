"""GPU benchmark (runs on CPU too, for a smoke run): training images/s of the trainer's step as
the workflow runs it, per cell, packed, and compiled, against a naive loop as peers write it
(torchvision Dataset + per-image transforms + DataLoader, fp32, loss.item() every step).

    python bench/bench_gpu.py --out DIR [--device cuda] [--steps 200] [--repeats 5]

Per architecture: img/s (median of --repeats runs of --steps steps after warm-up), start-up and
compile seconds, peak GPU memory, training GFLOP per image (torch.utils.flop_counter, beside
the issue's reference values) and MFU against --peak-tflops; then GPU-hours for a config's whole
grid from the measured per-cell rate, as an upper bound (every cell to max_epochs).
Writes DIR/bench_gpu.md and DIR/bench_gpu.json.
"""

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rethink import config as rconfig  # noqa: E402
from rethink import grid  # noqa: E402
from rethink.data import sources  # noqa: E402
from rethink.data.shards import write_shard  # noqa: E402
from rethink.train import loop  # noqa: E402

from bench_train import PerImage, baseline_transform, hparams  # noqa: E402

REFERENCE_GFLOP = {"inception": 1.2213, "alexnet": 0.143, "mlp_1x512": 0.0048, "mlp_3x512": 0.0080}
REPO = pathlib.Path(__file__).resolve().parents[1]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def shards(tmp, n, shape):
    rng = np.random.default_rng(0)
    paths = []
    for split, count in (("train", n), ("test", 1000)):
        path = tmp / f"{split}.h5"
        write_shard(
            path,
            {
                "images": rng.integers(0, 256, (count, *shape), dtype=np.uint8),
                "labels": rng.integers(0, 10, count).astype(np.int64),
            },
            dict(
                dataset="bench",
                split=split,
                noise="clean",
                level=0.0,
                seed=-1,
                shard_index=0,
                n_shards=1,
                num_classes=10,
            ),
        )
        paths.append([str(path)])
    return paths


def members(cells, data, dev, tmp, compile_mode):
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


def rate_of(pack, steps, repeats, dev):
    """Images/s of a pack's lockstep steps: the median over repeats, after one warm-up run."""
    rates = []
    for r in range(repeats + 1):
        sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            for m in pack:
                m.train_step()
        sync(dev)
        if r:  # the first run warms up (and compiles)
            rates.append(steps * sum(m.bs for m in pack) / (time.perf_counter() - start))
    return statistics.median(rates)


def naive_rate(images, labels, cell, dev, steps, repeats):
    """The common way: per-image transforms in a DataLoader, fp32, loss.item() every step."""
    hp = cell["hparams"]
    model, opt, _, _, _, _ = loop.setup(cell, (images.shape[1], 28, 28), 10, dev, amp_dtype=None)
    dataset = PerImage(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), baseline_transform(False))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=hp["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=4 if dev.type == "cuda" else 0,
        pin_memory=dev.type == "cuda",
    )
    rates = []
    for r in range(repeats + 1):
        start, done = time.perf_counter(), 0
        while done < steps:
            for x, y in loader:
                loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()
                done += 1
                if done == steps:
                    break
        if r:
            rates.append(steps * hp["batch_size"] / (time.perf_counter() - start))
    return statistics.median(rates)


def flops_per_image(cell, dev, bs=8):
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _, _, _, _ = loop.setup(cell, (3, 28, 28), 10, dev, amp_dtype=None)
    x, y = torch.randn(bs, 3, 28, 28, device=dev), torch.randint(0, 10, (bs,), device=dev)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / bs / 1e9


def grid_hours(configfile, per_arch_rate):
    """GPU-hours for every cell of a config to max_epochs at the measured per-cell rates."""
    config = rconfig.load(configfile, REPO / "workflow/schemas/config.schema.yaml")
    cells, _ = grid.expand(config)
    seconds = 0.0
    for cell, spec in cells.values():
        n = sources.split_size(config["datasets"][cell.dataset], "train")
        seconds += spec["hparams"]["max_epochs"] * n / per_arch_rate[spec["arch"]]
    return len(cells), seconds / 3600


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", nargs="+", default=list(REFERENCE_GFLOP))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pack", type=int, default=8, help="cells in the packed measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--compile", default="reduce-overhead", choices=("off", "default", "reduce-overhead"))
    p.add_argument("--grid-config", default=str(REPO / "config/paper-fashion-mnist.yaml"))
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp())
    data = shards(tmp, args.n_train, (3, 28, 28))
    hp = dict(
        hparams(False, args.batch_size),
        device=dev.type,
        max_epochs=10**6,
        eval_every_epochs=10**6,
        checkpoint_minutes=10**6,
    )
    results = {}
    for arch in args.archs:
        cell = {"cell": f"bench/{arch}", "arch": arch, "width": 1.0, "seed": 0, "hparams": hp}
        row = {}
        start = time.perf_counter()
        one = members([cell], data, dev, tmp / arch, "off")
        sync(dev)
        row["startup_s"] = time.perf_counter() - start
        row["per_cell_eager"] = rate_of(one, args.steps, args.repeats, dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        pack = members([dict(cell, seed=s) for s in range(args.pack)], data, dev, tmp / f"{arch}-pack", "off")
        row["pack_eager"] = rate_of(pack, max(1, args.steps // args.pack), args.repeats, dev)
        if args.compile != "off":
            compiled = members([cell], data, dev, tmp / f"{arch}-c", args.compile)
            start = time.perf_counter()
            for _ in range(3):
                compiled[0].train_step()
            sync(dev)
            row["compile_s"] = time.perf_counter() - start
            row["per_cell_compiled"] = rate_of(compiled, args.steps, args.repeats, dev)
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4096, 3, 28, 28), dtype=np.uint8))
        labels = torch.from_numpy(np.random.default_rng(1).integers(0, 10, 4096).astype(np.int64))
        row["naive"] = naive_rate(images, labels, cell, dev, min(args.steps, 30), min(args.repeats, 3))
        row["gflop_per_image"], row["gflop_reference"] = flops_per_image(cell, dev), REFERENCE_GFLOP[arch]
        best = max(v for k, v in row.items() if k.startswith(("per_cell", "pack")))
        row["best"], row["mfu"] = best, best * row["gflop_per_image"] * 1e9 / (args.peak_tflops * 1e12)
        row["best_over_naive"] = best / row["naive"]
        results[arch] = row
        print(f"# {arch}: {json.dumps(row)}", flush=True)
    rates = {a: max(r.get("per_cell_compiled", 0), r["per_cell_eager"]) for a, r in results.items()}
    rates.setdefault("inception_nobn", rates.get("inception"))
    n_cells, hours = grid_hours(args.grid_config, rates) if len(rates) > 4 else (None, None)
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": loop.device_name(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": torch.cuda.get_device_properties(dev).name if dev.type == "cuda" else None,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "pack": args.pack,
        "compile": args.compile,
        "grid_config": args.grid_config,
        "grid_cells": n_cells,
        "grid_hours_upper_bound_per_cell_rate": hours,
    }
    (args.out / "bench_gpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        f"## bench_gpu on {meta['device']} ({meta['date']}, torch {meta['torch']}, CUDA {meta['cuda']})",
        "",
        f"Batch {args.batch_size}, width 1, 3x28x28; median of {args.repeats} runs of {args.steps} steps "
        f"after warm-up; pack = {args.pack} cells in lockstep; compiled = torch.compile mode {args.compile}.",
        "",
        "| model | naive (img/s) | per cell (img/s) | pack (img/s) | compiled (img/s) | best / naive | "
        "GFLOP/img (ref) | MFU | start-up s | compile s | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, r in results.items():
        lines.append(
            f"| {arch} | {r['naive']:,.0f} | {r['per_cell_eager']:,.0f} | {r['pack_eager']:,.0f} | "
            f"{r.get('per_cell_compiled', 0):,.0f} | {r['best_over_naive']:.1f}x | "
            f"{r['gflop_per_image']:.4f} ({r['gflop_reference']}) | {r['mfu']:.1%} | {r['startup_s']:.1f} | "
            f"{r.get('compile_s', 0):.1f} | {r['peak_mem_gib'] or 0:.2f} |"
        )
    if hours is not None:
        lines += [
            "",
            f"Whole grid of {args.grid_config} ({n_cells} cells, every cell to max_epochs, one cell "
            f"at a time at the per-cell rate): {hours:.2f} GPU-hours (upper bound).",
        ]
    (args.out / "bench_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
