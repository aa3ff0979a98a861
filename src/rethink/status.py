"""Where every cell of a config stands, told from its files alone: no Snakemake, no scheduler, so it
works from a login node while a Slurm run goes on (and on a finished or abandoned results tree).

    python -m rethink.status [--configfile F ...] [--watch N] [--json] [--experiment E] [--state S]

One row per cell of the config (rethink.plan), then counts per experiment and overall. A cell is

  not_started  none of its files exist (cell folder, training job's log, checkpoint);
  running      its trainer wrote within the last STALL_EPOCHS mean epochs (before its first epoch:
               within the job's time limit), and did not stop: epoch k of max_epochs, the last
               epoch's online loss and accuracy, elapsed training time, and an ETA at the mean
               epoch time so far (an upper bound: fit_threshold may stop it sooner);
  stalled      as running, but nothing was written for longer: the process died without saving
               (SIGKILL, out of memory, a lost node) or is far slower than before; a rerun resumes
               it from its last periodic checkpoint;
  interrupted  its trainer stopped on a signal after saving (train.log's last line: "SIGTERM:
               checkpoint saved at epoch k ...", or the job's log: "interrupted: stopped by ...")
               and no attempt has started since: it waits for a retry or a rerun, which resumes it;
  failed       its training job's log (results/logs/train/) ends in an error or a traceback: the
               last lines are shown;
  finished     summary.json exists and matches what the config now resolves: stop reason, epochs,
               final training (eval mode) and test accuracy;
  stale        summary.json exists, but the cell will train again: its cell.json differs from what
               the config now resolves (the keys that differ are named), an output is missing, or
               the training code changed (its finished checkpoint has another code hash).

Epochs come from history.csv, which holds one row per epoch done (cut back to the checkpoint's
epoch on resume), or from train.log's epoch lines where there is no history.csv (Snakemake deletes
a failed or interrupted job's outputs, history.csv among them; train.log is not an output).
Files are read from their ends only, and only for cells that are not finished.
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import time

from rethink import fileio, paths
from rethink import plan as rplan
from rethink.errors import RethinkError, cli_main

STATES = ("not_started", "running", "stalled", "interrupted", "failed", "finished", "stale")
# A running trainer writes train.log (and history.csv) at the end of every epoch, and its checkpoint
# every checkpoint_minutes. Silence for STALL_EPOCHS mean epochs (evaluation epochs take longer than
# others), and at least STALL_FLOOR_S (clock differences between a compute node, the file server
# and the machine asking), means that no process trains the cell.
STALL_EPOCHS = 3
STALL_FLOOR_S = 120
TAIL_BYTES = 8192  # the end of train.log read: its last ~30 lines (an epoch's line is < 250 bytes)
LOG_LINES = 5  # the last lines of a failed job's log that are shown
CELL_JSON, HISTORY, SUMMARY, TRAIN_LOG = (paths.CELL_FILES[k] for k in ("cell", "history", "summary", "log"))

# train.log's lines as the trainer writes them (rethink.train.loop: Member.__init__, record, save,
# finish; each after a "%Y-%m-%d %H:%M:%S " time stamp). tests/test_status.py runs the real trainer.
EPOCH_LINE = re.compile(
    r"epoch\s+(?P<epoch>\d+) step\s+(?P<step>\d+) lr \S+ (?P<metrics>.*?)\s*elapsed (?P<elapsed>\S+)s$"
)
METRICS = {  # history.csv's column -> its words on an epoch line
    "train_avg_loss": "train avg loss",
    "train_avg_acc": "train avg acc",
    "train_acc": "train acc",
    "test_acc": "test acc",
}
ATTEMPT_LINE = re.compile(r"start cell=|resume from .* at epoch (?P<epoch>\d+) step (?P<step>\d+)$")
SAVED_LINE = re.compile(r"(?P<why>.+): checkpoint saved at epoch (?P<epoch>\d+) step (?P<step>\d+)$")
GOES_ON = "SIGUSR1"  # saves and goes on; every other save on a signal stops the trainer
STOP_LINE = re.compile(r"stop: (?P<reason>\S+) at epoch (?P<epoch>\d+) step (?P<step>\d+)")
# The training job's stderr: rethink.train's last word on a signal, or an error (one line from the
# CLI, or a traceback).
INTERRUPTED_LINE = re.compile(r"interrupted: (?P<why>.+)$")
FAILED_LINE = re.compile(r"error: |Traceback \(most recent call last\):")


@dataclasses.dataclass
class Status:
    """One cell's row. loss and acc: the online (training-mode) average of its last epoch done;
    train_acc and test_acc: eval-mode accuracies at its last evaluation (final ones when finished)."""

    cell: str
    experiments: list
    state: str = "not_started"
    max_epochs: int = None
    epoch: int = None
    step: int = None
    loss: float = None
    acc: float = None
    train_acc: float = None
    test_acc: float = None
    elapsed_s: float = None  # training time so far (a resumed cell's attempts added up)
    eta_s: float = None  # running: at most this long to max_epochs
    quiet_s: float = None  # since the newest write to any of its files
    stop_reason: str = None
    detail: str = ""
    log: str = None  # the training job's log
    log_tail: list = dataclasses.field(default_factory=list)  # failed: its last lines


# ----------------------------------------------------------------------------- reading files


def _stat(path):
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _files(directory):
    """{name: os.DirEntry} of a directory's files; {} when there is no such directory."""
    try:
        with os.scandir(directory) as entries:
            return {entry.name: entry for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def tail_lines(f, size, block=TAIL_BYTES, start=0):
    """The complete lines of an open file's last `block` bytes (of its stat `size`), none before
    byte `start`: without the first when it is cut, nor a last one still being written."""
    begin = max(start, size - block)
    f.seek(begin)
    lines = f.read(size - begin).decode("utf-8", "replace").split("\n")
    lines.pop()  # what follows the last newline
    return lines[1:] if begin > start else lines


def _number(text):
    try:
        return float(text) if text else None
    except ValueError:
        return None


def history_rows(path, size):
    """history.csv's rows, newest first, as far as the caller reads (floats; None where empty)."""
    with open(path, "rb") as f:
        header = f.readline()
        lines = tail_lines(f, size, start=len(header))
    columns = next(csv.reader([header.decode()]))
    for line in reversed(lines):
        yield {column: _number(value) for column, value in zip(columns, next(csv.reader([line])))}


def epoch_row(line):
    """An epoch line of train.log as history.csv's row (the columns status shows), or None."""
    match = EPOCH_LINE.match(line)
    if match is None:
        return None
    values, words = {}, []
    for token in match["metrics"].split():  # "train loss 2.3026 train acc 0.1000 ..."
        number = _number(token)
        if number is None:
            words.append(token)
        else:
            values[" ".join(words)], words = number, []
    row = {column: values.get(words) for column, words in METRICS.items()}
    return dict(row, epoch=int(match["epoch"]), step=int(match["step"]), elapsed_s=float(match["elapsed"]))


@dataclasses.dataclass
class TrainLog:
    """What the end of a cell's train.log says about its latest attempt."""

    lines: list = dataclasses.field(default_factory=list)  # the attempt's last lines, without time stamps
    resumed: tuple = None  # (epoch, step) of the attempt's resume line
    saved: re.Match = None  # the last line, when it is a save on a signal that stops the trainer
    stopped: re.Match = None  # the last line, when it is the trainer's stop (training done)

    def rows(self):
        """Its epoch lines as history.csv's rows, newest first."""
        return filter(None, map(epoch_row, reversed(self.lines)))


def read_train_log(path, size):
    with open(path, "rb") as f:
        lines = [line.split(" ", 2)[-1] for line in tail_lines(f, size)]
    log = TrainLog(lines)
    if lines:
        saved = SAVED_LINE.match(lines[-1])
        log.saved = saved if saved and saved["why"] != GOES_ON else None
        log.stopped = STOP_LINE.match(lines[-1])
    for i in range(len(lines) - 1, -1, -1):
        if attempt := ATTEMPT_LINE.match(lines[i]):  # lines above it are an earlier attempt's
            log.lines = lines[i + 1 :]
            if attempt["epoch"] is not None:
                log.resumed = int(attempt["epoch"]), int(attempt["step"])
            break
    return log


def newest(rows):
    """(the newest row, the newest evaluated one) of rows given newest first, read no further."""
    last = None
    for row in rows:
        last = last or row
        if row["train_acc"] is not None:  # evaluated every eval_every_epochs
            return last, row
    return last, None


def job_log_verdict(path, stat):
    """(state, detail, last lines) from a training job's log: interrupted, failed, or None (no word)."""
    if stat is None or not stat.st_size:
        return None, "", []
    with open(path, "rb") as f:
        lines = [line for line in tail_lines(f, stat.st_size) if line.strip()]
    last = lines[-LOG_LINES:]
    for line in reversed(lines):
        if match := INTERRUPTED_LINE.match(line):
            return "interrupted", match["why"], last
    if any(FAILED_LINE.match(line) for line in lines):
        return "failed", last[-1] if last else "", last
    return None, "", last


# ----------------------------------------------------------------------------- one cell


def cell_status(status, cell, spec, spec_json, job_log, checkpoint, time_limit_s, now):
    """Fill `status` (a cell's row) from the cell's files; see the module's docstring. `spec_json`:
    the canonical JSON of `spec`, what the config now resolves the cell to."""
    out_dir = pathlib.Path(paths.cell_dir(cell))
    files = _files(out_dir)
    status.max_epochs, status.log = spec["hparams"]["max_epochs"], job_log
    if SUMMARY in files:
        return _finished(status, out_dir, files, spec, spec_json, checkpoint)
    files = {name: entry.stat() for name, entry in files.items()}
    job = _stat(job_log)
    ckpt = _stat(checkpoint)
    if not files and job is None and ckpt is None:
        return status
    train_log = files.get(TRAIN_LOG)
    log = read_train_log(out_dir / TRAIN_LOG, train_log.st_size) if train_log else TrainLog()
    # the epochs done, from history.csv, else train.log; and the file whose last write they were
    source = files.get(HISTORY)
    row, evaluated = newest(history_rows(out_dir / HISTORY, source.st_size)) if source else (None, None)
    if row is None:
        (row, evaluated), source = newest(log.rows()), train_log
    if row is not None:
        status.epoch, status.step, status.elapsed_s = int(row["epoch"]), int(row["step"]), row["elapsed_s"]
        status.loss, status.acc = row["train_avg_loss"], row["train_avg_acc"]
        if evaluated:
            status.train_acc, status.test_acc = evaluated["train_acc"], evaluated["test_acc"]
    elif log.resumed:
        status.epoch, status.step = log.resumed
    writes = [s.st_mtime for s in (*files.values(), job, ckpt) if s is not None]
    status.quiet_s = max(0.0, now - max(writes))
    verdict, detail, status.log_tail = job_log_verdict(job_log, job)
    # an attempt started after the trainer's last line: its shell truncated the job's log
    new_attempt = job is not None and train_log is not None and job.st_mtime > train_log.st_mtime
    if verdict == "failed":
        status.state, status.detail = "failed", detail
    elif verdict == "interrupted" or (log.saved and not new_attempt):
        status.state = "interrupted"
        if log.saved:
            status.epoch, status.step = int(log.saved["epoch"]), int(log.saved["step"])
            detail = f"{log.saved['why']}: checkpoint saved at epoch {status.epoch} step {status.step}"
        status.detail = detail + _resumes(ckpt)
    elif log.stopped and not new_attempt:
        status.state = "interrupted"
        status.detail = f"trained ({log.stopped['reason']}), its outputs removed since: the next run re-emits them"
    elif not files and job is None:
        status.state, status.detail = "interrupted", f"only its checkpoint is left{_resumes(ckpt)}"
    else:
        _running(status, row, source, time_limit_s, now)
    return status


def _resumes(ckpt):
    if ckpt is None:  # the config or the training code changed since it was saved
        return "; its checkpoint is of another config or training code: the next run starts afresh"
    return "; the next attempt resumes it"


def _running(status, row, stamp, time_limit_s, now):
    """running or stalled, by how long its files have been quiet; elapsed and ETA."""
    epoch_s = row["elapsed_s"] / row["epoch"] if row is not None and row["epoch"] else None
    limit = max(STALL_EPOCHS * epoch_s if epoch_s is not None else time_limit_s, STALL_FLOOR_S)
    if status.quiet_s > limit:
        status.state = "stalled"
        status.detail = f"nothing written for {duration(status.quiet_s)} (limit {duration(limit)})"
        return
    status.state = "running"
    if row is None:
        status.detail = "starting"
        return
    since = max(0.0, now - stamp.st_mtime)  # since its last epoch was written
    status.elapsed_s += since
    if epoch_s is not None:
        status.eta_s = max(0.0, epoch_s * (status.max_epochs - status.epoch) - since)


def _finished(status, out_dir, files, spec, spec_json, checkpoint):
    try:
        summary = json.loads((out_dir / SUMMARY).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        status.state, status.detail = "failed", f"summary.json cannot be read ({err})"
        return status
    status.epoch, status.step, status.elapsed_s = summary["epochs"], summary["steps"], summary["wall_s"]
    status.loss, status.acc = summary["final_train_avg_loss"], summary["final_train_avg_acc"]
    status.train_acc, status.test_acc = summary["final_train_acc"], summary["final_test_acc"]
    status.stop_reason = summary["stop_reason"]
    why = _stale(out_dir, files, spec, spec_json, checkpoint)
    status.state, status.detail = ("stale", why) if why else ("finished", summary["stop_reason"])
    return status


def _stale(out_dir, files, spec, spec_json, checkpoint):
    """Why a cell with a summary.json will train again, or None."""
    missing = [f for f in (CELL_JSON, HISTORY) if f not in files]
    if missing:
        return f"{', '.join(missing)} missing: the next run writes it again"
    text = (out_dir / CELL_JSON).read_text()
    if text.strip() != spec_json:
        try:
            old = json.loads(text)
        except json.JSONDecodeError:
            old = {}
        return f"config changed ({', '.join(_differences(old, spec)) or 'cell.json'}): the next run retrains it"
    if code_stale(checkpoint):
        return "trained by other training code (its checkpoint has another code hash): the next run retrains it"
    return None


def _differences(old, new, prefix=""):
    keys = sorted(set(old) | set(new)) if isinstance(old, dict) and isinstance(new, dict) else []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key} {json.dumps(a)} -> {json.dumps(b)}"


def code_stale(checkpoint):
    """A finished cell whose checkpoint under the current key is gone while another is there (the
    key hashes the cell and the training code): trained by other code. With no checkpoint at all
    (deleted, or a restored archive) nothing can be told: not stale."""
    if _stat(checkpoint) is not None:
        return False
    folder = pathlib.Path(checkpoint).parent
    return folder.is_dir() and any(p.suffix == ".pt" for p in folder.iterdir())


# ----------------------------------------------------------------------------- the grid


def grid_status(plan, experiments, now):
    """The Status of every cell of `experiments` (names of the plan's), in the plan's cell order."""
    member_of = {}
    for name in experiments:
        for cell_id in plan.experiments[name]:
            member_of.setdefault(cell_id, []).append(name)
    rows = []
    for cell_id in (c for c in plan.cells if c in member_of):
        cell, spec = plan.cell(cell_id)
        pack, spec_json = plan.pack_of(cell_id), fileio.canonical_json(spec)
        checkpoint = paths.checkpoint(cell, spec_json, plan.train_code(pack))
        job_log, time_limit_s = paths.train_job_log(cell, pack.rule), 60 * plan.runtime(pack)
        status = Status(cell_id, member_of[cell_id])
        rows.append(cell_status(status, cell, spec, spec_json, job_log, checkpoint, time_limit_s, now))
    return rows


def counts(rows, experiments):
    """{experiment: {state: cells}} in the order of `experiments`, then "all" over the distinct cells."""
    result = {name: dict.fromkeys(STATES, 0) for name in (*experiments, "all")}
    for row in rows:
        for name in (*row.experiments, "all"):
            result[name][row.state] += 1
    return result


# ----------------------------------------------------------------------------- output


def duration(seconds):
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def table(rows, experiments, configfiles, shown_states=None, now=None):
    """The text view: one line per cell (of `shown_states`, default all), then the counts."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    lines = [f"{', '.join(configfiles)}: {len(rows)} cells, {stamp}", ""]
    width = max([len("cell"), *(len(r.cell) for r in rows)])
    header = (
        f"{'cell':<{width}}  {'state':<11}  {'epoch':>9}  {'loss':>7}  {'acc':>5}  "
        f"{'train':>5}  {'test':>5}  {'elapsed':>7}  {'ETA':>7}  detail"
    )
    lines.append(header)
    for r in rows:
        if shown_states and r.state not in shown_states:
            continue
        epoch = "" if r.epoch is None else f"{r.epoch}/{r.max_epochs}"
        line = (
            f"{r.cell:<{width}}  {r.state.replace('_', ' '):<11}  {epoch:>9}  {_fmt(r.loss, '.4f'):>7}  "
            f"{_fmt(r.acc, '.3f'):>5}  {_fmt(r.train_acc, '.3f'):>5}  {_fmt(r.test_acc, '.3f'):>5}  "
            f"{duration(r.elapsed_s):>7}  {duration(r.eta_s):>7}  {r.detail}"
        )
        lines.append(line.rstrip())
    found = counts(rows, experiments)
    names = list(found)
    name_width = max(len("experiment"), *map(len, names))
    lines += ["", f"{'experiment':<{name_width}}  {'cells':>5}  " + "  ".join(s.replace("_", " ") for s in STATES)]
    for name in names:
        cells = sum(found[name].values())
        lines.append(f"{name:<{name_width}}  {cells:>5}  " + "  ".join(f"{found[name][s]:>{len(s)}}" for s in STATES))
    return "\n".join(lines)


def as_dict(row):
    """A row for JSON, which has no NaN or infinity (a diverged loss): null instead."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in dataclasses.asdict(row).items()}


# ----------------------------------------------------------------------------- CLI


def load_plan(configfiles):
    """The plan of the run's config: its files deep-merged in order, as Snakemake merges them."""
    from rethink.archive.build import load_config

    return rplan.Plan(load_config(pathlib.Path.cwd(), configfiles), configfiles)


def parser():
    p = argparse.ArgumentParser(prog="python -m rethink.status", description=__doc__.splitlines()[0])
    p.add_argument(
        "--configfile",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="the run's config file(s), as given to snakemake (default config/config.yaml)",
    )
    p.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds (Ctrl-C stops)")
    p.add_argument("--json", action="store_true", help="JSON for scripts (with --watch: one document a line)")
    p.add_argument("--experiment", action="append", metavar="NAME", help="only this experiment's cells")
    p.add_argument("--state", action="append", choices=STATES, help="only rows in this state (counts: all)")
    return p


def show(args, configfiles):
    plan = load_plan(configfiles)
    for name in args.experiment or []:
        if name not in plan.experiments:
            raise RethinkError(
                f"--experiment {name}: not an enabled experiment of this config "
                f"(enabled: {', '.join(plan.experiments)})"
            )
    now, experiments = time.time(), args.experiment or list(plan.experiments)
    rows = grid_status(plan, experiments, now)
    if args.json:
        document = {
            "configfiles": configfiles,
            "time": now,
            "cells": [as_dict(r) for r in rows if not args.state or r.state in args.state],
            "counts": counts(rows, experiments),
        }
        return json.dumps(document, indent=None if args.watch else 1, allow_nan=False)
    return table(rows, experiments, configfiles, args.state, now)


@cli_main
def main(argv=None):
    args = parser().parse_args(argv)
    configfiles = args.configfile or ["config/config.yaml"]
    if args.watch is not None and not args.watch > 0:
        raise RethinkError(f"--watch {args.watch:g}: give the seconds between refreshes, a number above 0")
    if args.watch is None:
        print(show(args, configfiles))
        return 0
    clear = "\033[H\033[J" if sys.stdout.isatty() and not args.json else ""
    try:
        while True:
            text = show(args, configfiles)
            print(clear + text, flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
