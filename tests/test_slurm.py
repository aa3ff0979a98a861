"""The pipeline on a real Slurm (scripts/local-slurm.sh: slurmctld, slurmd, slurmdbd, munge and
MariaDB on loopback, fake GPUs), through the literal user command `snakemake --profile slurm`.

Skipped, with the reason, where the cluster cannot be started (not root, no apt-get).
"""

import contextlib
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

from conftest import REPO, Workflow, is_training_rule, pack_rules, tiny_config

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


@pytest.fixture(scope="module")
def profile_run(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    wf, home = Workflow(root / "wf"), root / "home"
    config = gpu_config()
    config["compute"]["pack"] = 2  # the three mlp cells in two jobs, the AlexNet cell in one
    configfile = wf.write_config(config)
    install_profile(home, configfile)
    start = time.monotonic()
    proc, run = run_profile(wf, home)
    return wf, home, configfile, run, time.monotonic() - start, proc


def test_the_user_command_runs_every_job_through_sbatch_with_one_gpu_per_pack(profile_run, tmp_path):
    """Each training job (a pack of up to 2 cells here) is one sbatch job asking for one GPU, and
    every cell's numbers equal a local run's."""
    wf, _, configfile, run, elapsed, _ = profile_run
    jobs = accounting(run)
    train = [j for j in jobs if is_training_rule(j["rule"])]
    assert sorted(j["rule"] for j in train) == sorted(set(pack_rules(configfile).values())), train
    assert len(train) == 3 and all(j["state"] == "COMPLETED" for j in jobs), jobs
    assert all("gres/gpu=1" in j["tres"] for j in train), [j["tres"] for j in train]
    assert not any("gres/gpu" in j["tres"] for j in jobs if j not in train)  # data jobs ask for none
    submitted = {j["rule"] for j in jobs}
    assert {"data_clean", "data_randomize", "analysis_aggregate"} <= submitted
    print(
        f"\nSLURM-BENCH end-to-end {elapsed:.1f} s, {len(jobs)} sbatch submissions ({len(train)} training), run {run}"
    )

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


def long_cell_config(runtime_minutes=10, n_train=12000, max_epochs=33, seeds=(0,), pack=1):
    """A cell (per seed) that trains for a while (a wide MLP on random-labelled 1x28x28 images);
    the plugin's status checks slow down the longer a job runs, so shorter tests use fewer samples."""
    config = gpu_config(
        {
            "long": {
                "dataset": "synth",
                "seeds": list(seeds),
                "grid": [{"architectures": ["big"], "noises": ["random_labels"]}],
            }
        },
        max_epochs=max_epochs,
        crop_size=28,
        checkpoint_minutes=0.02,
        fit_threshold=1.0,
    )
    config["compute"]["pack"] = pack
    config["datasets"]["synth"]["synthetic"].update(n_train=n_train, n_test=200, shape=[1, 28, 28])
    config["architectures"]["big"] = {
        "model": "mlp_3x512",
        "width": 1.0,
        "runtime_minutes": runtime_minutes,
        "mem_mb": 1500,
    }
    return config


SHORT = {"n_train": 4000, "max_epochs": 60}  # fits in ~26 epochs, ~25 s
CELLS = {seed: f"results/cells/synth/big/none/random_labels/s{seed}" for seed in (0, 1)}
CELL = CELLS[0]
TRAINED = f"{CELL}/summary.json"  # the target: only training goes through Slurm, nothing after it


def cell_results(wf, seed=0):
    cell = wf.root / CELLS[seed]
    return pd.read_csv(cell / "history.csv"), json.loads((cell / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted_short(cluster, tmp_path_factory):
    """The cells (seeds 0 and 1) trained locally without interruption, {seed: (history, summary)}:
    what a resumed run must equal."""
    wf = Workflow(tmp_path_factory.mktemp("reference") / "wf")
    wf.run(
        "--configfile",
        wf.write_config(long_cell_config(seeds=(0, 1), **SHORT)),
        "-c2",
        *(f"{cell}/summary.json" for cell in CELLS.values()),
    )
    return {seed: cell_results(wf, seed) for seed in CELLS}


def start_profile(wf, home, tmp_path):
    """`snakemake --profile slurm` training the cell, in the background -> (process, its log)."""
    log = tmp_path / "snakemake.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "slurm", TRAINED], cwd=wf.root,
                                env=wf.user_env(home), stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
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


def test_a_cancelled_pack_job_is_retried_and_resumes_every_cell_from_its_checkpoint(
    cluster, uninterrupted_short, tmp_path
):
    wf, home = Workflow(tmp_path / "wf"), tmp_path / "home"
    configfile = wf.write_config(long_cell_config(seeds=(0, 1), pack=2, **SHORT))  # one job, two cells
    install_profile(home, configfile)
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    proc, _ = start_profile(wf, home, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not list((wf.root / "results/checkpoints").rglob("*.pt")):  # training, checkpointed once
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "snakemake.log").read_text()
            time.sleep(0.5)
        run = run_id((tmp_path / "snakemake.log").read_text())
        job = training_job(run)
        assert job is not None
        subprocess.run(["scancel", job], check=True)
        assert proc.wait(timeout=600) == 0, (tmp_path / "snakemake.log").read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    states = [j["state"] for j in accounting(run) if is_training_rule(j["rule"])]
    assert states[0].startswith("CANCELLED") and states[-1] == "COMPLETED" and len(states) == 2, states
    assert_resumed_identically(wf, uninterrupted_short, seeds=(0, 1))


# Slurm signals a job over its limit when slurmctld next checks (every 30 s), so a 1-minute job
# gets its SIGTERM 60-95 s after it starts; how far a cell trains by then depends on how fast and
# how loaded the machine is. The test takes speed out of the outcome: once the first attempt has
# trained half the cell's epochs, the test freezes its trainer (SIGSTOP), so that attempt cannot
# finish however fast the machine, and wakes it (SIGCONT) the moment Slurm's SIGTERM reaches it at
# the limit: it saves a checkpoint and exits, as a running trainer does. (Slurm would not wake it:
# once the job's Snakemake exits on that SIGTERM, the stopped trainer's process group is orphaned
# and the kernel hangs it up, SIGHUP, before it can save.) The retry then has only the other half
# to train, in 2 minutes (a third attempt in 3): that holds on a machine several times slower than
# this one. On one so slow that the limit comes before the halfway point, the limit interrupts the
# first attempt without the test's help.


def training_job(run):
    """The Slurm id of the run's training job in the queue, None when there is none."""
    queue = subprocess.run(["squeue", "-h", "--name", run, "-o", "%i|%k"], capture_output=True, text=True).stdout
    training = [line.split("|")[0] for line in queue.split() if re.search(r"rule_train_\w+_p\d{3}", line)]
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


def sigterm_pending(pid):
    """Whether a SIGTERM waits on the process (its /proc status masks); None once it has ended."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask >> (signal.SIGTERM - 1) & 1 for mask in masks)


def freeze_first_attempt_until_its_limit(wf, proc, log, epochs):
    """Once the first training job has trained `epochs` epochs, stop its trainer (SIGSTOP) and
    continue it when Slurm's SIGTERM is pending. Returns the epoch it was frozen after, None when
    the job reached its limit first."""
    train_log, first_job, deadline = wf.root / CELL / "train.log", None, time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        if first_job is None and "SLURM run ID" in log.read_text():
            first_job = training_job(run_id(log.read_text()))  # a retry comes only after it ended
        text = train_log.read_text() if train_log.exists() else ""
        if "resume from" in text:
            return None
        trained = re.findall(r"\d:\d\d epoch +(\d+) step", text)
        if first_job is not None and trained and int(trained[-1]) >= epochs:
            break
        time.sleep(0.2)
    state = subprocess.run(["squeue", "-h", "-j", first_job, "-o", "%T"], capture_output=True, text=True).stdout
    pid = trainer_pid(first_job) if state.strip() == "RUNNING" else None
    if pid is None:
        return None
    os.kill(pid, signal.SIGSTOP)
    try:
        while sigterm_pending(pid) is False:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.002)  # the hang-up follows the SIGTERM within a second
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return int(trained[-1])


def test_a_job_that_hits_its_time_limit_is_retried_with_more_time_and_resumes(cluster, uninterrupted_short, tmp_path):
    wf, home = Workflow(tmp_path / "wf"), tmp_path / "home"
    configfile = wf.write_config(long_cell_config(runtime_minutes=1, **SHORT))
    install_profile(home, configfile)
    wf.run("--configfile", configfile, "-c2", "data_shards")  # the data is not what is tested here
    proc, log = start_profile(wf, home, tmp_path)
    try:
        frozen_at = freeze_first_attempt_until_its_limit(wf, proc, log, uninterrupted_short[0][1]["epochs"] // 2)
        assert proc.wait(timeout=600) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Snakemake cancels its jobs
            proc.wait(timeout=60)
    run = run_id(log.read_text())
    training = [j for j in accounting(run) if is_training_rule(j["rule"])]
    states, limits = [j["state"] for j in training], [j["timelimit"] for j in training]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", states
    assert limits[:2] == ["00:01:00", "00:02:00"], limits  # each retry asks for more time
    assert_resumed_identically(wf, uninterrupted_short)
    train_log = (wf.root / CELL / "train.log").read_text()
    saved = re.findall(r"SIGTERM: checkpoint saved at epoch (\d+) step (\d+)", train_log)
    resumed = re.findall(r"resume from .* at epoch (\d+) step (\d+)", train_log)
    assert saved and resumed and resumed[0] == saved[0], train_log  # from where the time limit stopped it
    assert int(resumed[0][0]) >= (frozen_at or 1), (frozen_at, resumed)
    print(
        f"\nSLURM-BENCH time limit: first attempt frozen after epoch {frozen_at} (None: not frozen) of "
        f"{uninterrupted_short[0][1]['epochs']}; attempts {', '.join(states)}"
    )


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
