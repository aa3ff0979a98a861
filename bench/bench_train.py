"""Training throughput: our trainer's inner loop vs the common DataLoader + per-image transforms.

Both sides train the same model (same init) with the same SGD step at the same batch size on
CIFAR-shaped uint8 data (3x32x32 -> 28x28). Ours: the whole split on the device, a permuted
index gather per batch, batched crops/flip/rotation/standardisation (rethink.train.preprocess).
Baseline: a torch Dataset of HWC uint8 images, PIL + torchvision.transforms per image, a
DataLoader with shuffling. Prints a Markdown table and writes it to its section of
docs/BENCHMARKS.md (one section per device; --no-write to print only).

    python bench/bench_train.py                    # CPU, about 1.5 minutes on 2 cores
    python bench/bench_train.py --device cuda --steps-scale 10
"""

import argparse
import datetime
import math
import os
import platform
import time

import numpy as np
import torch

from rethink.torchvision_guard import torchvision
from rethink.train import preprocess
from rethink.train.loop import device_name, setup, sgd_step

from report import publish

T = torchvision.transforms
ARCHS = {"mlp_1x512": 100, "mlp_3x512": 60, "alexnet": 20, "inception": 10}  # timed steps at width 1


def hparams(augment, batch_size):
    return {"lr": 0.01, "lr_decay": 0.95, "momentum": 0.9, "batch_size": batch_size, "max_epochs": 1,
            "weight_decay": 0.0, "dropout": 0.0, "random_crop": augment, "crop_size": 28, "crop_pad": 2,
            "augment": augment, "rotate_degrees": 25.0, "fit_threshold": 1.0, "eval_every_epochs": 1,
            "checkpoint_minutes": 5.0, "device": "cpu", "init": "tensorflow"}  # fmt: skip


def standardize_one(x):
    return (x - x.mean()) / max(x.std(correction=0).item(), 1 / math.sqrt(x.numel()))


class PerImage(torch.utils.data.Dataset):
    """The torchvision.datasets.CIFAR10 pattern: one PIL image and one transform call per sample."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(torchvision.transforms.functional.to_pil_image(self.images[i])), int(self.labels[i])


def baseline_transform(augment):
    crop = (
        [T.RandomCrop(28), T.RandomHorizontalFlip(), T.RandomRotation(25, T.InterpolationMode.BILINEAR)]
        if augment
        else [T.CenterCrop(28)]
    )
    return T.Compose([*crop, T.ToTensor(), T.Lambda(standardize_one)])


def step_parts(cell, dev):
    """What sgd_step takes besides the batch: model, optimizer, autocast and memory-format wrappers."""
    model, opt, _, _, amp, fmt = setup(cell, (3, 28, 28), 10, dev)
    return model, opt, amp, fmt


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ours(images, labels, hp, dev, steps, warmup, model_parts=None):
    """Images/s of the trainer's inner loop (model_parts None: the data pipeline alone)."""
    images, labels = images.to(dev), labels.to(dev)
    gen = torch.Generator(dev).manual_seed(0)
    bs, n = hp["batch_size"], len(labels)
    perm, pos = torch.randperm(n, generator=gen, device=dev), 0
    for i in range(warmup + steps):
        if i == warmup:
            sync(dev)
            start = time.perf_counter()
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen, device=dev), 0
        idx, pos = perm[pos : pos + bs], pos + bs
        x = preprocess.train_view(images[idx], hp, gen)
        if model_parts:
            sgd_step(*model_parts[:2], x, labels[idx], *model_parts[2:])
    sync(dev)
    return steps * bs / (time.perf_counter() - start)


def baseline(images, labels, hp, dev, steps, warmup, workers, model_parts=None):
    dataset = PerImage(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), baseline_transform(hp["augment"]))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=hp["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=workers > 0,
    )
    batches, i = iter(loader), 0
    while i < warmup + steps:
        if i == warmup:
            sync(dev)
            start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if model_parts:
            sgd_step(*model_parts[:2], x, y, *model_parts[2:])
        i += 1
    sync(dev)
    return steps * hp["batch_size"] / (time.perf_counter() - start)


def best_of(repeats, *candidates):
    """Best rate of each candidate over `repeats` alternating rounds (other load only slows a run)."""
    rates = [[c() for c in candidates] for _ in range(repeats)]
    return [max(r[i] for r in rates) for i in range(len(candidates))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every arch's timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternate ours/baseline this often, keep the best")
    p.add_argument("--workers", type=int, help="baseline DataLoader workers (default: 0 on cpu, 4 on cuda)")
    p.add_argument("--augment", action="store_true", help="train with random crop + flip + rotation")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU here")
    workers = args.workers if args.workers is not None else (0 if dev.type == "cpu" else 4)
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)  # as the trainer runs on CPU

    n = 4096
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, n).astype(np.int64))
    scale = args.steps_scale

    rows = []
    for augment in (False, True):  # the data pipeline alone: what the two designs differ in
        hp = hparams(augment, args.batch_size)
        steps = max(1, round(50 * scale))
        rows.append(
            (
                f"pipeline only ({'crop+flip+rotate' if augment else 'centre crop'})",
                *best_of(
                    args.repeats,
                    lambda: ours(images, labels, hp, dev, steps, args.warmup),
                    lambda: baseline(images, labels, hp, dev, steps, args.warmup, workers),
                ),
            )
        )
    hp = hparams(args.augment, args.batch_size)
    for arch in args.archs:
        steps = max(1, round(ARCHS[arch] * scale / max(args.width, 0.1)))
        cell = {"cell": "bench", "arch": arch, "width": args.width, "seed": 0, "hparams": hp}
        rate_ours, rate_base = best_of(
            args.repeats,
            lambda: ours(images, labels, hp, dev, steps, args.warmup, step_parts(cell, dev)),
            lambda: baseline(images, labels, hp, dev, steps, args.warmup, workers, step_parts(cell, dev)),
        )
        rows.append((f"{arch} (width {args.width:g})", rate_ours, rate_base))
        print(f"# {arch}: {rate_ours:.0f} vs {rate_base:.0f} img/s", flush=True)

    mode = "random crop + flip + rotation" if args.augment else "centre crop (the randomization experiments)"
    lines = [
        f"## Training throughput on {dev.type} (`bench/bench_train.py{' --augment' if args.augment else ''}`)",
        "",
        f"{datetime.date.today().isoformat()} on {device_name(dev)}; {len(os.sched_getaffinity(0))} CPU cores, "
        f"torch threads {torch.get_num_threads()}; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, Python {platform.python_version()}.",
        f"Batch {args.batch_size}, training preprocessing: {mode}; baseline DataLoader num_workers={workers}; "
        f"best of {args.repeats} alternating runs; "
        f"{'bf16 autocast + channels_last' if dev.type == 'cuda' else 'float32'}. Ratio = ours / baseline.",
        "",
        "| workload | ours (img/s) | DataLoader + per-image transforms (img/s) | ratio |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |" for name, a, b in rows),
    ]
    publish(f"bench_train_{dev.type}{'_augment' if args.augment else ''}", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
