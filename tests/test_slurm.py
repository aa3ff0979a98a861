"""The pipeline on a real Slurm (scripts/local-slurm.sh: slurmctld, slurmd, slurmdbd, munge and
MariaDB on loopback, partitions cpu and gpu, fake GPUs), through the user's command
`snakemake --workflow-profile profiles/slurm --configfile ...` (with faster status checks).

Skipped, with the reason, where the cluster cannot be started (not root, no apt-get).
"""

import contextlib
import gzip
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from rethink import paths

from conftest import (
    FASHION_MNIST_ROOT,
    PATIENCE_S,
    REPO,
    Workflow,
    freeze,
    is_training_rule,
    log_match,
    pack_rules,
    sigterm_pending,
    tiny_config,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
SCRIPT = REPO / "scripts" / "local-slurm.sh"
METRIC_COLUMNS = [
    "cell",
    "final_train_acc",
    "final_test_acc",
    "final_train_loss",
    "best_test_acc",
    "steps_to_fit",
    "steps",
    "stop_reason",
    "n_params",
]


def _cannot_start():
    if os.geteuid() != 0:
        return "starting Slurm's daemons needs root"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "Slurm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _cannot_start()
    if reason:
        pytest.skip(reason)
    was_up = (
        subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0 if shutil.which("scontrol") else False
    )
    proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    yield
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=PATIENCE_S)
        # as the machine was: no config left whose controller is gone (each later Snakemake start
        # would wait out Slurm's MessageTimeout in the executor plugin's `scontrol show config`)
        assert not pathlib.Path("/etc/slurm/slurm.conf").exists()


