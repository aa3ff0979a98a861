"""Train one cell (one row of the experiment grid) and write its history, summary and log.

Errors a user can fix are one line on stderr and exit status 2; a SIGTERM saves a checkpoint
and exits 143 so the scheduler retries the job, which then resumes.
"""

import argparse
import sys

from rethink.errors import cli_main


def parser():
    p = argparse.ArgumentParser(prog="python -m rethink.train", description=__doc__.splitlines()[0])
    p.add_argument("--cell", required=True, help="cell JSON: cell, arch, width, seed, hparams (+ extra keys)")
    p.add_argument("--train-shards", required=True, nargs="+", metavar="P", help="training shards, in order")
    p.add_argument("--test-shards", required=True, nargs="+", metavar="P", help="test shards, in order")
    p.add_argument("--out-dir", required=True, help="gets history.csv, summary.json, train.log")
    p.add_argument("--checkpoint", required=True, help="checkpoint (outside --out-dir); resumed if it exists")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="overrides hparams.device")
    return p


@cli_main
def main(argv=None):
    args = parser().parse_args(argv)
    from rethink.train import cell, checkpoint, loop  # after --help: these import torch

    spec = cell.load(args.cell)
    try:
        loop.train(spec, args.train_shards, args.test_shards, args.out_dir, args.checkpoint, args.device)
    except checkpoint.Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None  # non-zero, so Slurm/Snakemake retry the job
    return 0


if __name__ == "__main__":
    sys.exit(main())
