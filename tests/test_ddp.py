"""A cell trained by several processes (torchrun, gloo on the CPU) is the one-process cell: the
same draws, the same updates up to the order of float additions; SIGTERM reaches every process,
rank 0 saves, and a relaunch resumes. The workflow asks Slurm for one GPU per process."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from rethink import config as rconfig
from rethink.errors import RethinkError
from rethink.train import checkpoint, distributed
from rethink.train.loop import Job, train

from conftest import SCHEMA, tiny_config
from test_train import make_cell, read_history, untimed, write_split

# Measured: the largest loss difference over 3 epochs is ~5e-7 (float32 reductions in another
# order: each rank's part of the batch, then the all-reduce). Accuracies agree exactly.
LOSS_ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchrun(pack, nproc=2):
    """`torchrun --standalone --nproc_per_node=2 -m rethink.train --pack ...`, as the rule runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
        + ["-m", "rethink.train", "--pack", json.dumps(pack)],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_train_the_one_process_cell_and_resume_after_sigterm(tmp_path):
    # 299 samples in batches of 16: the last global batch (11) splits unevenly, 6 + 5
    data = (
        [write_split(tmp_path / "train.h5", 299, (1, 10, 10), "train", 1)],
        [write_split(tmp_path / "test.h5", 40, (1, 10, 10), "test", 2)],
    )
    # BatchNorm (global-batch statistics), dropout, random crops and flips/rotations: every draw
    cell = make_cell(
        "inception", width=0.05, batch_size=16, max_epochs=3, crop_size=8, crop_pad=2, lr=0.01,
        dropout=0.5, random_crop=True, augment=True,
    )  # fmt: skip
    out, ckpt = tmp_path / "ddp", tmp_path / "ddp.pt"
    pack = [dict(cell=cell, train=data[0], test=data[1], out_dir=str(out), checkpoint=str(ckpt))]

    proc, log = torchrun(pack), out / "train.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and re.search(r"epoch\s+1 step\s+\d+ lr", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both processes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert err.count("stopped by SIGTERM") == 2, err  # both ranks stopped, at the same step
    state = torch.load(ckpt, weights_only=True)
    assert not checkpoint.is_finished(state) and state["epoch"] >= 1, "the run ended before the signal"
    assert "SIGTERM: checkpoint saved" in log.read_text() and not (out / "summary.json").exists()

    proc = torchrun(pack)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert re.search(r"resume from .* at epoch \d+ step \d+", log.read_text())
    assert log.read_text().count(" start cell=") == 1  # rank 0 alone logs

    one = train(Job(cell, *data, tmp_path / "one", tmp_path / "one.pt"), echo=False)[0]
    ddp = json.loads((out / "summary.json").read_text())
    rows, expected = read_history(out / "history.csv"), read_history(tmp_path / "one" / "history.csv")
    assert [(r["step"], r["epoch"], r["lr"]) for r in rows] == [(r["step"], r["epoch"], r["lr"]) for r in expected]
    for row, want in zip(rows, expected):
        for key, value in want.items():
            if key.endswith("loss") and value:
                assert math.isclose(float(row[key]), float(value), rel_tol=0, abs_tol=LOSS_ATOL), (key, row, want)
            elif key != "elapsed_s":
                assert row[key] == value, (key, row, want)
    assert math.isclose(ddp["param_norm"], one["param_norm"], rel_tol=1e-5)
    same = {k for k in untimed(one) if "loss" not in k and k != "param_norm"}
    assert {k: ddp[k] for k in same} == {k: one[k] for k in same}


