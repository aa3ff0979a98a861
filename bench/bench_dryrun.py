"""Dry-run (DAG planning) cost of the workflow vs a minimal Snakefile with as many trivial jobs,
and how it grows with the grid.

    python bench/bench_dryrun.py [--repeats 3] [--scale 10000 100000] [--no-write]

Cases: config/paper.yaml (no results yet: the whole plan) and a generated 5,000-cell grid
(synthetic data, 5 architectures x 10 regularizers x 10 corruption levels x 10 seeds). For each,
`snakemake -n` runs in a scratch copy of the workflow, and a minimal Snakefile (`rule all` over N
files made by one `touch` rule) with the same number of jobs N runs the same way, alternately,
`--repeats` times each; a case reports the best wall time and the best CPU time (user + system of
the snakemake process, which other load on the machine inflates far less than wall time) of
each, and their ratios. Then the scale cases (`--scale`, grids of that many cells, more seeds and
regularizers): one `snakemake -n` each, its wall and CPU time and peak memory (max RSS); a grid
the plan refuses is reported with its message. Results replace this benchmark's section of
docs/BENCHMARKS.md.
"""

import argparse
import datetime
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from report import publish

REPO = pathlib.Path(__file__).resolve().parents[1]
MINIMAL = """rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule make:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""
ARCHITECTURES = 5
LEVELS = 10


def grid(cells):
    """The paper config's five CIFAR-10 architectures on a synthetic dataset, as many cells as asked:
    5 architectures x R regularizers x 10 corruption levels x S seeds (R, S as even as they go)."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["datasets"] = {"synth": {"source": "synthetic", "synthetic": {"n_train": 1000, "n_test": 100}}}
    config["architectures"] = {k: v for k, v in config["architectures"].items() if k != "inception_v3"}
    config["kernel"], config["theorem1"] = {}, {"enabled": False}
    per_arch_level = cells // (ARCHITECTURES * LEVELS)
    seeds = 10 if per_arch_level <= 100 else 20
    regularizers = per_arch_level // seeds
    assert ARCHITECTURES * LEVELS * seeds * regularizers == cells, cells
    config["regularizers"] = {f"r{i}": {"weight_decay": i * 1e-5} for i in range(regularizers)}
    config["experiments"] = {
        "big": {
            "dataset": "synth",
            "seeds": list(range(seeds)),
            "grid": [
                {
                    "architectures": sorted(config["architectures"]),
                    "regularizers": sorted(config["regularizers"]),
                    "corruption_levels": [round(0.1 * i, 1) for i in range(LEVELS)],
                }
            ],
        }
    }
    return config


def dry_run(workdir, args, timeout=None):
    """One `snakemake -n` from scratch: (wall s, CPU s, max RSS MiB, jobs or None, output)."""
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", *args],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    match = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
    jobs = int(match[1]) if match and proc.returncode == 0 else None
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, jobs, text


def workflow_copy(root):
    work = root / "workflow"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config", "profiles", "environment.yml"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    return work


