"""Shard read throughput vs plain numpy, measured in the same run on the same arrays.

    python bench/bench_read.py [--repeats 3] [--no-write]

For each dataset (real Fashion-MNIST train when installed; CIFAR-10-shaped synthetic data) and
each compression, writes one clean shard plus a label-noise shard linked to it, then times:
  - numpy: np.load of the same images+labels saved as .npy (the no-format baseline);
  - read_split (verified): our reader, checksums on, as training calls it (and with them off,
    to show what verification costs);
  - read_split via the label-noise shard (images through the external link).
Best of --repeats, warm page cache (the case that matters: a node reading its local copy).
Results replace this benchmark's section of docs/BENCHMARKS.md.
"""

import argparse
import datetime
import pathlib
import platform
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the spec helpers the tests use

from rethink.data import prepare, shards, sources  # noqa: E402

from conftest import FASHION_MNIST_ROOT, synthetic_spec  # noqa: E402
from report import best_of, publish  # noqa: E402


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import h5py

    return (
        f"{cpu}, {len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})"
    )


def bench_dataset(name, spec, work, repeats):
    images, labels, _ = sources.load_split(spec, "train")
    mb = (images.nbytes + labels.nbytes) / 1e6
    npy = work / f"{name}.npy"
    np.save(npy, images)
    np.save(work / f"{name}-labels.npy", labels)
    baseline = best_of(repeats, lambda: (np.load(npy), np.load(work / f"{name}-labels.npy")))
    rows = [(name, "numpy .npy (baseline)", mb, baseline, npy.stat().st_size)]
    for compression in ("none", "lzf", "gzip"):
        cfg = {"size": len(labels), "compression": compression, "chunk_samples": 256}
        clean = work / compression / name / "clean" / "train-00000.h5"
        noisy = work / compression / name / "random_labels" / "s0" / "train-00000.h5"
        prepare.make_clean(spec, cfg, "train", 0, clean)
        prepare.make_randomized(spec, cfg, "random_labels", 0, "train", 0, clean, None, noisy)
        t_clean = best_of(repeats, lambda: shards.read_split([clean]))
        t_raw = best_of(repeats, lambda: shards.read_split([clean], verify=False))
        t_noisy = best_of(repeats, lambda: shards.read_split([noisy]))
        rows.append((name, f"read_split, {compression}, verified", mb, t_clean, clean.stat().st_size))
        rows.append((name, f"read_split, {compression}, checksums off", mb, t_raw, clean.stat().st_size))
        rows.append((name, f"read_split via label-noise link, {compression}", mb, t_noisy, clean.stat().st_size))
    return [(d, m, mb, t, size, baseline / t) for d, m, mb, t, size in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    datasets = {"cifar10-shaped synthetic": synthetic_spec(n_train=50000, n_test=10)}
    if (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        datasets["fashion_mnist (real)"] = {
            "name": "fashion_mnist",
            "source": "fashion_mnist",
            "root": str(FASHION_MNIST_ROOT),
            "subset": {},
        }
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            row for name, spec in datasets.items() for row in bench_dataset(name, spec, pathlib.Path(tmp), args.repeats)
        ]

    lines = [
        "## Shard reads (`bench/bench_read.py`)",
        "",
        f"{datetime.date.today()} on {machine()}. Whole training split, best of {args.repeats}, warm page cache.",
        "Ratio = time of the numpy baseline / time of the row (above 1: faster than plain numpy).",
        "",
        "| data | reader | MB | seconds | MB/s | file MB | vs numpy |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {d} | {m} | {mb:.0f} | {t:.3f} | {mb / t:.0f} | {size / 1e6:.0f} | {r:.2f}x |"
            for d, m, mb, t, size, r in rows
        ),
    ]
    publish("bench_read", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
