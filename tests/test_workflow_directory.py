"""Results anywhere: `snakemake --directory DIR` from the checkout writes every output under DIR
(configs and code come from the checkout); a rerun from there finds everything done, the status of
the cells and the calibration of the requests (rethink.calibrate) read them there, and `make archive
DIRECTORY=DIR` (rethink.archive build --directory) bundles them."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from rethink import paths

from conftest import tiny_config

pytestmark = pytest.mark.workflow
EXPERIMENTS = {"e": {"dataset": "synth", "grid": [{"architectures": ["mlp", "alexnet"]}]}}
CELLS = {arch: f"synth/{arch}/none/true_labels/s0" for arch in ("alexnet", "mlp")}


def python(workflow, *args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=workflow.env, capture_output=True, text=True)


@pytest.fixture
def elsewhere(workflow, tmp_path):
    """The tiny grid (two cells) run from the checkout into a directory outside it."""
    config = tiny_config(EXPERIMENTS)
    config["compute"] = {"pack": 2}  # one job, one benchmark, for both cells (of one architecture each)
    configfile = workflow.write_config(config)
    scratch = tmp_path / "scratch"
    workflow.run("--directory", scratch, "--configfile", configfile.relative_to(workflow.root), "-c2")
    return scratch, configfile


def test_a_run_with_directory_writes_there_and_reruns_status_and_calibration_work_from_there(
    workflow, elsewhere, tmp_path
):
    scratch, configfile = elsewhere
    assert not (workflow.root / "results").exists()
    assert (scratch / paths.METRICS["summary_csv"]).is_file()
    dry = workflow.run("-n", "--directory", scratch, "--configfile", configfile).stdout
    assert "Nothing to be done" in dry, dry

    status = python(workflow, "rethink.status", "--configfile", str(configfile), "--json", cwd=scratch)
    assert status.returncode == 0, status.stderr
    assert [c["state"] for c in json.loads(status.stdout)["cells"]] == ["finished", "finished"]

    # the calibration: from the measured run (2 epochs) for one of 20 epochs, at 1.5 times
    target = yaml.safe_load(configfile.read_text())
    target["training"]["max_epochs"] = 20
    target_file = workflow.write_config(target, "full.yaml")
    args = ("rethink.calibrate", "--configfile", str(configfile), "--for", str(target_file))
    proc = python(workflow, *args, cwd=scratch)
    assert proc.returncode == 0, proc.stderr
    suggested = yaml.safe_load(proc.stdout)["architectures"]
    summaries = {a: json.loads((scratch / "results/cells" / c / "summary.json").read_text()) for a, c in CELLS.items()}
    assert all(s["epochs"] == 2 for s in summaries.values())
    benchmarks = list((scratch / "results/benchmarks/train").glob("*.tsv"))
    assert len(benchmarks) == 2  # one per pack, each of one cell
    expected = {}
    for bench in benchmarks:  # train_<dataset>_<arch>_p000.tsv
        arch = bench.stem.split("_")[2]
        with open(bench, newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        wall = summaries[arch]["wall_s"]
        seconds = float(row["s"]) - wall + wall / 2 * 20  # start and data loading, then 20 epochs
        expected[arch] = {
            "runtime_minutes": math.ceil(1.5 * seconds / 60 + 2 + 0.5),  # and Slurm signals it 2-2.5 min early
            "mem_mb": 100 * math.ceil(1.5 * float(row["max_rss"]) / 100),
        }
    assert suggested == expected
    # the suggestion is a config layer: with it, the plan asks for what was suggested
    (tmp_path / "calibrated.yaml").write_text(proc.stdout)
    described = python(workflow, "rethink.plan", "--configfile", str(target_file), str(tmp_path / "calibrated.yaml"),
                       "--json", cwd=scratch)  # fmt: skip
    assert described.returncode == 0, described.stderr
    asked = {job["cells"][0].split("/")[1]: job for job in json.loads(described.stdout)["jobs"]["train"]}
    assert {a: (asked[a]["runtime_minutes"], asked[a]["mem_mb"]) for a in asked} == {
        a: (s["runtime_minutes"], s["mem_mb"]) for a, s in expected.items()
    }

    targets = python(workflow, "rethink.calibrate", "--configfile", str(configfile), "--targets", cwd=scratch)
    assert targets.stdout.split() == [f"results/cells/{cell}/summary.json" for cell in CELLS.values()]


def test_a_run_in_another_directory_is_archived_from_the_clone(workflow, elsewhere):
    scratch, configfile = elsewhere
    git = dict(
        os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t"
    )
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the run's code"]):
        subprocess.run(["git", *args], cwd=workflow.root, env=git, check=True, capture_output=True)
    config = str(configfile.relative_to(workflow.root))
    proc = python(workflow, "rethink.archive", "build", "--configfile", config, "--directory", str(scratch),
                  cwd=workflow.root)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = pathlib.Path(proc.stdout.split()[0])
    assert folder.parent == scratch / "results/archive" and not (workflow.root / "results").exists()
    manifest = json.loads((folder / "data/archive.json").read_text())
    assert manifest["complete"] and manifest["configfiles"] == [config]
    assert (folder / "data" / paths.METRICS["summary_csv"]).read_bytes() == (
        scratch / paths.METRICS["summary_csv"]
    ).read_bytes()
    assert (folder / "data/source/Snakefile").is_file() and (folder / "data/run-config" / config).is_file()