# What a test run sets beside the workflow profile, on the command line (which overrides it): more
# jobs at once on this one node, and status checks from the first second.
FAST = ("--jobs", "8", "--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "1")


def slurm_command(configfile, *args):
    return ["--workflow-profile", "profiles/slurm", *FAST, *args, "--configfile", str(configfile)]


def run_slurm(wf, configfile, *args, check=True, timeout=900):
    """The run, as a user whose home holds no profile of its own -> (process, Slurm run id)."""
    env = wf.user_env(wf.root / "home")
    proc = wf.run(*slurm_command(configfile, *args), env=env, check=check, timeout=timeout)
    return proc, run_id(proc.stdout + proc.stderr)


def run_id(output):
    return re.search(r"SLURM run ID: (\S+)", output)[1]


FIELDS = ("id", "state", "tres", "timelimit", "partition", "account", "qos", "constraints", "comment", "submit")


def accounting(run):
    """Slurm's own records of a run's jobs once all have ended: id, state, requested TRES, time
    limit, partition, account, QoS, constraints, rule (from the comment, which reaches accounting
    when the job ends) and the sbatch command line."""

    def settled():
        out = subprocess.run(
            ["sacct", "-X", "-P", "-n", "--name", run, "--starttime", "now-6hours",
             "--format=JobID,State,ReqTRES,Timelimit,Partition,Account,QOS,Constraints,Comment%400,SubmitLine%2000"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        jobs = [dict(zip(FIELDS, line.split("|", len(FIELDS) - 1))) for line in out.splitlines() if line]
        for job in jobs:
            match = re.match(r"rule_(\w+?)(_wildcards_|$)", job["comment"])
            job["rule"] = match[1] if match else None
        ended = all(j["state"] not in ("PENDING", "RUNNING", "REQUEUED") and j["rule"] for j in jobs)
        return jobs if jobs and ended else None

    return wait_until(settled, f"Slurm's accounting of run {run} to settle", interval=0.5)


def untimed(frame):
    return frame.drop(columns=[c for c in ("elapsed_s",) if c in frame])


# ----------------------------------------------------------------------------- 1 and 4


EXPERIMENTS = {
    "fig2b": {"dataset": "synth", "grid": [{"architectures": ["mlp", "alexnet"]}]},
    "table4": {
        "dataset": "synth",
        "grid": [{"architectures": ["mlp"], "regularizers": ["none", "wd"], "noises": ["random_labels"]}],
    },
}


def gpu_config(experiments=EXPERIMENTS, **training):
    config = tiny_config(experiments)
    config["training"].update(device="auto", **training)  # asks Slurm for a GPU, trains where it can
    config["compute"] = {"gpus": 1}
    return config


# What the site asks of each kind of job (the local cluster's partitions, account, QoS, feature)
SITE = {
    "train": {"partition": "gpu", "account": "rethink", "qos": "rethink", "constraint": "fake"},
    "kernel": {"partition": "cpu"},
    "cpu": {"partition": "cpu", "runtime_minutes": 10, "mem_mb": 500},
}
LOCAL_RULES = {"data_download", "analysis_aggregate", "analysis_experiments", "analysis_claims", "figure", "table",
               "kernel_aggregate", "all", *EXPERIMENTS}  # fmt: skip


def place_fashion_mnist(root):
    """The raw files where torchvision keeps them, so that its download fetches nothing (no network)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in FASHION_MNIST_ROOT.glob("*.gz"):
        with gzip.open(path) as src, open(raw / path.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)


@pytest.fixture(scope="module")
def profile_run(cluster, tmp_path_factory):
    """The training grid, packed, plus a kernel row on a Fashion-MNIST subset that the workflow
    downloads (the files placed first), with the site's settings per kind of job."""
    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("slurm")
    wf = Workflow(root / "wf")
    place_fashion_mnist(root / "raw")
    config = gpu_config()
    config["compute"]["pack"] = 2  # the three mlp cells in two jobs, the AlexNet cell in one
    config["slurm"] = SITE
    config["datasets"]["fm"] = {"source": "fashion_mnist", "root": str(root / "raw"), "download": True,
                                "subset": {"train": 64, "test": 32}}  # fmt: skip
    config["kernel"] = {"rows": {"fm_raw": {"dataset": "fm", "features": "raw", "device": "cpu", "mem_mb": 1000,
                                            "runtime_minutes": 10}}}  # fmt: skip
    configfile = wf.write_config(config)
    start = time.monotonic()
    proc, run = run_slurm(wf, configfile)
    return wf, configfile, run, time.monotonic() - start, proc


def test_every_job_runs_where_its_kind_belongs_and_analysis_and_downloads_run_locally(profile_run, tmp_path):
    """Training jobs (a pack of up to 2 cells here) go to the gpu partition with one GPU, the site's
    account, QoS and constraint; data and kernel jobs to the cpu partition without a GPU; the
    download, aggregation, figures, tables and claims run in Snakemake's own process. Every
    cell's numbers equal a local run's."""
    wf, configfile, run, elapsed, _ = profile_run
    jobs = accounting(run)
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    train = [j for j in jobs if is_training_rule(j["rule"])]
    assert sorted(j["rule"] for j in train) == sorted(set(pack_rules(configfile).values())), train
    assert len(train) == 3
    for job in train:
        assert (job["partition"], job["account"], job["qos"], job["constraints"]) == ("gpu", *["rethink"] * 2, "fake")
        assert "gres/gpu=1" in job["tres"] and " --gpus=1 " in job["submit"] and "--signal=TERM@120" in job["submit"]
    others = [j for j in jobs if j not in train]
    assert {j["rule"] for j in others} == {"data_clean", "data_randomize", "kernel_row"}, others  # no local rule
    assert {j["partition"] for j in others} == {"cpu"}
    assert not any("gres/gpu" in j["tres"] or "--gpus" in j["submit"] for j in others)
    assert sum(j["rule"] == "data_clean" for j in others) == 4  # synth's and fm's two splits
    assert (wf.root / "results/data/fm/downloaded.json").is_file() and (
        wf.root / "results/kernel/fm_raw.json"
    ).is_file()
    print(
        f"\nSLURM-BENCH end-to-end {elapsed:.1f} s, {len(jobs)} sbatch submissions ({len(train)} training), run {run}"
    )

    local = Workflow(tmp_path / "local")
    local.run("--configfile", local.write_config(yaml.safe_load(configfile.read_text())), "-c2")
    ours = pd.read_csv(wf.root / "results/metrics/summary.csv")[METRIC_COLUMNS]
    theirs = pd.read_csv(local.root / "results/metrics/summary.csv")[METRIC_COLUMNS]
    pd.testing.assert_frame_equal(ours, theirs)  # CPU training is deterministic, wherever it ran


def test_rerun_after_editing_one_cell_submits_exactly_one_training_job(profile_run):
    """Resources are no rerun trigger: the site's GPU request style changed here (a GPU model,
    --gpus=fake:1) retrains nothing but the edited cell, whose job asks that way."""
    wf, configfile, _, _, _ = profile_run
    config = yaml.safe_load(configfile.read_text())
    config["slurm"]["train"]["gpu_model"] = "fake"
    config["experiments"]["table4"]["grid"] = [
        {"architectures": ["mlp"], "regularizers": ["none"], "noises": ["random_labels"]},
        {"architectures": ["mlp"], "regularizers": ["wd"], "noises": ["random_labels"], "overrides": {"lr": 0.02}},
    ]
    configfile.write_text(yaml.safe_dump(config))
    _, run = run_slurm(wf, configfile)
    train = [j for j in accounting(run) if is_training_rule(j["rule"])]
    assert [j["rule"] for j in train] == [pack_rules(configfile)["synth/mlp/wd/random_labels/s0"]], train
    assert train[0]["partition"] == "gpu" and " --gpus=fake:1" in train[0]["submit"], train
    assert "gres/gpu:fake=1" in train[0]["tres"] and "--gres" not in train[0]["submit"]
    cell = json.loads((wf.root / "results/cells/synth/mlp/wd/random_labels/s0/cell.json").read_text())
    assert cell["hparams"]["lr"] == 0.02


# ----------------------------------------------------------------------------- 2: killed jobs resume


def resume_config(runtime_minutes=10, seeds=(0,), pack=1):
    """A cell (per seed) that trains a few seconds (a wide MLP on 1,000 random-labelled 1x28x28
    images, 8 epochs). The interruption tests freeze its first attempt (freeze_first_attempt),
    so its length does not decide whether a signal comes in time."""
    config = gpu_config(
        {
            "long": {
                "dataset": "synth",
                "seeds": list(seeds),
                "grid": [{"architectures": ["big"], "noises": ["random_labels"]}],
            }
        },
        max_epochs=8,
        crop_size=28,
        fit_threshold=1.0,
    )
    config["compute"]["pack"] = pack
    config["datasets"]["synth"]["synthetic"].update(n_train=1000, n_test=200, shape=[1, 28, 28])
    config["architectures"]["big"] = {
        "model": "mlp_3x512",
        "width": 1.0,
        "runtime_minutes": runtime_minutes,
        "mem_mb": 1500,
    }
    return config


CELLS = {seed: f"results/cells/synth/big/none/random_labels/s{seed}" for seed in (0, 1)}
CELL = CELLS[0]
TRAINED = f"{CELL}/summary.json"  # the target: only training goes through Slurm, nothing after it


def cell_results(wf, seed=0):
    cell = wf.root / CELLS[seed]
    return pd.read_csv(cell / "history.csv"), json.loads((cell / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    """The cells (seeds 0 and 1) trained locally without interruption, {seed: (history, summary)}:
    what a resumed run must equal."""
    wf = Workflow(tmp_path_factory.mktemp("reference") / "wf")
    wf.run(
        "--configfile",
        wf.write_config(resume_config(seeds=(0, 1))),
        "-c2",
        *(f"{cell}/summary.json" for cell in CELLS.values()),
    )
    return {seed: cell_results(wf, seed) for seed in CELLS}


def start_slurm(wf, configfile, tmp_path):
    """The run training the cell, in the background -> (process, its log)."""
    log = tmp_path / "snakemake.log"
    command = [sys.executable, "-m", "snakemake", *slurm_command(configfile, TRAINED)]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=wf.root, env=wf.user_env(wf.root / "home"), stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    return proc, log


def assert_resumed_identically(wf, reference, seeds=(0,)):
    for seed in seeds:
        history, summary = cell_results(wf, seed)
        pd.testing.assert_frame_equal(untimed(history), untimed(reference[seed][0]))
        for key in ("final_train_acc", "final_test_acc", "final_train_loss", "steps", "param_norm", "stop_reason"):
            assert summary[key] == reference[seed][1][key], key
        log = (wf.root / CELLS[seed] / "train.log").read_text()
        assert "checkpoint saved" in log and re.search(r"resume from .* at epoch \d+ step \d+", log), log
    assert not list((wf.root / "results").rglob("*.tmp*"))
    states = [torch.load(p, weights_only=True) for p in (wf.root / "results").rglob("*.pt")]
    assert len(states) == len(seeds) and all(state["finished"] for state in states)  # what stays


# Slurm ends a job by SIGTERM (scancel at once; a time limit when slurmctld next checks, every
# 30 s: a 1-minute job 60-90 s after it starts). Whether the first attempt is still training then
# would depend on the machine's pace; the tests take pace out of it: once that attempt has
# trained an epoch, the test freezes its trainer (SIGSTOP), so it cannot finish however fast the
# machine, and wakes it (SIGCONT) the moment Slurm's SIGTERM is pending on it: it saves a
# checkpoint and exits, as a running trainer does. (Left stopped, it would be hung up, SIGHUP,
# within a second: the job's Snakemake exits on that SIGTERM and orphans its process group.) The
# retry trains the rest.


def training_job(run):
    """The Slurm id of the run's training job in the queue, None when there is none."""
    queue = subprocess.run(["squeue", "-h", "--name", run, "-o", "%i|%k"], capture_output=True, text=True).stdout
    training = [line.split("|")[0] for line in queue.split() if re.search(r"rule_train(_wildcards_|_\w+_p\d{3})", line)]
    assert len(training) <= 1, queue
    return training[0] if training else None


def trainer_pid(job):
    """The trainer's process in a running Slurm job (`scontrol listpids`), None when there is none."""
    listing = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True).stdout
    for pid in [line.split()[0] for line in listing.splitlines()[1:]]:
        try:
            if b"rethink.train" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return int(pid)
        except OSError:  # ended since the listing
            pass
    return None


def freeze_attempt(wf, proc, log, cancel, seen=()):
    """Freeze the trainer of the run's next training job (one not in `seen`) once it has trained
    an epoch; cancel the job (`scancel`) or let Slurm signal it (its time limit, or --signal
    before it); wake the trainer when Slurm's SIGTERM is pending on it.
    -> (run id, the job's id, the epoch the trainer was frozen after)."""
    train_log = wf.root / CELL / "train.log"
    waiting = dict(proc=proc, details=log.read_text)  # a failure shows Snakemake's log
    run = wait_until(lambda: log_match(log, r"SLURM run ID: (\S+)"), "Snakemake's run ID", **waiting)[1]
    job = wait_until(lambda: (job := training_job(run)) not in seen and job, "a training job in the queue",
                     interval=0.1, **waiting)  # fmt: skip
    before = len(train_log.read_text()) if train_log.exists() else 0  # earlier attempts' lines
    pid = wait_until(lambda: trainer_pid(job), f"the trainer of Slurm job {job}", interval=0.05, **waiting)
    # lines of training progress (not "resume from ... at epoch N"); epoch 0 is the untrained network
    progress = r"\d:\d\d epoch +([1-9]\d*) step"

    def trained():  # (train.log appears once the trainer has started)
        return train_log.is_file() and re.search(progress, train_log.read_text()[before:])

    wait_until(trained, f"an epoch of job {job}", interval=0.002, **waiting)
    try:
        freeze([pid], proc)
        frozen_at = int(re.findall(progress, train_log.read_text()[before:])[-1])
        if cancel:
            subprocess.run(["scancel", job], check=True)
        # polled closely: the hang-up follows the SIGTERM within a second
        wait_until(lambda: sigterm_pending(pid) is not False, f"Slurm's SIGTERM to the trainer of job {job}",
                   interval=0.002, **waiting)  # fmt: skip
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return run, job, frozen_at


def stop(proc):
    """Snakemake in the background, stopped if a test failed before it ended (it cancels its jobs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=PATIENCE_S)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_cancelled_pack_job_is_retried_and_resumes_every_cell_from_its_checkpoint(cluster, uninterrupted, tmp_path):
    """The site here asks for GPUs by gres with a model, and CPUs per GPU."""
    wf = Workflow(tmp_path / "wf")
    config = resume_config(seeds=(0, 1), pack=2)  # one job, two cells
    config["slurm"] = {"train": {"partition": "gpu", "gpu_request": "gres", "gpu_model": "fake", "cpus_per_gpu": 2}}
    configfile = wf.write_config(config)
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    proc, log = start_slurm(wf, configfile, tmp_path)
    try:
        run, _, _ = freeze_attempt(wf, proc, log, cancel=True)
        assert proc.wait(timeout=PATIENCE_S) == 0, log.read_text()
    finally:
        stop(proc)
    training = [j for j in accounting(run) if is_training_rule(j["rule"])]
    states = [j["state"] for j in training]
    assert states[0].startswith("CANCELLED") and states[-1] == "COMPLETED" and len(states) == 2, states
    for job in training:
        assert job["partition"] == "gpu" and "gres/gpu:fake=1" in job["tres"], job
        assert " --gres=gpu:fake:1" in job["submit"] and "--gpus" not in job["submit"], job
        assert "--cpus-per-gpu=2" in job["submit"] and "--cpus-per-task" not in job["submit"], job
    assert_resumed_identically(wf, uninterrupted, seeds=(0, 1))


def assert_resumed_where_it_stopped(wf, frozen_at):
    """Every resume starts from a checkpoint a signal saved; the frozen attempts (in order) saved
    after the epoch they were frozen at."""
    train_log = (wf.root / CELL / "train.log").read_text()
    saved = re.findall(r"SIGTERM: checkpoint saved at epoch (\d+) step (\d+)", train_log)
    resumed = re.findall(r"resume from .* at epoch (\d+) step (\d+)", train_log)
    assert len(saved) >= len(frozen_at) and resumed and set(resumed) <= set(saved), train_log
    assert all(int(epoch) >= frozen for (epoch, _), frozen in zip(saved, frozen_at)), (frozen_at, saved)


def test_a_job_that_hits_its_time_limit_is_retried_with_more_time_and_resumes(cluster, uninterrupted, tmp_path):
    """Without a warning signal (signal_minutes 0), Slurm's SIGTERM at the time limit."""
    wf = Workflow(tmp_path / "wf")
    config = resume_config(runtime_minutes=1)
    config["compute"]["signal_minutes"] = 0
    configfile = wf.write_config(config)
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    proc, log = start_slurm(wf, configfile, tmp_path)
    try:
        run, _, frozen_at = freeze_attempt(wf, proc, log, cancel=False)
        assert proc.wait(timeout=PATIENCE_S) == 0, log.read_text()
    finally:
        stop(proc)
    training = [j for j in accounting(run) if is_training_rule(j["rule"])]
    states, limits = [j["state"] for j in training], [j["timelimit"] for j in training]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", states
    assert limits[:2] == ["00:01:00", "00:02:00"], limits  # each retry asks for more time
    assert_resumed_identically(wf, uninterrupted)
    assert_resumed_where_it_stopped(wf, [frozen_at])


def chain_config():
    """A cell estimated at 3 minutes (about a minute of training here) under a cap of 1 minute:
    Slurm signals each job 6 s before its limit, so a chain of up to ceil(3 / (1 - 0.1 - 0.5)) = 8 jobs."""
    config = resume_config(runtime_minutes=3)
    config["training"]["max_epochs"] = 40
    config["datasets"]["synth"]["synthetic"]["n_train"] = 3000
    config["compute"].update(max_runtime_minutes=1, signal_minutes=0.1)
    return config


def test_a_cell_longer_than_the_cap_trains_as_a_chain_of_signalled_jobs_bit_identically(cluster, tmp_path):
    """No job asks for more than the cap; Slurm signals each before its limit, the trainer saves
    and exits, the next job of the chain resumes. The first two jobs are frozen after an epoch
    until their signal (so at least three jobs, however fast the machine); the rest trains as it
    comes, each job for the time it gets. The cell equals one trained without interruption."""
    reference = Workflow(tmp_path / "reference")
    reference.run("--configfile", reference.write_config(chain_config()), "-c2", TRAINED)
    wf = Workflow(tmp_path / "wf")
    configfile = wf.write_config(chain_config())
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    proc, log = start_slurm(wf, configfile, tmp_path)
    try:
        seen, frozen_at = [], []
        for _ in range(2):
            run, job, epoch = freeze_attempt(wf, proc, log, cancel=False, seen=seen)
            seen.append(job)
            frozen_at.append(epoch)
        assert proc.wait(timeout=PATIENCE_S) == 0, log.read_text()
    finally:
        stop(proc)
    training = [j for j in accounting(run) if is_training_rule(j["rule"])]
    states = [j["state"] for j in training]
    assert len(training) >= 3 and states[-1] == "COMPLETED" and set(states[:-1]) == {"FAILED"}, states
    assert {j["timelimit"] for j in training} == {"00:01:00"}  # never above the cap
    assert all("--signal=TERM@6" in j["submit"] for j in training)
    print(f"\nSLURM-BENCH chain: {len(training)} jobs, states {states}, run {run}")
    assert_resumed_identically(wf, {0: cell_results(reference)})
    assert_resumed_where_it_stopped(wf, frozen_at)


# ----------------------------------------------------------------------------- 3: a failing cell


def test_a_failing_cell_fails_alone_with_its_log_naming_the_cause(cluster, tmp_path):
    wf = Workflow(tmp_path / "wf")
    configfile = wf.write_config(gpu_config({"table4": EXPERIMENTS["table4"], "fig2b": EXPERIMENTS["fig2b"]}))
    wf.run("--configfile", configfile, "-c2", "data_shards")
    shard = wf.root / "results/data/synth/random_labels/s0/train-00000.h5"
    shard.write_bytes(b"this is not HDF5 any more")  # newer than its inputs: Snakemake keeps it
    proc, run = run_slurm(wf, configfile, "--retries", "0", check=False)
    assert proc.returncode != 0
    jobs = accounting(run)
    failed = [j for j in jobs if j["state"] == "FAILED"]
    rules = pack_rules(configfile)
    readers = {rules[c] for c in ("synth/mlp/none/random_labels/s0", "synth/mlp/wd/random_labels/s0")}
    assert len(failed) == 2 and {j["rule"] for j in failed} == readers, jobs
    done = [j for j in jobs if is_training_rule(j["rule"]) and j["state"] == "COMPLETED"]
    assert len(done) == 2  # the independent cells finished (keep-going)
    failing = dict(dataset="synth", arch="mlp", regularizer="wd", noise="random_labels", seed=0)
    log = (wf.root / paths.TRAIN_LOG.format(**failing)).read_text()
    assert f"{shard.relative_to(wf.root)}: not a readable HDF5 shard" in log and log.count("\n") == 1, log
    assert (wf.root / "results/cells/synth/alexnet/none/true_labels/s0/summary.json").exists()
    assert not (wf.root / "results/cells/synth/mlp/wd/random_labels/s0/summary.json").exists()
