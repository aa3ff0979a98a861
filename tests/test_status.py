"""The status view (python -m rethink.status): every state on crafted cell folders, the CLI, and
real runs: a grid trained by snakemake, one interrupted midway by SIGTERM and resumed, and a
finished one whose config is then edited."""

import copy
import csv
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from rethink import config as rconfig
from rethink import fileio, paths, status
from rethink import plan as rplan
from rethink.train.outputs import HISTORY_COLUMNS

from conftest import (
    CELLS,
    PATIENCE_S,
    SCHEMA,
    freeze,
    log_match,
    sigterm_pending,
    tiny_config,
    wait_until,
)

NOW = 2_000_000_000.0  # the clock of the crafted tests: every mtime is set relative to it
MLP = "synth/mlp/none/random_labels/s0"
ALEXNET = "synth/alexnet/none/random_labels/s0"
EXPERIMENTS = {
    "fig1a": {"dataset": "synth", "grid": [{"architectures": ["mlp", "alexnet"], "noises": ["random_labels"]}]}
}


def grid(config):
    """The plan of a config (dict), as the CLI builds it."""
    return rplan.Plan(rconfig.validate(copy.deepcopy(config), SCHEMA), ["test.yaml"])


@pytest.fixture
def plan(tmp_path, monkeypatch):
    """A two-cell plan; the results tree is tmp_path/results (the working directory)."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(EXPERIMENTS)
    config["training"]["max_epochs"] = 10
    return grid(config)


def states(plan, now=NOW):
    return {row.cell: row for row in status.grid_status(plan, list(plan.experiments), now)}


# ----------------------------------------------------------------------------- crafting a cell's files
# The lines and rows as the trainer writes them (rethink.train.loop); the real-run tests below
# check that the trainer's own files read the same.


def stamp(t):
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def epoch_row(epoch, evaluated=True, epoch_s=2.0):
    row = dict.fromkeys(HISTORY_COLUMNS)
    row.update(step=4 * epoch, epoch=epoch, lr=0.01, elapsed_s=epoch_s * epoch + 0.5)
    if epoch:
        row.update(train_avg_loss=2.5 - 0.1 * epoch, train_avg_acc=0.1 + 0.01 * epoch)
    if evaluated:
        row.update(train_loss=2.0, train_acc=0.2 + 0.01 * epoch, test_loss=2.3, test_acc=0.1 + 0.001 * epoch)
        row.update(train_top5=0.6, test_top5=0.5)
    return row


def epoch_line(row):
    text = " ".join(
        f"{k.replace('_', ' ')} {row[k]:.4f}"
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "train_top5", "test_top5")
        + ("train_avg_loss", "train_avg_acc")
        if row[k] is not None
    )
    return f"epoch {row['epoch']:4d} step {row['step']:7d} lr {row['lr']:.4g} {text} elapsed {row['elapsed_s']:.1f}s"


class Crafted:
    """A cell's files under results/, written as the trainer and the training job write them."""

    def __init__(self, plan, cell_id):
        self.plan, self.cell, self.spec = plan, *plan.cell(cell_id)
        self.dir = pathlib.Path(paths.cell_dir(self.cell))
        self.job_log = pathlib.Path(paths.train_job_log(self.cell, plan.pack_of(cell_id).rule))
        key = fileio.canonical_json(self.spec)
        self.checkpoint = pathlib.Path(paths.checkpoint(self.cell, key, plan.train_code(plan.pack_of(cell_id))))

    def file(self, kind):
        return paths.cell_file(self.dir, kind)

    def write(self, path, text, age):
        """`path` with `text`, last written `age` seconds before NOW."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (NOW - age, NOW - age))

    def cell_json(self, age, spec=None):
        self.write(self.file("cell"), fileio.canonical_json(spec or self.spec) + "\n", age)

    def log(self, lines, age):
        self.write(self.file("log"), "".join(f"{stamp(NOW - age)} {line}\n" for line in lines), age)

    def history(self, rows, age, tail=""):
        text = io.StringIO()
        writer = csv.DictWriter(text, HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.write(self.file("history"), text.getvalue() + tail, age)

    def started(self, epochs, age, history=True, every=1):
        """An attempt that has done `epochs` epochs, its last written `age` s ago."""
        rows = [epoch_row(e, evaluated=e % every == 0) for e in range(epochs + 1)]
        self.cell_json(age + 100)
        self.log(["start cell=... arch=mlp_1x512", *map(epoch_line, rows)], age)
        if history:
            self.history(rows, age)
        return rows

    def summary(self, age, **results):
        summary = dict(self.spec, epochs=7, steps=28, wall_s=12.5, stop_reason="fit_threshold")
        summary.update(final_train_avg_loss=0.01, final_train_avg_acc=0.99, final_train_acc=1.0, final_test_acc=0.11)
        self.write(self.file("summary"), json.dumps(dict(summary, **results)), age)

    def save_checkpoint(self, age, path=None):
        self.write(path or self.checkpoint, "not read by status", age)


# ----------------------------------------------------------------------------- states, crafted


def test_a_cell_without_files_has_not_started(plan):
    rows = states(plan)
    assert {c: r.state for c, r in rows.items()} == {MLP: "not_started", ALEXNET: "not_started"}
    assert rows[MLP].max_epochs == 10 and rows[MLP].epoch is None
    assert status.counts(rows.values(), ["fig1a"])["all"] == dict.fromkeys(status.STATES, 0) | {"not_started": 2}


@pytest.mark.parametrize("history", [True, False], ids=["history.csv", "train.log only"])
def test_a_running_cell_shows_its_last_epoch_loss_elapsed_and_eta(plan, history):
    """From history.csv's last row, or, where there is no history.csv (a trainer that writes it
    at the end only), from train.log's last epoch line: the same numbers."""
    cell = Crafted(plan, MLP)
    rows = cell.started(epochs=4, age=3.0, history=history, every=3)
    row = states(plan)[MLP]
    assert (row.state, row.epoch, row.step, row.max_epochs) == ("running", 4, 16, 10)
    # train.log rounds to 4 decimals
    assert row.loss == pytest.approx(rows[4]["train_avg_loss"], abs=5e-5)
    assert row.acc == pytest.approx(rows[4]["train_avg_acc"], abs=5e-5)
    # epoch 4 was not evaluated (every 3rd is): the accuracies of epoch 3, the last evaluation
    assert row.train_acc == pytest.approx(rows[3]["train_acc"], abs=5e-5)
    assert row.test_acc == pytest.approx(rows[3]["test_acc"], abs=5e-5)
    epoch_s = rows[4]["elapsed_s"] / 4  # 8.5 s of training for 4 epochs
    assert row.elapsed_s == pytest.approx(rows[4]["elapsed_s"] + 3.0, abs=0.05)  # + since its last write
    assert row.eta_s == pytest.approx(epoch_s * (10 - 4) - 3.0, abs=0.05)
    assert row.quiet_s == pytest.approx(3.0)