def compare(work, root, configfile, repeats):
    """Ours and the minimal Snakefile alternately: best wall and CPU time of each, the job count."""
    ours, minimal, jobs = [], [], None
    for _ in range(repeats):
        wall, cpu, _, jobs, text = dry_run(work, ["--configfile", configfile])
        if jobs is None:
            raise SystemExit(f"snakemake -n --configfile {configfile} failed:\n{text}")
        ours.append((wall, cpu))
        minimal_dir = root / f"minimal-{jobs}"
        if not minimal_dir.exists():
            minimal_dir.mkdir()
            (minimal_dir / "Snakefile").write_text(MINIMAL.format(n=jobs - 1))  # + rule all = jobs
        wall, cpu, _, base_jobs, text = dry_run(minimal_dir, [])
        assert base_jobs == jobs, text
        minimal.append((wall, cpu))
    best = lambda runs, i: min(run[i] for run in runs)  # noqa: E731
    return jobs, best(ours, 0), best(minimal, 0), best(ours, 1), best(minimal, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, nargs="*", default=[10_000, 100_000], help="cells of the scale cases")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    rows, scale, load = [], [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        work = workflow_copy(root)
        (work / "config" / "grid5000.yaml").write_text(yaml.safe_dump(grid(5000)))
        for name, configfile in (
            ("config/paper.yaml", "config/paper.yaml"),
            ("generated 5,000-cell grid", "config/grid5000.yaml"),
        ):
            row = compare(work, root, configfile, args.repeats)
            rows.append((name, *row))
            load.append(os.getloadavg()[0])
            print(f"# {name}: {row}, load {load[-1]:.1f}", flush=True)
        for cells in args.scale:
            configfile = f"config/grid{cells}.yaml"
            (work / configfile).write_text(yaml.safe_dump(grid(cells)))
            wall, cpu, rss, jobs, text = dry_run(work, ["--configfile", configfile])
            refused = None if jobs else text.strip().splitlines()[-1]
            scale.append((cells, jobs, wall, cpu, rss, refused))
            load.append(os.getloadavg()[0])
            print(f"# {cells} cells: {scale[-1]}, load {load[-1]:.1f}", flush=True)

    publish("bench_dryrun", section(rows, scale, load, args.repeats), write=not args.no_write)


def section(rows, scale, load, repeats):
    """The Markdown section of docs/BENCHMARKS.md: the comparison rows, then the scale rows."""
    import snakemake

    _, _, wall, base_wall, cpu, base_cpu = rows[-1]  # the 5,000-cell grid
    verdict = "met" if cpu / base_cpu <= 1.5 else "not met"
    lines = [
        "## Dry-run planning time (`bench/bench_dryrun.py`)",
        "",
        f"{datetime.date.today()}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"snakemake {snakemake.__version__}, Python {sys.version.split()[0]}; 1-minute load average "
        f"{min(load):.1f}-{max(load):.1f} during the run (other jobs shared the machine: CPU time, user + "
        "system of the snakemake process, is the steadier measure). `snakemake -n` from scratch, "
        f"ours and the minimal Snakefile (the same number of trivial jobs) alternately, best of {repeats} "
        "each.",
        "",
        "| config | jobs | ours: wall (s) | minimal: wall (s) | ratio | ours: CPU (s) | minimal: CPU (s) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {jobs:,} | {wall:.2f} | {base_wall:.2f} | {wall / base_wall:.2f}x | {cpu:.2f} | "
            f"{base_cpu:.2f} | {cpu / base_cpu:.2f}x |"
            for name, jobs, wall, base_wall, cpu, base_cpu in rows
        ),
        "",
        f"Target (the 5,000-cell grid within 1.5x of the minimal Snakefile): {verdict}, {cpu / base_cpu:.2f}x "
        "in CPU time. A training job is one job of the rule `train` (no cost per rule); the workflow's "
        "own Python, the plan and its input functions, was about 6% of a 5,000-cell dry run profiled by hand "
        "(cProfile, 2026-12-02). "
        "The rest is Snakemake's own work per job, which grows with what a job has: a training job has "
        "three outputs, two or three input shards from other jobs, a log, seven resources and a long command, a "
        "minimal job one output.",
    ]
    if scale:
        lines += [
            "",
            "Scale: one `snakemake -n` of a generated grid (the 5,000-cell grid's architectures and levels, "
            "more regularizers and seeds).",
            "",
            "| cells | jobs | wall (s) | CPU (s) | peak memory (MiB) |",
            "|---:|---:|---:|---:|---:|",
            *(
                f"| {cells:,} | {jobs:,} | {wall:.1f} | {cpu:.1f} | {rss:,.0f} |"
                if refused is None
                else f"| {cells:,} | refused in {wall:.1f} s: {refused} | | | {rss:,.0f} |"
                for cells, jobs, wall, cpu, rss, refused in scale
            ),
        ]
    return lines


if __name__ == "__main__":
    main()
