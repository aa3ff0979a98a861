"""Kernel solve time vs n on this machine's CPU (and the GPU when one is present), with the O(n^3) fit.

    python bench/bench_kernel.py [--sizes 1000 2000 4000 8000] [--repeats 2] [--no-write]

For each n: random points (784 dimensions, like MNIST pixels) and one-hot labels; times
  - ours: `rethink.kernel.solve.solve` (K built in one float64 buffer, Cholesky in place,
    two triangular solves on the factor), what the kernel stage runs;
  - baseline: the first author's MNIST code's approach, K built as its own array and
    `scipy.linalg.solve` (LU with copies), in the same run on the same data.
A least-squares fit of log(seconds) on log(n) over the largest sizes gives the exponent (3 for an
O(n^3) factorisation once it dominates) and the extrapolation to the paper's n = 60,000 (MNIST)
and 50,000 (CIFAR-10). Peak memory per solve is n^2 x 8 bytes (ours) vs about 3 n^2 x 8 (baseline).
Results replace this benchmark's section of docs/BENCHMARKS.md.
"""

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

import numpy as np
import scipy
import scipy.linalg
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from rethink.kernel import solve  # noqa: E402

from report import publish  # noqa: E402

GAMMA, DIM, CLASSES = 0.02, 784, 10


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def baseline(x, y):
    """K = exp(-gamma ||x - x'||^2) as its own array, then scipy.linalg.solve (general LU)."""
    sq = (x * x).sum(1)
    k = np.exp(-GAMMA * np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
    return scipy.linalg.solve(k, y, assume_a="sym")


def fit(sizes, seconds):
    """seconds = c2 n^2 + c3 n^3 (least squares): building K is O(n^2 D) and dominates at small n,
    the factorisation is O(n^3) and dominates at the paper's n; also the log-log slope."""
    n = np.asarray(sizes, dtype=float)
    (c2, c3), *_ = np.linalg.lstsq(np.stack([n**2, n**3], axis=1), np.asarray(seconds), rcond=None)
    slope = np.polyfit(np.log(n), np.log(seconds), 1)[0]
    return slope, c2, c3, lambda size: float(c2 * size**2 + c3 * size**3)


def cpu_name():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure(device, sizes, repeats, with_baseline):
    rows = []
    for n in sizes:
        generator = torch.Generator().manual_seed(n)
        x = torch.rand(n, DIM, generator=generator, dtype=torch.float64)
        y = torch.nn.functional.one_hot(torch.randint(0, CLASSES, (n,), generator=generator), CLASSES).double()
        x, y = x.to(device), y.to(device)
        buffer = torch.empty(n, n, dtype=torch.float64, device=device)
        ours = best_of(repeats, lambda: solve.solve(x, y, GAMMA, 0.0, buffer))
        base = best_of(repeats, lambda: baseline(x.cpu().numpy(), y.cpu().numpy())) if with_baseline else None
        rows.append((n, ours, base))
        print(f"{device} n = {n}: ours {ours:.3f} s" + (f", baseline {base:.3f} s" if base else ""), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 12000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load = os.getloadavg()
    results = {"cpu": measure(torch.device("cpu"), args.sizes, args.repeats, with_baseline=True)}
    if torch.cuda.is_available():
        results[torch.cuda.get_device_name()] = measure(torch.device("cuda"), args.sizes, args.repeats, False)

    lines = [
        "## Kernel solve (`bench/bench_kernel.py`)",
        "",
        f"{datetime.date.today()} on {cpu_name()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, scipy {scipy.__version__}. Random 784-dimensional points, one-hot "
        f"labels (10 classes), gamma {GAMMA}; best of {args.repeats}. ours: `rethink.kernel.solve.solve` (K in one "
        "float64 buffer, in-place Cholesky, two in-place triangular solves); baseline: K as its own array and "
        "`scipy.linalg.solve(assume_a='sym')` (the first author's approach), same run, same data. Load average "
        f"at start / end {load[0]:.1f} / {os.getloadavg()[0]:.1f} (above the thread count: other jobs shared the CPU).",
        "",
        "| device | n | ours (s) | baseline (s) | baseline / ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for device, rows in results.items():
        for n, ours, base in rows:
            ratio = f"{base / ours:.2f}x" if base else ""
            lines.append(f"| {device} | {n} | {ours:.3f} | {'' if base is None else f'{base:.3f}'} | {ratio} |")
    lines.append("")
    for device, rows in results.items():
        slope, c2, c3, predict = fit([r[0] for r in rows], [r[1] for r in rows])
        lines.append(
            f"- {device}: fit seconds = {c2:.3g} n^2 + {c3:.3g} n^3 over all n (log-log slope {slope:.2f}: building K, "
            f"O(n^2 D), still weighs at these n); extrapolated: n = 50,000 in {predict(50_000) / 60:.0f} min, "
            f"n = 60,000 in {predict(60_000) / 60:.0f} min, if the memory were there (K alone: "
            f"{50_000**2 * 8 / 1e9:.0f} GB and {60_000**2 * 8 / 1e9:.1f} GB)."
        )
    publish("bench_kernel", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