def test_a_partly_written_history_row_is_not_read(plan):
    cell = Crafted(plan, MLP)
    rows = cell.started(epochs=2, age=1.0)
    cell.history(rows, 1.0, tail="7,3,0.01,2.")  # epoch 3's row while it is being appended
    assert states(plan)[MLP].epoch == 2


def test_a_cell_whose_files_went_quiet_is_stalled(plan):
    """Quiet for longer than STALL_EPOCHS mean epochs (at least STALL_FLOOR_S): no process trains it."""
    cell = Crafted(plan, MLP)
    cell.started(epochs=4, age=status.STALL_FLOOR_S - 1)
    assert states(plan)[MLP].state == "running"
    cell.started(epochs=4, age=status.STALL_FLOOR_S + 1)  # 3 epochs of ~2.1 s: the floor decides
    row = states(plan)[MLP]
    assert (row.state, row.epoch, row.eta_s) == ("stalled", 4, None)
    assert "nothing written for 2m01s" in row.detail
    # a recent periodic checkpoint is a write too
    cell.save_checkpoint(age=5)
    assert states(plan)[MLP].state == "running"


def test_a_cell_before_its_first_epoch_stalls_after_its_jobs_time_limit(plan):
    cell = Crafted(plan, MLP)
    limit = 60 * plan.runtime(plan.pack_of(MLP))  # runtime_minutes: 5 in the tiny config
    cell.cell_json(age=limit - 1)  # the trainer writes cell.json first, then loads the data
    row = states(plan)[MLP]
    assert (row.state, row.epoch, row.detail) == ("running", None, "starting")
    cell.cell_json(age=limit + 1)
    assert states(plan)[MLP].state == "stalled"


