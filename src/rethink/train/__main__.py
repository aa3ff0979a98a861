"""Train one cell, or a pack of cells in one process, and write each cell's history, summary and log.

    python -m rethink.train --cell cell.json --train-shards ... --test-shards ... --out-dir D --checkpoint C
    python -m rethink.train --pack '[{"cell": {...}, "train": [...], "test": [...],
                                      "out_dir": "...", "checkpoint": "..."}, ...]'

With --pack (what the workflow runs) each cell's cell.json is written into its out_dir first.
Under `torchrun --nproc_per_node=N` the N processes train one cell together (a pack of one),
each on its part of every batch; rank 0 writes (rethink.train.distributed).
Errors a user can fix are one line on stderr and exit status 2; SIGTERM, SIGINT and SIGHUP save
checkpoints and exit 128 + the signal, so the scheduler retries the job, which then resumes.
Live curves in TensorBoard or W&B: the environment variable RETHINK_TRACKING, which the workflow
exports from the config key `tracking` (rethink.tracking).
"""

import argparse
import json
import os
import pathlib
import sys

from rethink import config, paths
from rethink.errors import RethinkError, cli_main

PACK_KEYS = ("cell", "train", "test", "out_dir", "checkpoint")


def parser():
    p = argparse.ArgumentParser(prog="python -m rethink.train", description=__doc__.splitlines()[0])
    p.add_argument("--pack", metavar="JSON", help="a pack: a JSON list of {" + ", ".join(PACK_KEYS) + "}")
    p.add_argument("--cell", help="cell JSON file: cell, arch, width, seed, hparams (+ extra keys)")
    p.add_argument("--train-shards", nargs="+", metavar="P", help="training shards, in order")
    p.add_argument("--test-shards", nargs="+", metavar="P", help="test shards, in order")
    p.add_argument("--out-dir", help="gets history.csv, summary.json, train.log")
    p.add_argument("--checkpoint", help="checkpoint (outside --out-dir); resumed if it exists")
    p.add_argument("--device", choices=config.DEVICES, help="overrides hparams.device")
    p.add_argument(
        "--compile",
        default="off",
        choices=config.COMPILE_MODES,
        help="torch.compile the training step (reduce-overhead: CUDA graphs); default off",
    )
    return p


def pack_jobs(text, job_class):
    """The --pack JSON -> Jobs, with each malformed entry named."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise RethinkError(f"--pack: not valid JSON ({err})") from None
    if not isinstance(entries, list) or not entries:
        raise RethinkError("--pack: must be a non-empty JSON list of cells")
    jobs = []
    for i, entry in enumerate(entries):
        missing = [k for k in PACK_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise RethinkError(f"--pack[{i}]: {missing[0]} is missing; each entry needs {', '.join(PACK_KEYS)}")
        jobs.append(
            job_class(
                entry["cell"],
                entry["train"],
                entry["test"],
                pathlib.Path(entry["out_dir"]),
                pathlib.Path(entry["checkpoint"]),
            )
        )
    return jobs


@cli_main
def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    single = (args.cell, args.train_shards, args.test_shards, args.out_dir, args.checkpoint)
    if bool(args.pack) == any(single) or (not args.pack and not all(single)):
        p.error("give --pack, or all of --cell, --train-shards, --test-shards, --out-dir, --checkpoint")
    from rethink import tracking
    from rethink.fileio import canonical_json, write_text_atomic  # after --help: the rest imports torch
    from rethink.train import cell, checkpoint, loop

    tracking_settings = tracking.from_environment()

    if args.pack:
        jobs = pack_jobs(args.pack, loop.Job)
        for job in jobs:  # the workflow's declared cell.json, as the trainer validated it
            cell.validate(job.cell, f"--pack cell {job.out_dir}")
            job.out_dir.mkdir(parents=True, exist_ok=True)
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 writes
                write_text_atomic(paths.cell_file(job.out_dir, "cell"), canonical_json(job.cell) + "\n")
    else:
        jobs = [
            loop.Job(
                cell.load(args.cell),
                args.train_shards,
                args.test_shards,
                pathlib.Path(args.out_dir),
                pathlib.Path(args.checkpoint),
            )
        ]
    try:
        loop.train(jobs, args.device, compile_mode=args.compile, tracking_settings=tracking_settings)
    except checkpoint.Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None  # non-zero, so Slurm/Snakemake retry the job
    return 0


if __name__ == "__main__":
    sys.exit(main())
