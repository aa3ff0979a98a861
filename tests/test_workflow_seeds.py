"""Several seeds, end to end through the real snakemake CLI: a sub-grid with two seeds beside
one with a single seed, trained for real, aggregated, and shown as a mean with a band (figures)
or mean ± sd (tables), each saying how many seeds it came from."""

import json

import numpy as np
import pandas as pd
import pytest

from rethink import config as rconfig
from rethink import plan
from rethink.analysis.paper import ARCH_WORDS

from conftest import SCHEMA, Workflow, tiny_config

pytestmark = pytest.mark.workflow

LEVELS = {"corruption_levels": [0.0, 1.0]}
EXPERIMENTS = {
    name: {"dataset": "synth", "grid": [
        {"architectures": ["mlp"], **LEVELS, "seeds": [0, 1]},  # two seeds for the cheap model
        {"architectures": ["alexnet"], **LEVELS},                 # the experiment's seeds: [0]
    ]}
    for name in ("fig1b", "fig1c", "table1")
}  # fmt: skip
CONFIG = tiny_config(EXPERIMENTS) | {"figures": {"band": "sd"}}
CONFIG["training"] |= {"max_epochs": 60, "lr": 0.05, "lr_decay": 1.0, "fit_threshold": 0.5, "eval_every_epochs": 1}


def test_a_subgrid_may_have_its_own_seeds():
    seeds = plan.Plan(rconfig.validate(json.loads(json.dumps(CONFIG)), SCHEMA))
    cells, experiments = seeds.cells, seeds.experiments
    assert sorted(experiments["fig1c"]) == sorted([
        "synth/mlp/none/true_labels/s0", "synth/mlp/none/true_labels/s1", "synth/mlp/none/random_labels/s0",
        "synth/mlp/none/random_labels/s1", "synth/alexnet/none/true_labels/s0", "synth/alexnet/none/random_labels/s0",
    ])  # fmt: skip
    assert len(cells) == 6  # the three experiments share them


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wf = Workflow(tmp_path_factory.mktemp("seeds") / "wf")
    wf.run("--configfile", wf.write_config(CONFIG), "-c2")
    return wf


def test_two_seeds_give_a_band_and_mean_sd_with_their_count(finished):
    root = finished.root / "results"
    summary = pd.read_csv(root / "metrics/summary.csv")
    assert (
        sorted(zip(summary["arch_name"], summary["seed"])) == [("alexnet", 0)] * 2 + [("mlp", 0)] * 2 + [("mlp", 1)] * 2
    )

    # Fig. 1c: test error, the mean over seeds with a mean +- 1 sd band (figures.band: sd)
    fig1c = json.loads((root / "figures/fig1c.json").read_text())
    assert (
        "line: mean over seeds, band: mean +- 1 sd over seeds; n = 2 seeds: mlp; n = 1 seed: AlexNet"
        in fig1c["caption"]
    )
    assert fig1c["seeds"] == 2 and "6 of 6 planned cells" in fig1c["caption"]
    for (arch, level), cells in summary.groupby(["arch_name", "level"]):
        error = 1 - cells["final_test_acc"]
        point = next(r for r in fig1c["series"] if r["model"] == ARCH_WORDS.get(arch, arch) and r["level"] == level)
        assert point["n"] == len(cells) and point["mean"] == pytest.approx(error.mean())
        if len(cells) > 1:
            sd = error.std(ddof=1)
            assert (point["low"], point["high"]) == (pytest.approx(error.mean() - sd), pytest.approx(error.mean() + sd))
        else:
            assert point["sd"] is None and point["low"] == point["high"] == pytest.approx(error.mean())

    # Fig. 1b: time to overfit relative to p = 0 of the same seed, then averaged over seeds
    fig1b = json.loads((root / "figures/fig1b.json").read_text())
    mlp = summary[summary["arch_name"] == "mlp"].set_index(["seed", "level"])["steps_to_fit"]
    per_seed = [mlp[(s, 1.0)] / mlp[(s, 0.0)] for s in (0, 1)]
    point = next(r for r in fig1b["series"] if r["model"] == "mlp" and r["level"] == 1.0)
    assert point["n"] == 2 and point["mean"] == pytest.approx(np.mean(per_seed))  # both seeds fitted
    assert "n = 2 seeds: mlp; n = 1 seed: AlexNet" in fig1b["caption"]

    # Table 1: mean ± sample sd and n per row
    table = pd.read_csv(root / "tables/table1.csv")
    row = table[table["model"] == "mlp"].iloc[0]
    tests = 100 * summary[(summary["arch_name"] == "mlp") & (summary["level"] == 0.0)]["final_test_acc"]
    assert row["n"] == 2 and row["test (ours)"] == round(tests.mean(), 2) and row["test sd"] == round(tests.std(), 2)
    md = (root / "tables/table1.md").read_text()
    assert f"| {row['test (ours)']:.2f} ± {row['test sd']:.2f} |" in md.split("\n| mlp | no | no |")[1]
    alexnet = table[(table["model"] == "alexnet") & (table["random crop"] == "no") & (table["weight decay"] == "no")]
    assert alexnet["n"].tolist() == [1] and np.isnan(alexnet["test sd"].iloc[0])


def test_changing_the_band_reruns_only_the_figures(finished, tmp_path):
    wf = Workflow(tmp_path / "wf", source=finished)
    counts, cells = wf.planned_jobs("--configfile", wf.write_config(CONFIG | {"figures": {"band": "minmax"}}))
    assert cells == set() and counts == {"figure": 3, "all": 1}  # fig1b, fig1c, fig3
