"""Time of the status view (`python -m rethink.status`) on a 5,000-cell grid in the middle of a run.

    python bench/bench_status.py [--cells 5000] [--repeats 5] [--no-write]

The grid is bench_dryrun.py's generated one (5 architectures x 10 regularizers x 10 corruption
levels x 10 seeds, synthetic data). In a scratch working directory the benchmark writes every
cell's files as the trainer and its job would have written them, 120 epochs a cell, in the states
of STATES_MIX (a finished cell: cell.json, history.csv and train.log of 120 epochs, summary.json,
its finished checkpoint; a running one: its epochs so far, written just now; ...), then runs the
CLI, text and --json, `--repeats` times each, alternately with the baseline: the same interpreter
importing rethink.status and building the plan, without reading a cell's files. It reports the
best wall time and the best CPU time (user + system of the process) of each, and checks that the
counts are the mix written. Warm page cache (the files were just written). Results replace this
benchmark's section of docs/BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from bench_dryrun import grid
from rethink import fileio, paths, status
from rethink.train.cell import RESULT_KEYS

from report import publish

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 120
EPOCH_S = 30.0  # a cell's mean epoch on the fake clock
# the share of cells in each state, in the order cells are given them (the rest: not started)
STATES_MIX = {"finished": 0.40, "stale": 0.05, "running": 0.15, "stalled": 0.05, "interrupted": 0.05, "failed": 0.05}
BASELINE = "import sys; from rethink import status; status.load_plan(sys.argv[1:])"


def epoch_line(epoch, t):
    evaluated = (
        " train loss 0.0123 train acc 0.9980 test loss 2.3456 test acc 0.1010 train top5 1.0000 test top5 0.5020"
    )
    online = " train avg loss 0.0234 train avg acc 0.9940" if epoch else ""
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} epoch {epoch:4d} step {epoch * 40:7d} "
        f"lr 0.01{evaluated}{online} elapsed {EPOCH_S * epoch:.1f}s\n"
    )


def history_row(epoch):
    online = "0.023456789012345678,0.994" if epoch else ","
    return (
        f"{epoch * 40},{epoch},0.01,0.012345678901234567,0.998,2.3456789012345678,0.101,1.0,0.502,"
        f"{online},{EPOCH_S * epoch!r}\n"
    )


def write(path, text, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def write_cell(plan, cell_id, state, now, index):
    """The files of the `index`th cell in `state`; returns those a live trainer keeps writing."""
    cell, spec = plan.cell(cell_id)
    pack = plan.pack_of(cell_id)
    out = pathlib.Path(paths.cell_dir(cell))
    checkpoint = pathlib.Path(paths.checkpoint(cell, fileio.canonical_json(spec), plan.train_code(pack)))
    job_log = pathlib.Path(paths.train_job_log(cell, pack.rule))
    epochs = EPOCHS if state in ("finished", "stale") else 1 + index % (EPOCHS - 1)
    age = 3600 if state in ("stalled", "interrupted", "failed", "finished", "stale") else 5
    t = now - age
    log = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} start cell={cell_id} arch={spec['arch']}\n"]
    log += [epoch_line(e, t) for e in range(epochs + 1)]
    header = ",".join(
        ("step", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "train_top5", "test_top5")
        + ("train_avg_loss", "train_avg_acc", "elapsed_s")
    )
    written = spec if state != "stale" else dict(spec, hparams=dict(spec["hparams"], lr=0.5))
    write(out / "cell.json", fileio.canonical_json(written) + "\n", t)
    write(out / "history.csv", header + "\n" + "".join(history_row(e) for e in range(epochs + 1)), t)
    write(checkpoint, "x" * 4096, t)  # status only stats it
    if state in ("finished", "stale"):
        log.append(f"stop: max_epochs at epoch {epochs} step {epochs * 40} final train acc 0.9980 test acc 0.1010\n")
        results = {key: 0.5 for key in RESULT_KEYS} | {
            "epochs": epochs,
            "steps": epochs * 40,
            "stop_reason": "max_epochs",
        }
        write(out / "summary.json", json.dumps(dict(written, **results), indent=2) + "\n", t)
    elif state == "interrupted":
        log.append(f"SIGTERM: checkpoint saved at epoch {epochs} step {epochs * 40 + 7}\n")
        (out / "history.csv").unlink()  # snakemake removed the failed job's outputs
        (out / "cell.json").unlink()
        write(job_log, f"interrupted: stopped by SIGTERM; saved to {checkpoint}; rerun to resume\n", t + 1)
    elif state == "failed":
        write(job_log, "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n", t + 1)
    write(out / "train.log", "".join(log), t)
    return [out / "train.log", out / "history.csv"] if state == "running" else []


def timed(args, cwd):
    """(wall s, CPU s, stdout) of one process, its own resource usage from wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err)
        _, code, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(code)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, args))} failed:\n{err.read().decode()}")
        return wall, usage.ru_utime + usage.ru_stime, out.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        shutil.copytree(REPO / "workflow" / "schemas", work / "workflow" / "schemas")
        configfile = f"config/grid{args.cells}.yaml"
        (work / "config").mkdir()
        (work / configfile).write_text(yaml.safe_dump(grid(args.cells)))
        os.chdir(work)
        plan = status.load_plan([configfile])
        ids, now, live, expected = list(plan.cells), time.time(), [], {}
        start = 0
        for state, share in STATES_MIX.items():
            count = round(share * len(ids))
            for index in range(start, start + count):
                live += write_cell(plan, ids[index], state, now, index)
            expected[state], start = count, start + count
        expected["not_started"] = len(ids) - start
        size = sum(f.stat().st_size for f in (work / "results").rglob("*") if f.is_file())
        print(f"# wrote {size / 2**20:.0f} MiB of cell files: {expected}", flush=True)

        cli = [sys.executable, "-m", "rethink.status", "--configfile", configfile]
        cases = {"text": cli, "--json": [*cli, "--json"], "baseline": [sys.executable, "-c", BASELINE, configfile]}
        times = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, command in cases.items():
                touched = time.time()
                for path in live:  # a running cell was written moments ago
                    os.utime(path, (touched, touched))
                wall, cpu, out = timed(command, work)
                times[name].append((wall, cpu))
                if name == "--json":
                    found = {s: n for s, n in json.loads(out)["counts"]["all"].items() if n}
                    assert found == expected, (found, expected)
            load.append(os.getloadavg()[0])
            print(f"# {times}, load {load[-1]:.1f}", flush=True)
        os.chdir(REPO)

    best = {name: (min(w for w, _ in runs), min(c for _, c in runs)) for name, runs in times.items()}
    publish("bench_status", section(args, expected, size, best, load), write=not args.no_write)