def test_a_trainer_stopped_by_a_signal_is_interrupted_until_its_next_attempt(plan):
    cell = Crafted(plan, MLP)
    rows = cell.started(epochs=5, age=50)
    cell.log(
        ["start cell=...", *map(epoch_line, rows), "SIGUSR1: checkpoint saved at epoch 2 step 9"], age=50
    )  # SIGUSR1 saves and goes on
    assert states(plan)[MLP].state == "running"
    cell.log(["start cell=...", *map(epoch_line, rows), "SIGTERM: checkpoint saved at epoch 5 step 21"], age=50)
    cell.save_checkpoint(age=50)
    row = states(plan)[MLP]
    assert (row.state, row.epoch, row.step, row.eta_s) == ("interrupted", 5, 21, None)
    assert row.detail == "SIGTERM: checkpoint saved at epoch 5 step 21; the next attempt resumes it"
    assert row.loss == pytest.approx(rows[5]["train_avg_loss"], abs=5e-5)

    # under snakemake: the job's log says so too (and the job's outputs are deleted)
    cell.file("history").unlink()
    cell.file("cell").unlink()
    cell.write(cell.job_log, f"interrupted: stopped by SIGTERM; saved to {cell.checkpoint}; rerun to resume\n", 49)
    row = states(plan)[MLP]
    assert (row.state, row.epoch) == ("interrupted", 5)
    # the next attempt truncates the job's log when it starts: running again (loading its data)
    cell.write(cell.job_log, "", 10)
    row = states(plan)[MLP]
    assert (row.state, row.quiet_s) == ("running", 10)

    # a checkpoint of another config or code: the next attempt starts afresh
    cell.write(cell.job_log, "interrupted: stopped by SIGTERM; saved to X; rerun to resume\n", 49)
    cell.checkpoint.unlink()
    assert states(plan)[MLP].detail.endswith("the next run starts afresh")


def test_an_orphaned_trainer_and_a_cell_with_only_a_checkpoint_are_interrupted(plan):
    cell = Crafted(plan, MLP)
    rows = cell.started(epochs=2, age=500)
    cell.log(["start cell=...", *map(epoch_line, rows), "parent process gone: checkpoint saved at epoch 2 step 8"], 500)
    assert states(plan)[MLP].detail.startswith("parent process gone: checkpoint saved at epoch 2 step 8")
    other = Crafted(plan, ALEXNET)
    other.save_checkpoint(age=1000)
    row = states(plan)[ALEXNET]
    assert (row.state, row.epoch) == ("interrupted", None)
    assert row.detail.startswith("only its checkpoint is left")


def test_a_resumed_attempt_shows_its_own_epochs_not_the_lost_ones(plan):
    """Killed at epoch 9 with its last checkpoint at epoch 5: the resumed attempt is at epoch 5."""
    cell = Crafted(plan, MLP)
    lost = [epoch_line(epoch_row(e)) for e in range(10)]
    cell.cell_json(age=3)
    cell.log(["start cell=...", *lost, "resume from results/checkpoints/x.pt at epoch 5 step 20"], age=3)
    row = states(plan)[MLP]
    assert (row.state, row.epoch, row.step, row.loss) == ("running", 5, 20, None)
    cell.log(["start cell=...", *lost, "resume from x.pt at epoch 5 step 20", epoch_line(epoch_row(6))], age=3)
    assert states(plan)[MLP].epoch == 6


def test_a_job_whose_log_ends_in_an_error_failed(plan):
    cell = Crafted(plan, MLP)
    cell.started(epochs=1, age=30)
    error = "error: results/data/synth/clean/train-00000.h5: checksum mismatch in images"
    cell.write(cell.job_log, "a warning\n\n" + "\n".join(f"line {i}" for i in range(8)) + f"\n{error}\n", 20)
    row = states(plan)[MLP]
    assert (row.state, row.detail, row.epoch) == ("failed", error, 1)
    assert row.log == str(cell.job_log) and row.log_tail == ["line 4", "line 5", "line 6", "line 7", error]
    traceback = "Traceback (most recent call last):\n  File x, line 1\nRuntimeError: CUDA out of memory\n"
    cell.write(cell.job_log, traceback, 20)
    row = states(plan)[MLP]
    assert (row.state, row.detail) == ("failed", "RuntimeError: CUDA out of memory")
    # warnings alone are no failure
    cell.write(cell.job_log, "UserWarning: something\n", 20)
    assert states(plan)[MLP].state == "running"


