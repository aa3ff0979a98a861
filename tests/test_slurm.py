"""The pipeline on a real Slurm (scripts/local-slurm.sh: slurmctld, slurmd, slurmdbd, munge and
MariaDB on loopback, fake GPUs), through the literal user command `snakemake --profile slurm`.

Skipped, with the reason, where the cluster cannot be started (not root, no apt-get).
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import REPO, Workflow, is_training_rule, pack_rules, tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
SCRIPT = REPO / "scripts" / "local-slurm.sh"
METRIC_COLUMNS = ["cell", "final_train_acc", "final_test_acc", "final_train_loss", "best_test_acc",
                  "steps_to_fit", "steps", "stop_reason", "n_params"]


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
    was_up = subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0 if shutil.which("scontrol") else False
    proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    yield
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def install_profile(home, configfile, **extra):
    """Our reference profile as the user's `slurm` profile, pointed at a tiny config, with fast
    status checks (the profile's own settings, as a user would adapt them)."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile.update({
        "configfile": [str(configfile)], "jobs": 8, "latency-wait": 5,
        "slurm-init-seconds-before-status-checks": 1,
        "default-resources": {"slurm_partition": "gpu", "runtime": 10, "mem_mb": 500, "cpus_per_task": 1},
        **extra,
    })  # fmt: skip
    path = home / ".config" / "snakemake" / "slurm" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile))


def run_profile(wf, home, *args, check=True, timeout=900):
    proc = wf.run("--profile", "slurm", *args, env=wf.user_env(home), check=check, timeout=timeout)
    return proc, run_id(proc.stdout + proc.stderr)


def run_id(output):
    return re.search(r"SLURM run ID: (\S+)", output)[1]


def accounting(run, expected=None, timeout=60):
    """Slurm's own records of a run's jobs: id, state, requested TRES, time limit, rule (from
    the comment)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-P", "-n", "--name", run, "--starttime", "now-6hours",
             "--format=JobID,State,ReqTRES,Timelimit,Comment%400"], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        fields = ("id", "state", "tres", "timelimit", "comment")
        jobs = [dict(zip(fields, line.split("|", 4))) for line in out.splitlines() if line]
        for job in jobs:  # the comment reaches accounting when the job ends
            match = re.match(r"rule_(\w+?)(_wildcards_|$)", job["comment"])
            job["rule"] = match[1] if match else None
        settled = all(j["state"] not in ("PENDING", "RUNNING", "REQUEUED") for j in jobs)
        if (expected is None or len(jobs) >= expected) and settled or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def untimed(frame):
    return frame.drop(columns=[c for c in ("elapsed_s",) if c in frame])


# ----------------------------------------------------------------------------- 1 and 4


EXPERIMENTS = {
    "fig2b": {"dataset": "synth", "grid": [{"architectures": ["mlp", "alexnet"]}]},
    "table4": {"dataset": "synth", "grid": [{"architectures": ["mlp"], "regularizers": ["none", "wd"],
                                              "noises": ["random_labels"]}]},
}


def gpu_config(experiments=EXPERIMENTS, **training):
    config = tiny_config(experiments)
    config["training"].update(device="auto", **training)  # asks Slurm for a GPU, trains where it can
    config["compute"] = {"gpus": 1}
    return config


@pytest.fixture(scope="module")
def profile_run(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    wf, home = Workflow(root / "wf"), root / "home"
    configfile = wf.write_config(gpu_config())
    install_profile(home, configfile)
    start = time.monotonic()
    proc, run = run_profile(wf, home)
    return wf, home, configfile, run, time.monotonic() - start, proc


def test_the_user_command_runs_every_job_through_sbatch_with_one_gpu_per_cell(profile_run, tmp_path):
    wf, _, configfile, run, elapsed, _ = profile_run
    jobs = accounting(run)
    train = [j for j in jobs if is_training_rule(j["rule"])]
    assert len(train) == 4 and all(j["state"] == "COMPLETED" for j in jobs), jobs
    assert all("gres/gpu=1" in j["tres"] for j in train), [j["tres"] for j in train]
    assert not any("gres/gpu" in j["tres"] for j in jobs if j not in train)  # data jobs ask for none
    submitted = {j["rule"] for j in jobs}
    assert {"data_clean", "data_randomize", "analysis_aggregate"} <= submitted
    print(f"\nSLURM-BENCH end-to-end {elapsed:.1f} s, {len(jobs)} sbatch submissions "
          f"({len(train)} training), run {run}")

    local = Workflow(tmp_path / "local")
    local.run("--configfile", local.write_config(yaml.safe_load(configfile.read_text())), "-c2")
    ours = pd.read_csv(wf.root / "results/metrics/summary.csv")[METRIC_COLUMNS]
    theirs = pd.read_csv(local.root / "results/metrics/summary.csv")[METRIC_COLUMNS]
    pd.testing.assert_frame_equal(ours, theirs)  # CPU training is deterministic, wherever it ran


def test_rerun_after_editing_one_cell_submits_exactly_one_training_job(profile_run):
    wf, home, configfile, _, _, _ = profile_run
    config = yaml.safe_load(configfile.read_text())
    config["experiments"]["table4"]["grid"] = [
        {"architectures": ["mlp"], "regularizers": ["none"], "noises": ["random_labels"]},
        {"architectures": ["mlp"], "regularizers": ["wd"], "noises": ["random_labels"], "overrides": {"lr": 0.02}},
    ]
    configfile.write_text(yaml.safe_dump(config))
    _, run = run_profile(wf, home)
    train = [j for j in accounting(run) if is_training_rule(j["rule"])]
    assert [j["rule"] for j in train] == [pack_rules(configfile)["synth/mlp/wd/random_labels/s0"]], train
    cell = json.loads((wf.root / "results/cells/synth/mlp/wd/random_labels/s0/cell.json").read_text())
    assert cell["hparams"]["lr"] == 0.02


# ----------------------------------------------------------------------------- 2: killed jobs resume


def long_cell_config(runtime_minutes=10, n_train=12000, max_epochs=33, lr=0.01):
    """One cell that trains for a while (a wide MLP on random-labelled 1x28x28 images); the
    plugin's status checks slow down the longer a job runs, so shorter tests use fewer samples."""
    config = gpu_config({"long": {"dataset": "synth", "grid": [{"architectures": ["big"], "noises": ["random_labels"]}]}},
                        max_epochs=max_epochs, crop_size=28, checkpoint_minutes=0.02, fit_threshold=1.0, lr=lr)
    config["datasets"]["synth"]["synthetic"].update(n_train=n_train, n_test=200, shape=[1, 28, 28])
    config["architectures"]["big"] = {"model": "mlp_3x512", "width": 1.0, "runtime_minutes": runtime_minutes, "mem_mb": 1500}
    return config


