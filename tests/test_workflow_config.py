"""Config validation through the real snakemake CLI: a bad config stops before any job and
before any output is touched, naming the key; what YAML 1.1 misreads is read as meant."""

import json

import pytest
import yaml

from rethink import paths, plan

from conftest import tiny_config

pytestmark = pytest.mark.workflow

EXPERIMENT = {"dataset": "synth", "grid": [{"architectures": ["mlp"], "noises": ["random_labels"]}]}


def test_every_rule_name_is_reserved_from_experiment_names(workflow):
    """The names config validation keeps experiments away from cover every rule of the workflow."""
    config = tiny_config({"e": EXPERIMENT, "fig1a": EXPERIMENT, "table1": EXPERIMENT})
    listed = workflow.run("--configfile", workflow.write_config(config), "--list-rules").stdout.split()
    rules = set(listed) - set(config["experiments"])
    assert {"all", "data_clean", "train", "figure", "table", "analysis_aggregate"} <= rules
    assert [r for r in rules if r not in plan.WORKFLOW_RULES and not r.startswith(plan.RULE_PREFIXES)] == []


@pytest.mark.parametrize(
    "text, message",
    ids=["rule-name", "float-seed", "level-collision", "repeated-key"],
    argvalues=[
        (
            "experiments:\n  data_shards: {dataset: synth, grid: [{architectures: [mlp]}]}\n",
            "config key experiments.data_shards: 'data_shards' is the name of a workflow rule",
        ),
        (
            "experiments:\n  e: {dataset: synth, seeds: [1.0], grid: [{architectures: [mlp]}]}\n",
            "config key experiments.e.seeds[0]: 1.0 is not an integer (write 1)",
        ),
        (
            "experiments:\n  e: {dataset: synth, grid: [{architectures: [mlp], corruption_levels: [1e-7]}]}\n",
            "config key experiments.e.grid[0].corruption_levels[0]: label corruption level 1e-07 has more than the 6 "
            "decimals that noise names keep, so it would train as true_labels",
        ),
        (
            "experiments:\n  e: {dataset: synth, grid: [{architectures: [mlp]}]}\n"
            "experiments:\n  f: {dataset: synth, grid: [{architectures: [mlp]}]}\n",
            "line {last}: key 'experiments' is repeated (first on line {first}); YAML keeps only the last one",
        ),
    ],
)
def test_a_bad_config_stops_before_any_job_naming_the_key(workflow, text, message):
    base = tiny_config({})
    del base["experiments"]
    head = yaml.safe_dump(base, sort_keys=False)
    path = workflow.root / "config" / "bad.yaml"
    path.write_text(head + text)
    lines = len(head.splitlines())
    message = message.format(first=lines + 1, last=lines + 3)
    proc = workflow.run("--configfile", path, "-c1", check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (workflow.root / "results").exists()


def test_every_experiment_disabled_is_a_clear_error_that_deletes_nothing(workflow):
    metrics = workflow.root / paths.RESULTS / "metrics"
    metrics.mkdir(parents=True)
    before = {}
    for name in [*paths.METRICS.values(), paths.EXPERIMENTS_JSON]:
        (workflow.root / name).write_text(f"{name} of an earlier run\n")
        before[name] = (workflow.root / name).read_text()
    config = tiny_config({"a": dict(EXPERIMENT, enabled=False), "b": dict(EXPERIMENT, enabled=False)})
    proc = workflow.run("--configfile", workflow.write_config(config), "-c1", check=False)
    assert proc.returncode != 0
    assert "config key experiments: every experiment is disabled (a, b), so there is nothing to train" in proc.stderr
    assert {name: (workflow.root / name).read_text() for name in before} == before


def test_a_number_in_exponent_notation_is_a_number(workflow):
    """`lr: 1e-3` (a string to YAML 1.1, so to Snakemake's reader) trains with lr 0.001."""
    text = yaml.safe_dump(tiny_config({"e": EXPERIMENT}), sort_keys=False)
    path = workflow.root / "config" / "exp.yaml"
    path.write_text(text.replace("training:\n", "training:\n  lr: 1e-3\n"))
    assert yaml.safe_load(path.read_text())["training"]["lr"] == "1e-3"
    workflow.run("--configfile", path, "-c1", "e")
    cell = json.loads(
        (
            workflow.root
            / paths.CELL_JSON.format(dataset="synth", arch="mlp", regularizer="none", noise="random_labels", seed=0)
        ).read_text()
    )
    assert cell["hparams"]["lr"] == 0.001


def test_experiments_json_is_written_atomically(workflow):
    """It goes through the package's atomic writer, which also removes a killed writer's temporary."""
    target = workflow.root / paths.EXPERIMENTS_JSON
    target.parent.mkdir(parents=True)
    stale = target.with_name(f".{target.name}.tmp4242")
    stale.write_text("half a file")
    workflow.run("--configfile", workflow.write_config(tiny_config({"e": EXPERIMENT})), "-c1", paths.EXPERIMENTS_JSON)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert yaml.safe_load(target.read_text())["experiments"] == {"e": ["synth/mlp/none/random_labels/s0"]}