def test_parts_cover_a_batch_and_the_batch_must_split_evenly():
    for n in (1, 11, 16):
        parts = [distributed.World(r, 2, r, None).part(n) for r in range(2)]
        assert parts[0][0] == 0 and parts[0][1] == parts[1][0] and parts[1][1] == n
        assert parts[0][1] - parts[0][0] - (parts[1][1] - parts[1][0]) in (0, 1)
    with pytest.raises(RethinkError, match="batch_size=30 .* does not split evenly over 4 processes"):
        distributed.check_batches(distributed.World(0, 4, 0, None), 100, 30, "c")
    with pytest.raises(RethinkError, match="last batch has 1 samples, fewer than the 2 processes"):
        distributed.check_batches(distributed.World(0, 2, 0, None), 33, 16, "c")


def gpu_config(gpus=2, pack=1, device="cuda"):
    config = tiny_config({"fig1a": {"dataset": "synth", "grid": [{"architectures": ["alexnet", "mlp"]}]}})
    config["architectures"]["alexnet"].update(gpus=gpus, hparams={"device": device})
    config["compute"] = {"pack": pack}
    return config


def test_dry_run_asks_for_one_gpu_per_process_and_launches_torchrun(workflow):
    configfile = workflow.write_config(gpu_config())
    out = workflow.run("-n", "--configfile", configfile, "--profile", "profiles/slurm").stdout
    jobs = {m.group(1): m.group(0) for m in re.finditer(r"rule (train_\w+):.*?(?=\nrule |\Z)", out, re.S)}
    alexnet, mlp = jobs["train_synth_alexnet_p000"], jobs["train_synth_mlp_p000"]
    assert "gpu=2" in alexnet and "cpus_per_task=2" in alexnet
    assert "exec torchrun --standalone --nnodes=1 --nproc_per_node=2 -m rethink.train" in alexnet
    assert "gpu=0" in mlp and "exec python -m rethink.train" in mlp and "torchrun" not in mlp


@pytest.mark.workflow
def test_each_pack_job_runs_its_own_launcher(workflow):
    """A run, not a dry run: the multi-process cell under torchrun, its neighbour in one process
    (a launcher read from the rule-defining loop's variable at run time would give both the
    last pack's)."""
    configfile = workflow.write_config(gpu_config(device="cpu"))
    workflow.run("--configfile", configfile, "-c2", "fig1a")
    cells = workflow.root / "results/cells/synth"
    for arch, processes in (("alexnet", 2), ("mlp", 1)):
        log = (cells / arch / "none/true_labels/s0/train.log").read_text()
        assert f"processes={processes} " in log, log


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(pack=2), r"architectures.alexnet.gpus: 2 .* compute.pack is 2; set compute.pack: 1"),
        (dict(gpus=3), r"architectures.alexnet.gpus: 3 does not divide .* batch_size 16"),
    ],
)
def test_multi_gpu_config_errors(change, message):
    with pytest.raises(RethinkError, match=message):
        rconfig.validate(gpu_config(**change), SCHEMA)
    rconfig.validate(gpu_config(), SCHEMA)


WATCHER = """
import sys, time
from rethink.train.checkpoint import Signals
signals = Signals(launcher=True)
print("watching", flush=True)
deadline = time.monotonic() + 30
while not signals.orphaned() and time.monotonic() < deadline:
    time.sleep(0.01)
print("orphaned" if signals.orphaned() else "not orphaned", flush=True)
"""
LAUNCHER = """
import os, subprocess, sys, time
print(os.getpid(), flush=True)
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(120)
"""
SNAKEMAKE = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]])"


def test_a_process_under_torchrun_sees_snakemake_die():
    """trainer <- launcher (torchrun) <- snakemake: killing snakemake orphans the launcher, not the
    trainer, which must notice anyway (it then saves and stops, as a one-process trainer does)."""
    snakemake = subprocess.Popen(
        [sys.executable, "-c", SNAKEMAKE, LAUNCHER, WATCHER], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    launcher = int(snakemake.stdout.readline())
    try:
        assert snakemake.stdout.readline() == "watching\n"
        snakemake.kill()
        snakemake.wait()
        assert snakemake.stdout.readline() == "orphaned\n"  # the watcher inherited the pipe
    finally:
        snakemake.kill()
        os.kill(launcher, signal.SIGKILL)