SHORT = {"n_train": 4000, "max_epochs": 60}  # fits in ~26 epochs, ~25 s

# Slurm signals a job over its limit when slurmctld next checks (every 30 s), so a 1-minute job
# gets its SIGTERM 60-95 s after it starts. A cell that trains this long on the machine running
# the tests is always interrupted, and its rest fits the retry's 2 minutes.
TIMED_OUT_TRAINING_S = 140
SLOW = {"lr": 0.001}  # far too small to memorise the labels: the cell runs all its epochs
CELL = "results/cells/synth/big/none/random_labels/s0"
TRAINED = f"{CELL}/summary.json"  # the target: only training goes through Slurm, nothing after it


def cell_results(wf):
    cell = wf.root / CELL
    return pd.read_csv(cell / "history.csv"), json.loads((cell / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted_short(cluster, tmp_path_factory):
    """The cell trained locally without interruption: what a resumed run must equal."""
    wf = Workflow(tmp_path_factory.mktemp("reference") / "wf")
    wf.run("--configfile", wf.write_config(long_cell_config(**SHORT)), "-c2", TRAINED)
    return cell_results(wf)


@pytest.fixture(scope="module")
def sized_long_cell(cluster, tmp_path_factory):
    """A cell sized to this machine's speed, which a 3-epoch probe measures: its config, and a
    workflow with its data built to train the uninterrupted reference in."""
    wf = Workflow(tmp_path_factory.mktemp("reference") / "wf")
    wf.run("--configfile", wf.write_config(long_cell_config(max_epochs=3, **SLOW)), "-c1")
    probe, _ = cell_results(wf)
    seconds_per_epoch = (probe["elapsed_s"].iloc[-1] - probe["elapsed_s"].iloc[0]) / probe["epoch"].iloc[-1]
    return long_cell_config(max_epochs=math.ceil(TIMED_OUT_TRAINING_S / seconds_per_epoch), **SLOW), wf


def assert_resumed_identically(wf, reference):
    history, summary = cell_results(wf)
    pd.testing.assert_frame_equal(untimed(history), untimed(reference[0]))
    for key in ("final_train_acc", "final_test_acc", "final_train_loss", "steps", "param_norm", "stop_reason"):
        assert summary[key] == reference[1][key], key
    log = (wf.root / CELL / "train.log").read_text()
    assert "checkpoint saved" in log and re.search(r"resume from .* at epoch \d+ step \d+", log), log
    assert not list((wf.root / "results").rglob("*.tmp*")) and not list((wf.root / "results").rglob("*.pt"))


def test_a_cancelled_training_job_is_retried_and_resumes_from_its_checkpoint(cluster, uninterrupted_short, tmp_path):
    wf, home = Workflow(tmp_path / "wf"), tmp_path / "home"
    configfile = wf.write_config(long_cell_config(**SHORT))
    install_profile(home, configfile)
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    out = open(tmp_path / "snakemake.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "slurm", TRAINED], cwd=wf.root, env=wf.user_env(home),
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list((wf.root / "results/checkpoints").rglob("*.pt")):  # training, checkpointed once
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "snakemake.log").read_text()
            time.sleep(0.5)
        run = run_id((tmp_path / "snakemake.log").read_text())
        queue = subprocess.run(["squeue", "-h", "--name", run, "-o", "%i|%k"], capture_output=True, text=True).stdout
        training = [line.split("|")[0] for line in queue.split() if re.search(r"rule_train_\w+_p\d{3}", line)]
        assert len(training) == 1, queue
        subprocess.run(["scancel", training[0]], check=True)
        assert proc.wait(timeout=600) == 0, (tmp_path / "snakemake.log").read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    states = [j["state"] for j in accounting(run) if is_training_rule(j["rule"])]
    assert states[0].startswith("CANCELLED") and states[-1] == "COMPLETED" and len(states) == 2, states
    assert_resumed_identically(wf, uninterrupted_short)


def test_a_job_that_hits_its_time_limit_is_retried_with_more_time_and_resumes(cluster, sized_long_cell, tmp_path):
    config, reference_wf = sized_long_cell
    config["architectures"]["big"]["runtime_minutes"] = 1
    wf, home = Workflow(tmp_path / "wf"), tmp_path / "home"
    configfile = wf.write_config(config)
    install_profile(home, configfile)
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    # training is single-threaded: the uninterrupted reference runs beside the cluster's job
    with open(tmp_path / "reference.log", "w") as log:
        reference = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--configfile", reference_wf.write_config(config), "-c1", TRAINED],
            cwd=reference_wf.root, env=reference_wf.env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            _, run = run_profile(wf, home, TRAINED, timeout=900)
        finally:
            assert reference.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()
    training = [j for j in accounting(run) if is_training_rule(j["rule"])]
    states, limits = [j["state"] for j in training], [j["timelimit"] for j in training]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", states
    assert limits[:2] == ["00:01:00", "00:02:00"], limits  # each retry asks for more time
    reference = cell_results(reference_wf)
    assert reference[1]["stop_reason"] == "max_epochs", reference[1]  # it never stops early
    assert_resumed_identically(wf, reference)


# ----------------------------------------------------------------------------- 3: a failing cell


def test_a_failing_cell_fails_alone_with_its_log_naming_the_cause(cluster, tmp_path):
    wf, home = Workflow(tmp_path / "wf"), tmp_path / "home"
    configfile = wf.write_config(gpu_config({"table4": EXPERIMENTS["table4"], "fig2b": EXPERIMENTS["fig2b"]}))
    install_profile(home, configfile, retries=0)
    wf.run("--configfile", configfile, "-c2", "data_shards")
    shard = wf.root / "results/data/synth/random_labels/s0/train-00000.h5"
    shard.write_bytes(b"this is not HDF5 any more")  # newer than its inputs: Snakemake keeps it
    proc, run = run_profile(wf, home, check=False)
    assert proc.returncode != 0
    jobs = accounting(run)
    failed = [j for j in jobs if j["state"] == "FAILED"]
    rules = pack_rules(configfile)
    readers = {rules[c] for c in ("synth/mlp/none/random_labels/s0", "synth/mlp/wd/random_labels/s0")}
    assert len(failed) == 2 and {j["rule"] for j in failed} == readers, jobs
    done = [j for j in jobs if is_training_rule(j["rule"]) and j["state"] == "COMPLETED"]
    assert len(done) == 2  # the independent cells finished (keep-going)
    log = (wf.root / f"results/logs/train/{rules['synth/mlp/wd/random_labels/s0']}.log").read_text()
    assert f"{shard.relative_to(wf.root)}: not a readable HDF5 shard" in log and log.count("\n") == 1, log
    assert (wf.root / "results/cells/synth/alexnet/none/true_labels/s0/summary.json").exists()
    assert not (wf.root / "results/cells/synth/mlp/wd/random_labels/s0/summary.json").exists()