def test_a_packs_log_is_every_members_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(
        {
            "fig1a": {
                "dataset": "synth",
                "grid": [{"architectures": ["mlp"], "noises": ["random_labels", "true_labels"]}],
            }
        }
    )
    config["compute"] = {"pack": 2}
    plan = grid(config)
    first = Crafted(plan, MLP)
    assert first.job_log == pathlib.Path("results/logs/train/train_synth_mlp_p000.log")
    first.write(first.job_log, "error: boom\n", 5)
    assert {r.state for r in states(plan).values()} == {"failed"}


def test_a_trained_cell_whose_outputs_were_removed_is_re_emitted(plan):
    """SIGINT to snakemake after training: it throws the outputs away; the finished checkpoint stays."""
    cell = Crafted(plan, MLP)
    rows = cell.started(epochs=7, age=600, history=False)
    stop = "stop: fit_threshold at epoch 7 step 28 final train acc 1.0000 test acc 0.1100 wall 12.5s"
    cell.log(["start cell=...", *map(epoch_line, rows), stop], 600)
    row = states(plan)[MLP]
    assert (row.state, row.epoch) == ("interrupted", 7)
    assert "outputs removed since: the next run re-emits them" in row.detail


def finish(cell, spec=None):
    cell.cell_json(age=1000, spec=spec)
    cell.history([epoch_row(e) for e in range(8)], age=1000)
    cell.summary(age=1000)
    cell.save_checkpoint(age=1000)


def test_a_finished_cell_shows_its_summary(plan):
    cell = Crafted(plan, MLP)
    finish(cell)
    row = states(plan)[MLP]
    assert (row.state, row.epoch, row.step, row.stop_reason, row.detail) == (
        "finished",
        7,
        28,
        "fit_threshold",
        "fit_threshold",
    )
    assert (row.loss, row.acc, row.train_acc, row.test_acc, row.elapsed_s) == (0.01, 0.99, 1.0, 0.11, 12.5)
    assert (row.eta_s, row.quiet_s) == (None, None)  # a finished cell's other files are not read


def test_a_finished_cell_that_will_train_again_is_stale(plan):
    cell = Crafted(plan, MLP)
    edited = copy.deepcopy(cell.spec)
    edited["hparams"]["lr"], edited["seed"] = 0.5, 3
    finish(cell, spec=edited)
    row = states(plan)[MLP]
    assert row.state == "stale"
    assert row.detail == "config changed (hparams.lr 0.5 -> 0.01, seed 3 -> 0): the next run retrains it"

    finish(cell)
    cell.file("history").unlink()
    assert states(plan)[MLP].detail == "history.csv missing: the next run writes it again"

    # the training code changed: the cell's checkpoint under the current key is gone, another is there
    finish(cell)
    cell.checkpoint.rename(cell.checkpoint.with_name("0123456789abcdef.pt"))
    row = states(plan)[MLP]
    assert row.state == "stale" and row.detail.startswith("trained by other training code")
    # no checkpoint at all (deleted, or a restored archive): nothing tells, so finished
    cell.checkpoint.with_name("0123456789abcdef.pt").unlink()
    assert states(plan)[MLP].state == "finished"


def test_counts_per_experiment_and_overall(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shared = {"dataset": "synth", "grid": [{"architectures": ["mlp"], "noises": ["random_labels"]}]}
    plan = grid(tiny_config({"fig1a": EXPERIMENTS["fig1a"], "table1": shared}))
    finish(Crafted(plan, MLP))
    rows = status.grid_status(plan, list(plan.experiments), NOW)
    found = status.counts(rows, list(plan.experiments))
    assert list(found) == ["fig1a", "table1", "all"]
    assert {name: {s: n for s, n in c.items() if n} for name, c in found.items()} == {
        "fig1a": {"finished": 1, "not_started": 1},
        "table1": {"finished": 1},
        "all": {"finished": 1, "not_started": 1},  # the shared cell once
    }
    only = status.grid_status(plan, ["table1"], NOW)
    assert [(r.cell, r.experiments) for r in only] == [(MLP, ["table1"])]


# ----------------------------------------------------------------------------- the CLI


def cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "rethink.status", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )


