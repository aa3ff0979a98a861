"""The profiles: `snakemake --profile slurm` plans the paper grid with our profile installed,
and installing it never replaces a user's own site profile."""

import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, is_training_rule

pytestmark = pytest.mark.workflow
PAPER_CELLS = 55


def train_jobs(workflow, *args, home):
    out = workflow.run("-n", "--quiet", "rules", *args, env=workflow.user_env(home)).stdout
    table = out.split("Job stats:")[1].split("total")[0]  # the first of the (repeated) stats tables
    rows = [line.split() for line in table.splitlines()]
    return sum(int(row[1]) for row in rows if len(row) == 2 and is_training_rule(row[0]))


def test_slurm_profile_runs_the_paper_grid_installed_or_in_place(workflow, tmp_path):
    shutil.copy(REPO / "Makefile", workflow.root)
    home = tmp_path / "home"
    make = ["make", "--no-print-directory", "slurm-profile"]
    env = workflow.user_env(home)
    first = subprocess.run(make, cwd=workflow.root, env=env, capture_output=True, text=True, check=True)
    installed = home / ".config/snakemake/slurm/config.yaml"
    assert "installed" in first.stdout and installed.read_text() == (REPO / "profiles/slurm/config.yaml").read_text()
    assert train_jobs(workflow, "--profile", "slurm", home=home) == PAPER_CELLS
    assert train_jobs(workflow, "--profile", "profiles/slurm", home=tmp_path / "nobody") == PAPER_CELLS

    installed.write_text("executor: slurm\njobs: 3\n")  # the user's own site profile
    again = subprocess.run(make, cwd=workflow.root, env=env, capture_output=True, text=True, check=True)
    assert "left as it is" in again.stdout and installed.read_text() == "executor: slurm\njobs: 3\n"


def test_nothing_in_the_repository_shadows_a_site_profile():
    assert not (REPO / "slurm").exists()  # `--profile slurm` looks in ./slurm first


def test_slurm_profile_asks_for_what_the_cluster_needs():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["configfile"] == ["config/paper.yaml"]
    assert profile["retries"] >= 1 and profile["keep-going"] is True
    assert {"slurm_partition", "runtime", "mem_mb"} <= set(profile["default-resources"])
