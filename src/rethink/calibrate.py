"""Suggest each architecture's Slurm requests (runtime_minutes, mem_mb) from a finished run.

    python -m rethink.calibrate --configfile F ... [--for G ...] [--factor 1.5]
    python -m rethink.calibrate --configfile F ... --targets

Run in the run's directory (the one holding its results/). For every finished cell of the config
(--configfile, the run's files) it reads the training time per epoch (summary.json's wall_s over
its epochs: the trainer carries wall_s through resumes, so a chain of jobs counts whole) and its
job's Snakemake benchmark (results/benchmarks/train/): the job's seconds beyond training (start,
data loading) and its peak memory (max_rss; a pack's job is measured as one). Per architecture,
the maxima over its cells give the suggestion for the config given by --for (default: the
measured one): runtime_minutes = factor x (seconds beyond training + seconds per epoch x the most
epochs a cell of that architecture may train there) + the minutes before its limit that Slurm may
signal the job (rethink.plan.signal_lead), mem_mb = factor x the peak memory. It prints
the measurements, then the suggestion as a YAML override to layer onto the config
(`--configfile config/paper.yaml calibrated.yaml`).

--targets prints the summary.json of one cell per architecture (of the fewest epochs): the targets
of a smoke run measuring each architecture once (config/smoke.yaml; README "Running on a cluster").
"""

import argparse
import csv
import json
import math
import pathlib
import sys

import yaml

from rethink import paths
from rethink import plan as rplan
from rethink.errors import RethinkError, cli_main

MB = 100  # suggested memory is rounded up to this many MB


def one_per_arch(plan):
    """{architecture: its cell of the fewest epochs (the first by id of those)}."""
    shortest = {}
    for cell_id, (cell, spec) in plan.cells.items():
        key = (spec["hparams"]["max_epochs"], cell_id)
        shortest[cell.arch] = min(shortest.get(cell.arch, key), key)
    return {arch: cell_id for arch, (_, cell_id) in shortest.items()}


def benchmark(path):
    """(seconds, peak resident MB) of a Snakemake benchmark file (its first row)."""
    with open(path, newline="") as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return float(row["s"]), float(row["max_rss"])


def measure(plan, root):
    """{architecture: {"cells", "s_per_epoch", "overhead_s", "max_rss_mb"}} over the finished cells
    of the plan whose job left a benchmark under root."""
    found = {}
    for pack in plan.packs:
        bench = root / (
            paths.TRAIN_PACK_BENCHMARK.format(pack=pack.rule)
            if plan.packed
            else paths.TRAIN_BENCHMARK.format(**plan.cells[pack.ids[0]][0].wildcards)
        )
        summaries = [root / paths.CELL_SUMMARY.format(**plan.cells[i][0].wildcards) for i in pack.ids]
        if not bench.is_file() or not all(s.is_file() for s in summaries):
            continue
        job_s, rss = benchmark(bench)
        runs = [json.loads(s.read_text()) for s in summaries]
        wall = sum(run["wall_s"] for run in runs)
        arch = plan.cells[pack.ids[0]][0].arch
        entry = found.setdefault(arch, {"cells": 0, "s_per_epoch": 0.0, "overhead_s": 0.0, "max_rss_mb": 0.0})
        entry["cells"] += len(runs)
        entry["s_per_epoch"] = max(entry["s_per_epoch"], *(run["wall_s"] / max(run["epochs"], 1) for run in runs))
        entry["overhead_s"] = max(entry["overhead_s"], (job_s - wall) / len(runs))
        entry["max_rss_mb"] = max(entry["max_rss_mb"], rss)
    return found


def most_epochs(plan):
    """{architecture: the most epochs any of its cells may train}."""
    epochs = {}
    for cell, spec in plan.cells.values():
        epochs[cell.arch] = max(epochs.get(cell.arch, 0), spec["hparams"]["max_epochs"])
    return epochs


def suggest(measured, epochs, factor, lead):
    """{architecture: {"runtime_minutes", "mem_mb"}} for the architectures both measured and planned;
    `lead`: the minutes before its limit that Slurm may signal a job, added to its time."""
    return {
        arch: {
            "runtime_minutes": math.ceil(factor * (m["overhead_s"] + m["s_per_epoch"] * epochs[arch]) / 60 + lead),
            "mem_mb": MB * math.ceil(factor * m["max_rss_mb"] / MB),
        }
        for arch, m in sorted(measured.items())
        if arch in epochs
    }


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configfile", nargs="*", default=[], type=pathlib.Path, help="the measured run's config files"
    )
    parser.add_argument("--for", dest="target", nargs="*", type=pathlib.Path,
                        help="the config files of the run to suggest for (default: the measured run's)")  # fmt: skip
    parser.add_argument("--factor", type=float, default=1.5, help="the safety multiple of what was measured")
    parser.add_argument("--targets", action="store_true", help="print one cell per architecture, for a smoke run")
    args = parser.parse_args(argv)
    measured_plan = rplan.load(args.configfile)
    if args.targets:
        print(" ".join(paths.CELL_SUMMARY.format(**measured_plan.cells[i][0].wildcards)
                       for i in one_per_arch(measured_plan).values()))  # fmt: skip
        return 0
    if not args.factor >= 1:
        raise RethinkError(f"--factor {args.factor:g}: give a multiple of at least 1 of what was measured")
    measured = measure(measured_plan, pathlib.Path.cwd())
    if not measured:
        raise RethinkError(
            f"no finished training job of {', '.join(map(str, args.configfile)) or 'the default config'} under "
            f"{pathlib.Path.cwd() / paths.RESULTS}: run it first (or calibrate in the run's --directory)"
        )
    target = measured_plan if args.target is None else rplan.load(args.target)
    suggestion = suggest(measured, most_epochs(target), args.factor, rplan.signal_lead(target.config["compute"]))
    print("# measured: architecture, cells, s/epoch, s beyond training per cell, peak MB")
    for arch, m in sorted(measured.items()):
        print(f"#   {arch}: {m['cells']}, {m['s_per_epoch']:.1f}, {m['overhead_s']:.1f}, {m['max_rss_mb']:.0f}")
    print(f"# suggested (x{args.factor:g}) for the most epochs a cell may train:")
    print(yaml.safe_dump({"architectures": suggestion}, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