@pytest.fixture
def project(tmp_path):
    """A working directory with the workflow's schema and two config files (the second overrides)."""
    (tmp_path / "workflow" / "schemas").mkdir(parents=True)
    (tmp_path / "workflow" / "schemas" / "config.schema.yaml").write_text(SCHEMA.read_text())
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(tiny_config(EXPERIMENTS)))
    (tmp_path / "config" / "more.yaml").write_text(yaml.safe_dump({"training": {"max_epochs": 33}}))
    return tmp_path


def test_the_cli_prints_a_row_per_cell_and_the_counts(project):
    proc = cli(cwd=project)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("config/config.yaml: 2 cells, ")
    assert re.match(r"cell\s+state\s+epoch\s+loss\s+acc\s+train\s+test\s+elapsed\s+ETA\s+detail$", lines[2])
    assert [line.split("  ")[0] for line in lines[3:5]] == [ALEXNET, MLP]
    assert all(re.fullmatch(r"\S+\s+not started", line) for line in lines[3:5])
    assert re.fullmatch(r"fig1a\s+2\s+2(\s+0){6}", lines[-2]) and re.fullmatch(r"all\s+2\s+2(\s+0){6}", lines[-1])


def test_the_cli_merges_config_files_like_snakemake_and_filters(project):
    proc = cli("--configfile", "config/config.yaml", "--configfile", "config/more.yaml", "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["configfiles"] == ["config/config.yaml", "config/more.yaml"]
    assert [c["max_epochs"] for c in document["cells"]] == [33, 33]
    assert document["counts"]["all"]["not_started"] == 2
    same = json.loads(cli("--configfile", "config/config.yaml", "config/more.yaml", "--json", cwd=project).stdout)
    assert [c["max_epochs"] for c in same["cells"]] == [33, 33]
    filtered = json.loads(cli("--json", "--state", "running", cwd=project).stdout)
    assert filtered["cells"] == [] and filtered["counts"]["all"]["not_started"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "fig9"], "--experiment fig9: not an enabled experiment of this config (enabled: fig1a)"),
        (["--watch", "0"], "--watch 0: give the seconds between refreshes, a number above 0"),
        (["--configfile", "config/none.yaml"], "config/none.yaml: not a readable YAML config"),
    ],
)
def test_the_cli_refuses_bad_arguments_in_one_line(project, args, message):
    proc = cli(*args, cwd=project)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_watch_refreshes_until_ctrl_c(project):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rethink.status", "--watch", "0.05", "--json"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        documents = [json.loads(proc.stdout.readline()) for _ in range(3)]  # one a line
        assert [d["counts"]["all"]["not_started"] for d in documents] == [2, 2, 2]
        assert documents[0]["time"] < documents[1]["time"] < documents[2]["time"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 0 and not err, err


def test_status_imports_no_torch():
    code = "import sys, rethink.status; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"


# ----------------------------------------------------------------------------- real runs


def as_rows(proc):
    assert proc.returncode == 0, proc.stderr
    return {c["cell"]: c for c in json.loads(proc.stdout)["cells"]}


def last_epoch(log):
    """The epoch of train.log's last epoch line."""
    return int(log_match(log, r"epoch\s+(\d+) step")[1])


def trainer_of(snakemake):
    """The pid of the trainer snakemake runs (the rule execs it: a child of snakemake), once it is there."""

    def find():
        for child in pathlib.Path(f"/proc/{snakemake.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                try:
                    if b"rethink.train" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                        return int(pid)
                except OSError:
                    pass
        return None

    return wait_until(find, "the trainer", snakemake)


def sigterm(pid, snakemake):
    """Freeze-safe SIGTERM: the process is frozen, the signal left pending, then it continues."""
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: sigterm_pending(pid) is not False, "the SIGTERM on the trainer", snakemake)
    os.kill(pid, signal.SIGCONT)


@pytest.mark.workflow
def test_a_real_run_interrupted_midway_and_resumed(workflow):
    """snakemake trains a cell (random labels, an lr too small to fit: it trains on); the status
    while it is frozen mid-run, after a SIGTERM, and in the resumed attempt is what its files say."""
    config = tiny_config(
        {"fig1a": {"dataset": "synth", "grid": [{"architectures": ["mlp"], "noises": ["random_labels"]}]}}
    )
    config["training"].update(max_epochs=100_000, lr=1e-6)
    configfile = workflow.write_config(config)
    cell_dir = workflow.root / paths.CELL_DIR.format(
        dataset="synth", arch="mlp", regularizer="none", noise="random_labels", seed=0
    )
    log = cell_dir / "train.log"

    def status_now():
        return as_rows(cli("--configfile", configfile, "--json", cwd=workflow.root, env=workflow.env))[MLP]

    def snakemake():
        command = [sys.executable, "-m", "snakemake", "--configfile", configfile, "-c1"]
        return subprocess.Popen(command, cwd=workflow.root, env=workflow.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    assert status_now()["state"] == "not_started"
    run = snakemake()
    trainer = trainer_of(run)
    wait_until(lambda: log_match(log, r"epoch\s+3 step"), "epoch 3 in train.log", run, interval=0.002)
    freeze([trainer], run)
    try:
        row = status_now()
        assert (row["state"], row["max_epochs"]) == ("running", 100_000)
        assert row["epoch"] == last_epoch(log) >= 3
        history = list(csv.DictReader((cell_dir / "history.csv").open()))  # grown every epoch
        assert row["epoch"] == int(history[-1]["epoch"]) == len(history) - 1
        assert row["acc"] == float(history[-1]["train_avg_acc"])
        elapsed = float(log_match(log, r"elapsed (\S+)s\n")[1])  # the last epoch line's
        assert row["eta_s"] >= 0 and row["elapsed_s"] >= elapsed
    finally:
        sigterm(trainer, run)
    _, err = run.communicate(timeout=PATIENCE_S)
    assert run.returncode != 0, err  # the job failed: snakemake removed its outputs

    state = torch.load(next((workflow.root / "results" / "checkpoints").rglob("*.pt")), weights_only=True)
    saved = log_match(log, r"SIGTERM: checkpoint saved at epoch (\d+) step (\d+)")
    row = status_now()
    assert row["state"] == "interrupted"
    assert (row["epoch"], row["step"]) == (state["epoch"], state["step"]) == (int(saved[1]), int(saved[2]))
    assert row["detail"].startswith(f"SIGTERM: checkpoint saved at epoch {state['epoch']} step")
    assert row["log"] == f"results/logs/train/{MLP}.log"

    # the next attempt resumes at the checkpoint's epoch: its own epochs, not the lost ones
    run = snakemake()
    trainer = trainer_of(run)
    resumed = rf"resume from .* at epoch {state['epoch']} step {state['step']}\n.*epoch\s+{state['epoch'] + 1} step"
    wait_until(lambda: log_match(log, resumed), "the resumed attempt's first epoch", run, interval=0.002)
    freeze([trainer], run)
    try:
        row = status_now()
        assert (row["state"], row["epoch"]) == ("running", last_epoch(log))
        assert row["epoch"] > state["epoch"]
    finally:
        sigterm(trainer, run)
    run.communicate(timeout=PATIENCE_S)
    assert status_now()["state"] == "interrupted"


@pytest.mark.workflow
def test_a_finished_run_is_finished_until_its_config_changes(finished, tmp_path):
    """The shared finished tiny run: every cell finished with its summary's numbers (so the
    checkpoint key status computes is the workflow's); after an edit, exactly the edited cells are stale."""
    wf, configfile, _ = finished
    rows = as_rows(cli("--configfile", configfile, "--json", cwd=wf.root, env=wf.env))
    assert set(rows) == CELLS and {r["state"] for r in rows.values()} == {"finished"}
    for cell_id, row in rows.items():
        summary = json.loads((wf.root / paths.CELL_DIR.format(**_wildcards(cell_id)) / "summary.json").read_text())
        assert (row["epoch"], row["stop_reason"], row["train_acc"], row["test_acc"]) == (
            summary["epochs"],
            summary["stop_reason"],
            summary["final_train_acc"],
            summary["final_test_acc"],
        )
    edited = yaml.safe_load(configfile.read_text())
    edited["architectures"]["alexnet"]["hparams"] = {"lr": 0.02}
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    rows = as_rows(cli("--configfile", tmp_path / "edited.yaml", "--json", cwd=wf.root, env=wf.env))
    stale = {c for c, r in rows.items() if r["state"] == "stale"}
    assert stale == {"synth/alexnet/none/true_labels/s0"}
    assert rows["synth/alexnet/none/true_labels/s0"]["detail"].startswith("config changed (hparams.lr 0.01 -> 0.02)")


def _wildcards(cell_id):
    dataset, arch, regularizer, noise, seed = cell_id.split("/")
    return dict(dataset=dataset, arch=arch, regularizer=regularizer, noise=noise, seed=seed[1:])
