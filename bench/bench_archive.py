"""Archive size and time for a finished run: build, verify, restore into a fresh clone.

    python bench/bench_archive.py [--workdir DIR] [--configfile FILE] [--label TEXT] [--keep] [--no-write]

DIR (default: this repository) must be a git clone holding a finished run of FILE (default the
embedded config). Times, in one run, `python -m rethink.archive build`, `verify` of the tarball,
and `restore` of it into a temporary `git clone` of DIR's commit (which rebuilds the shards),
then checks with `snakemake -n` that the clone has nothing to do. Baselines, in the same run:
`tar czf` of results/ (the naive archive: no checks, no provenance) and `snakemake -n` (the
start-up every Snakemake call of build and restore pays). The bundle is removed afterwards
unless --keep. Results replace this benchmark's section of docs/BENCHMARKS.md.
"""

import argparse
import datetime
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from report import publish

REPO = pathlib.Path(__file__).resolve().parents[1]


def timed(args, cwd, env=None):
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def size(path):
    path = pathlib.Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=pathlib.Path, default=REPO)
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--label", default=None, help="what the run is (default: the config file)")
    parser.add_argument("--keep", action="store_true", help="keep the bundle under results/archive/")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    work = args.workdir.resolve()
    python = [sys.executable, "-m"]
    results = work / "results"
    shards = sum(p.stat().st_size for p in (results / "data").rglob("*.h5"))
    everything = sum(p.stat().st_size for p in results.rglob("*") if p.is_file() and "archive" not in p.parts)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        start = time.perf_counter()
        with tarfile.open(tmp / "plain.tar.gz", "w:gz") as tar:
            tar.add(results, arcname="results", filter=lambda m: None if "/archive" in m.name else m)
        plain_s, plain_bytes = time.perf_counter() - start, size(tmp / "plain.tar.gz")
        startup_s, _ = timed([*python, "snakemake", "-n", "--configfile", args.configfile], work)
        # the Slurm executor plugin asks `scontrol show config` at import: with Slurm installed and no
        # controller up that waits for its timeout, in every Snakemake start
        scontrol_s = None
        if shutil.which("scontrol"):
            start = time.perf_counter()
            subprocess.run(["scontrol", "show", "config"], capture_output=True)
            scontrol_s = time.perf_counter() - start

        build_s, out = timed([*python, "rethink.archive", "build", "--configfile", args.configfile], work)
        folder, tarball = (pathlib.Path(line) for line in out.split())
        verify_s, _ = timed([*python, "rethink.archive", "verify", tarball], work)
        clone = tmp / "clone"
        subprocess.run(["git", "clone", "-q", str(work), str(clone)], check=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(clone / "src"), os.environ.get("PYTHONPATH", "")]))
        restore_s, out = timed([*python, "rethink.archive", "restore", tarball], clone, env)
        _, dry = timed([*python, "snakemake", "-n", "--configfile", args.configfile], clone, env)
        if "Nothing to be done" not in dry:
            raise SystemExit(f"the restored clone is not up to date:\n{dry}")
        bundle_bytes, tar_bytes, report_bytes = size(folder), size(tarball), size(folder / "data" / "report.html")
        if not args.keep:
            shutil.rmtree(folder)
            for leftover in folder.parent.glob(folder.name + ".*"):
                leftover.unlink()

    mb = 1e6
    lines = [
        "## Archive (`bench/bench_archive.py`)",
        "",
        f"{datetime.date.today()} on {machine()}; the run: {args.label or args.configfile}. Wall time of each "
        "command, once. Baselines in the same run: `tar czf` of results/ (no checks, no provenance) and "
        "`snakemake -n` (the start-up each Snakemake call pays; build makes two, `--summary` and `--report`, "
        "and restore two, the shard rebuild and `--summary`).",
        "",
        "| what | value |",
        "|---|---:|",
        f"| results/ (without archives) | {everything / mb:.1f} MB, of which shards {shards / mb:.1f} MB |",
        f"| bundle folder / its tarball | {bundle_bytes / mb:.1f} MB / {tar_bytes / mb:.1f} MB "
        f"(report.html {report_bytes / mb:.1f} MB) |",
        f"| plain `tar czf results/` | {plain_bytes / mb:.1f} MB in {plain_s:.1f} s |",
        f"| tarball vs plain tar | {tar_bytes / plain_bytes:.2f}x the size |",
        f"| `snakemake -n` (baseline) | {startup_s:.1f} s"
        + (f", of which `scontrol show config` (Slurm plugin, at import) {scontrol_s:.1f} s |" if scontrol_s else " |"),
        f"| build | {build_s:.1f} s ({build_s / startup_s:.1f}x `snakemake -n`, {build_s / plain_s:.1f}x plain tar) |",
        f"| verify (tarball) | {verify_s:.1f} s |",
        f"| restore into a fresh clone (shards rebuilt and checked) | {restore_s:.1f} s |",
        "| `snakemake -n` in the restored clone | nothing to be done |",
    ]
    publish("bench_archive", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