def section(args, expected, size, best, load):
    base_wall, base_cpu = best["baseline"]
    wall, _ = best["text"]
    verdict = "met" if wall < 2 else "not met"
    mix = ", ".join(f"{n:,} {s.replace('_', ' ')}" for s, n in expected.items())
    return [
        "## Status view (`bench/bench_status.py`)",
        "",
        f"{datetime.date.today()}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}; 1-minute load average {min(load):.1f}-{max(load):.1f} during the run "
        f"(other jobs shared the machine). A generated {args.cells:,}-cell grid (bench_dryrun.py's) in the "
        f"middle of a run: {mix}; {size / 2**20:.0f} MiB of cell files, 120 epochs a cell, written by the "
        f"benchmark (warm page cache). Best of {args.repeats}, the three alternately; wall and CPU time "
        "(user + system) of the whole process.",
        "",
        "| command | wall (s) | CPU (s) | wall - baseline (s) |",
        "|---|---:|---:|---:|",
        *(
            f"| {label} | {best[name][0]:.2f} | {best[name][1]:.2f} | "
            + ("" if name == "baseline" else f"{best[name][0] - base_wall:.2f}")
            + " |"
            for name, label in (
                ("text", "`python -m rethink.status`"),
                ("--json", "`python -m rethink.status --json`"),
                ("baseline", "baseline: start, imports and the plan only"),
            )
        ),
        "",
        f"Target (the whole command under 2 s for a 5,000-cell grid): {verdict}, {wall:.2f} s; reading "
        f"every cell's files costs {wall - base_wall:.2f} s of it ({wall / base_wall:.2f}x the baseline). "
        "A finished cell costs a directory listing and two small reads (summary.json, cell.json) and a "
        "stat of its checkpoint; an unfinished one a few stats and reads of its files' last 8 KiB; a cell "
        "not started three lookups that find nothing (its folder, its job's log, its checkpoint). On a "
        "network file system each of those is a round trip (not measured here).",
    ]


if __name__ == "__main__":
    main()
