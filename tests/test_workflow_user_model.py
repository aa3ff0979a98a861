"""A user's own model in one config line (`architectures.<name>.model: package.module:function`),
through the real snakemake CLI: it trains beside a registry model, its parameter count is
recorded, editing its file reruns exactly its cells, and a bad import path stops the run before
any job, naming the key."""

import json

import pytest

from conftest import Workflow, tiny_config

pytestmark = pytest.mark.workflow

# Written by the test into the workflow's working directory (where `python -m rethink.train`
# finds it): an MLP with one hidden layer of `hidden` units, as a registry factory is called.
MODEL = '''"""A user's model, outside the rethink package."""

import torch.nn as nn

HIDDEN = 24


def build(input_shape, num_classes, width=1.0, dropout=0.0):
    c, h, w = input_shape
    hidden = max(1, round(HIDDEN * width))
    head = [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), *head)
'''
EXPERIMENTS = {"e": {"dataset": "synth", "grid": [{"architectures": ["mine", "mlp"], "noises": ["random_labels"]}]}}
MINE, MLP = "synth/mine/none/random_labels/s0", "synth/mlp/none/random_labels/s0"


def user_config(model="mymodels.tiny:build"):
    config = tiny_config(EXPERIMENTS)
    config["architectures"]["mine"] = {"model": model, "runtime_minutes": 5, "mem_mb": 500}
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wf = Workflow(tmp_path_factory.mktemp("user") / "wf")
    (wf.root / "mymodels").mkdir()
    (wf.root / "mymodels" / "__init__.py").write_text("")
    (wf.root / "mymodels" / "tiny.py").write_text(MODEL)
    configfile = wf.write_config(user_config())
    wf.run("--configfile", configfile, "-c2", "e")
    return wf, configfile


def test_a_users_model_trains_and_records_its_parameter_count(trained):
    wf, _ = trained
    summary = json.loads((wf.root / "results/cells" / MINE / "summary.json").read_text())
    assert summary["arch"] == "mymodels.tiny:build" and summary["arch_name"] == "mine"
    assert summary["n_params"] == (64 * 24 + 24) + (24 * 10 + 10)  # 1x8x8 inputs, 10 classes
    assert summary["stop_reason"] == "max_epochs" and summary["epochs"] == 2
    log = (wf.root / "results/cells" / MINE / "train.log").read_text()
    assert f"params={summary['n_params']}" in log


def test_editing_the_users_model_reruns_exactly_its_cells(trained, tmp_path):
    wf = Workflow(tmp_path / "wf", source=trained[0])
    configfile = wf.root / trained[1].relative_to(trained[0].root)
    model = wf.root / "mymodels" / "tiny.py"
    model.write_text(model.read_text() + "\n# a comment changes no model\n")
    assert wf.planned_jobs("e", "--configfile", configfile) == ({}, set())
    model.write_text(model.read_text().replace("HIDDEN = 24", "HIDDEN = 32"))
    assert wf.planned_jobs("e", "--configfile", configfile) == ({"train": 1, "e": 1}, {MINE})


@pytest.mark.parametrize(
    "model, message",
    [
        (
            "mymodels.nothere:build",
            "config key architectures.mine.model: 'mymodels.nothere:build': there is no module mymodels.nothere "
            "in the working directory or on the Python path",
        ),
        (
            "mymodels.tiny:make",
            "config key architectures.mine.model: 'mymodels.tiny:make': {root}/mymodels/tiny.py defines no make",
        ),
        ("mymodels.tiny", "config key architectures.mine.model: 'mymodels.tiny' is not a user's model"),
    ],
)
def test_a_bad_import_path_is_a_config_error_before_any_job(workflow, model, message):
    (workflow.root / "mymodels").mkdir()
    (workflow.root / "mymodels" / "__init__.py").write_text("")
    (workflow.root / "mymodels" / "tiny.py").write_text(MODEL)
    proc = workflow.run("--configfile", workflow.write_config(user_config(model)), "-c1", check=False)
    assert proc.returncode != 0 and message.format(root=workflow.root) in proc.stderr, proc.stderr
    assert not (workflow.root / "results").exists()
