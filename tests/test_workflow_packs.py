"""Packs and interruptions through the real snakemake CLI: compute.pack cells share one job and
equal a job per cell; editing one packed cell retrains only it; SIGINT and SIGKILL of snakemake
lose no finished or saved work."""

import json
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest

from conftest import CELLS, CONFIG, PATIENCE_S, Workflow, log_match, pack_rules, tiny_config, wait_until

pytestmark = pytest.mark.workflow
AGGREGATE = "results/metrics/summary.csv"
SLOW_CELL = "results/cells/synth/mlp/none/random_labels/s0"
METRICS = [
    "cell",
    "final_train_loss",
    "final_train_acc",
    "final_test_acc",
    "final_train_avg_loss",
    "best_test_acc",
    "steps",
    "stop_reason",
]


def packed(size):
    config = json.loads(json.dumps(CONFIG))
    config["compute"] = {"pack": size}
    return config


@pytest.fixture(scope="module")
def pack_run(tmp_path_factory):
    wf = Workflow(tmp_path_factory.mktemp("packs") / "wf")
    configfile = wf.write_config(packed(2))
    proc = wf.run(AGGREGATE, "--configfile", configfile, "-c2")  # training and metrics; no reports
    return wf, configfile, proc


def test_a_pack_is_one_job_and_its_cells_equal_a_job_per_cell(pack_run, finished):
    wf, configfile, proc = pack_run
    rules = pack_rules(configfile)
    # the three mlp cells: two in one pack, the third alone; the AlexNet cell alone
    assert sorted(rules.values()) == ["train_synth_alexnet_p000", *["train_synth_mlp_p000"] * 2, "train_synth_mlp_p001"]
    assert len(re.findall(r"rule train_synth_\w+_p\d{3}:", proc.stderr)) == 3
    ours, theirs = (pd.read_csv(w.root / "results/metrics/summary.csv")[METRICS] for w in (wf, finished[0]))
    assert set(ours["cell"]) == CELLS
    pd.testing.assert_frame_equal(ours, theirs)  # bit-identical on CPU, packed or not


def test_editing_one_packed_cell_retrains_only_that_cell(pack_run, tmp_path):
    wf = Workflow(tmp_path / "wf", source=pack_run[0])
    config = packed(2)
    config["experiments"]["table4"]["grid"][0]["overrides"] = {"lr": 0.02}  # synth/mlp/none/random_labels/s0
    configfile = wf.write_config(config)
    counts, cells = wf.planned_jobs(AGGREGATE, "--configfile", configfile)
    assert counts == {"train": 1, "analysis_aggregate": 1}  # the pack reruns as one job ...
    wf.run(AGGREGATE, "--configfile", configfile, "-c2")
    for cell in cells:  # ... in which only the edited cell trains; its pack-mates re-emit
        log = (wf.root / "results/cells" / cell / "train.log").read_text()
        edited = cell == "synth/mlp/none/random_labels/s0"
        assert log.count("start cell=") == (2 if edited else 1), cell
        assert ("re-emitted" in log) != edited, cell


def slow_config(tmp_path):
    """One cell that trains for a while (12 epochs of a wide MLP on 4,000 random-labelled images)."""
    config = tiny_config(
        {"slow": {"dataset": "synth", "grid": [{"architectures": ["mlp"], "noises": ["random_labels"]}]}}, n_train=4000
    )
    config["datasets"]["synth"]["synthetic"]["shape"] = [1, 28, 28]
    config["architectures"]["mlp"]["width"] = 2.0
    config["training"].update(crop_size=28, max_epochs=12, lr=0.001, checkpoint_minutes=60.0)
    return config


def start(wf, configfile):
    """snakemake training the slow cell (its target only), once its data is built; returns when
    the cell has trained two epochs."""
    wf.run("--configfile", configfile, "-c1", "data_shards")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", f"{SLOW_CELL}/summary.json", "--configfile", str(configfile), "-c1"],
        cwd=wf.root,
        env=wf.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = wf.root / SLOW_CELL / "train.log"
    wait_until(lambda: log_match(log, r"epoch\s+2 step"), "epoch 2 in train.log", proc)
    return proc, log


def test_sigkill_of_snakemake_saves_the_cell_and_the_rerun_resumes_it(tmp_path):
    wf = Workflow(tmp_path / "wf")
    configfile = wf.write_config(slow_config(tmp_path))
    proc, log = start(wf, configfile)
    proc.kill()  # snakemake dies at once; its trainer is orphaned
    proc.communicate()
    wait_until(lambda: log_match(log, "parent process gone: checkpoint saved"), "the orphaned trainer's save")
    wf.run("--configfile", configfile, "--unlock")
    wf.run(f"{SLOW_CELL}/summary.json", "--configfile", configfile, "-c1")
    assert re.search(r"resume from .* at epoch [1-9]\d* step", log.read_text())
    assert log.read_text().count("start cell=") == 1


def test_sigint_to_snakemake_keeps_the_finished_result_for_the_rerun(tmp_path):
    wf = Workflow(tmp_path / "wf")
    config = slow_config(tmp_path)
    config["training"]["max_epochs"] = 6
    configfile = wf.write_config(config)
    proc, log = start(wf, configfile)
    proc.send_signal(signal.SIGINT)  # snakemake alone: it waits for the job, then drops its outputs
    out, _ = proc.communicate(timeout=PATIENCE_S)
    assert "stop: max_epochs" in log.read_text(), out
    wf.run(f"{SLOW_CELL}/summary.json", "--configfile", configfile, "-c1")
    text = log.read_text()
    assert text.count("start cell=") == 1 and "re-emitted" in text
    assert (wf.root / SLOW_CELL / "summary.json").exists()
