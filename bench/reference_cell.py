"""The trainer-speed reference cell: how fast this machine trains, to scale a measured run's time.

Machines (and a shared machine's load) differ by 2x or more, so a `make reproduce` time means
little alone. Time this cell just before and just after the run and quote the run's time scaled
to the reference machine's speed: run time x REFERENCE_SECONDS / this cell's seconds.

The cell is `fashion_mnist/inception/none/random_labels/s0` of config/config.yaml at the settings
it was first timed at (docs/BENCHMARKS.md, "reproduce"): 10 epochs of batch 32 with evaluation every
2 epochs, PyTorch's init (so the weights do not depend on the config's init), one thread, on its
real shards. Those settings are pinned here, so the reference stays the same cell when the default
config's learning rates or batch size change. The time is the trainer's own wall time (`wall_s` of
the cell's summary.json: the training loop and its evaluations, without Python's start-up), as the
reference was measured; best of `--repeats`.

    python bench/reference_cell.py             # prints seconds, the load average and the ratio
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from rethink import plan

REFERENCE_SECONDS = 6.5  # this cell on the reference machine (docs/BENCHMARKS.md, "reproduce")
CELL = "fashion_mnist/inception/none/random_labels/s0"
PINNED = {"max_epochs": 10, "init": "pytorch", "batch_size": 32, "lr": 0.1, "lr_decay": 0.998, "eval_every_epochs": 2}
SHARDS = {
    "train": ["results/data/fashion_mnist/random_labels/s0/train-00000.h5"],
    "test": ["results/data/fashion_mnist/clean/test-00000.h5"],
}


def reference_spec(configfile="config/config.yaml"):
    """The cell's JSON as the default config resolves it, with PINNED over its hyper-parameters."""
    cells = plan.load(pathlib.Path(configfile)).cells
    if CELL not in cells:
        raise SystemExit(f"{configfile} has no cell {CELL}: the reference cell is that config's")
    spec = json.loads(json.dumps(cells[CELL][1]))
    spec["hparams"].update(PINNED)
    return spec


def ensure_shards():
    """The cell's shards, made by the workflow's own data rules when they are missing."""
    missing = [p for paths in SHARDS.values() for p in paths if not pathlib.Path(p).exists()]
    if missing:
        subprocess.run([sys.executable, "-m", "snakemake", *missing, "-c1", "--quiet", "rules"], check=True)


def time_once(spec, scratch):
    """The trainer's wall seconds for the cell (`python -m rethink.train`, one thread, fresh checkpoint)."""
    scratch = pathlib.Path(tempfile.mkdtemp(dir=scratch))
    (scratch / "cell.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "rethink.train", "--cell", str(scratch / "cell.json"),
        "--train-shards", *SHARDS["train"], "--test-shards", *SHARDS["test"],
        "--out-dir", str(scratch / "out"), "--checkpoint", str(scratch / "ckpt.pt"),
    ]  # fmt: skip
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((scratch / "out" / "summary.json").read_text())["wall_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs; the best is reported (default 2)")
    parser.add_argument("--configfile", default="config/config.yaml")
    args = parser.parse_args(argv)
    spec = reference_spec(args.configfile)
    ensure_shards()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        times = [time_once(spec, scratch) for _ in range(args.repeats)]
    load_after = os.getloadavg()
    best = min(times)
    print(
        f"reference cell {CELL} (10 epochs, one thread): {best:.1f} s (best of "
        f"{', '.join(f'{t:.1f}' for t in times)}); reference machine {REFERENCE_SECONDS} s; "
        f"this machine is {best / REFERENCE_SECONDS:.2f}x slower; load average 1/5/15 min "
        f"before {'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
