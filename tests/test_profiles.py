"""The profiles: profiles/slurm is the workflow profile of a Slurm run, used beside a site's own
profile (`--workflow-profile profiles/slurm --profile yoursite`) and never installed as one."""

import yaml

from conftest import REPO, is_training_rule

PAPER_CELLS = 55


def dry_run_jobs(workflow, *args, home):
    """{rule: [each job's block of the dry run]}."""
    out = workflow.run("-n", *args, env=workflow.user_env(home)).stdout
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        name, body = block.split(":", 1)
        jobs.setdefault(name, []).append(body)
    return jobs


def test_the_workflow_profile_runs_the_paper_grid_beside_a_site_profile(workflow, tmp_path):
    home = tmp_path / "home"
    site = home / ".config/snakemake/mysite/config.yaml"
    site.parent.mkdir(parents=True)
    # the site's own profile: what the workflow profile leaves unset passes through (default-resources)
    site.write_text(yaml.safe_dump({"executor": "local", "default-resources": ["slurm_account=lab", "mem_mb=123"]}))
    args = ["--workflow-profile", "profiles/slurm", "--profile", "mysite", "--configfile", "config/paper.yaml"]
    jobs = dry_run_jobs(workflow, *args, home=home)
    assert sum(len(bodies) for rule, bodies in jobs.items() if is_training_rule(rule)) == PAPER_CELLS
    data = jobs["data_clean"][0]
    assert "slurm_account=lab" in data and "gpu=0" in data  # the site's account; never a GPU for data
    assert "mem_mb=4000" in data  # the config's request for CPU jobs, not the site's default
    assert "slurm_extra=--signal=TERM@120" in jobs["train"][0]


def test_nothing_in_the_repository_shadows_a_site_profile():
    assert not (REPO / "slurm").exists()  # `--profile slurm` looks in ./slurm first
    assert "slurm-profile" not in (REPO / "Makefile").read_text()  # ours is never installed as a user's


def test_the_slurm_profile_holds_what_the_workflow_needs_and_nothing_of_a_site():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1 and profile["keep-going"] is True
    assert profile["slurm-status-command"] == "squeue"
    # partitions, accounts, GPU requests and time caps are config (slurm:, compute:), per kind of job;
    # no config file either: --configfile layers a run's config files onto the default
    assert not {"default-resources", "set-resources", "configfile", "configfiles"} & set(profile)


def test_no_rule_declares_a_conda_environment(workflow):
    """The README prepares the environment on the login node (make install); no rule claims a conda
    env that --software-deployment-method conda would build."""
    listed = workflow.run("--list-conda-envs").stdout
    assert listed.split("environment\tcontainer\tlocation")[1].strip() == "", listed  # the table, empty
