"""Figures, tables and the claims check on small constructed metrics (with missing and
non-converged cells), through their CLIs, as the workflow's rules call them."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import SCHEMA
from rethink import config as rconfig
from rethink.analysis import claims, figures, metrics, tables

CLAIMS_SCHEMA = rconfig.load_schema(SCHEMA)["properties"]["claims"]["properties"]
DEFAULT_THRESHOLDS = {name: value["default"] for name, value in CLAIMS_SCHEMA.items()}


def cell(arch, noise="true_labels", reg="none", seed=0, train=1.0, test=0.8, steps=100, best=None, level=None,
         crop=False, wd=0.0, aug=False, dropout=0.0):
    fitted = train >= 1.0
    level = level if level is not None else {"true_labels": 0.0}.get(noise, 1.0)
    return {
        "cell": f"d/{arch}/{reg}/{noise}/s{seed}", "dataset": "d", "arch_name": arch, "arch": arch, "width": 1.0,
        "regularizer": reg, "noise": noise, "level": level, "seed": seed, "final_train_acc": train,
        "final_test_acc": test, "best_test_acc": best if best is not None else test,
        "steps_to_fit": steps if fitted else None, "converged": fitted,
        "stop_reason": "fit_threshold" if fitted else "max_epochs", "num_classes": 10, "n_test": 1000,
        "hp_random_crop": crop, "hp_augment": aug, "hp_weight_decay": wd, "hp_dropout": dropout,
    }  # fmt: skip


def write_metrics(root, rows, experiments):
    root.mkdir(parents=True, exist_ok=True)
    summary = pd.DataFrame(rows)
    curves = pd.concat([
        pd.DataFrame({"cell": r["cell"], "arch_name": r["arch_name"], "noise": r["noise"], "seed": r["seed"],
                      "step": [0, 500, 1000], "epoch": [0, 1, 2], "train_loss": [2.3, 1.0, 0.01],
                      "train_acc": [0.1, 0.6, r["final_train_acc"]], "test_loss": [2.3, 1.2, 1.0],
                      "test_acc": [0.1, r["best_test_acc"], r["final_test_acc"]]})
        for r in rows
    ])  # fmt: skip
    summary.to_parquet(root / "summary.parquet")
    curves.to_parquet(root / "curves.parquet")
    (root / "experiments.json").write_text(json.dumps({"config": "test.yaml", "experiments": experiments}))
    return root


def ids(rows):
    return [r["cell"] for r in rows]


# ----------------------------------------------------------------------------- tables


def test_table1_puts_ours_next_to_the_paper_and_marks_what_did_not_fit(tmp_path):
    rows = [
        cell("inception", test=0.80), cell("inception", seed=1, test=0.90),  # two seeds: mean 85.0
        cell("inception", "random_labels", train=0.95, test=0.1),            # did not fit
        cell("alexnet", reg="wd", wd=5e-4, test=0.7),
    ]
    out = tmp_path / "tables" / "table1"
    tables.main(["table1", "--metrics", str(write_metrics(tmp_path / "m", rows, {"table1": ids(rows)})), "--out", str(out)])
    table = pd.read_csv(out.with_suffix(".csv"))
    assert len(table) == 19  # every paper row is listed, our rows are matched into them
    inc = table[(table["model"] == "inception") & (table["random crop"] == "no") & (table["weight decay"] == "no")].iloc[0]
    assert (inc["test (ours)"], inc["test (paper)"], inc["test diff"], inc["n"]) == (85.0, 85.75, -0.75, 2)
    rnd = table[table["model"] == "inception, random labels"].iloc[0]
    assert rnd["fitted"] == "NOT FITTED" and rnd["train (ours)"] == 95.0 and rnd["train (paper)"] == 100.0
    alex = table[(table["model"] == "alexnet") & (table["weight decay"] == "yes") & (table["random crop"] == "no")].iloc[0]
    assert alex["test (ours)"] == 70.0 and alex["test (paper)"] == 77.36
    missing = table[table["model"] == "mlp_3x512"].iloc[0]
    assert missing["fitted"] == "no cell" and np.isnan(missing["train (ours)"]) and missing["train (paper)"] == 100.0
    md = out.with_suffix(".md").read_text()
    assert "| inception | no | no | 100.00 | 100.00 | 0.00 | 85.00 | 85.75 | -0.75 | yes | 2 |" in md
    assert "from 4 cells of test.yaml, 2 seed(s)" in md
    tex = out.with_suffix(".tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "inception, random labels" in tex
    assert json.loads(out.with_suffix(".json").read_text())["cells"] == 4


def test_table2_matches_rows_by_what_the_cells_do(tmp_path):
    rows = [
        cell("alexnet", reg="all", crop=True, aug=True, wd=5e-4, dropout=0.5, test=0.7, best=0.75),
        cell("alexnet", "random_labels", reg="none", train=0.9, test=0.11),
    ]
    out = tmp_path / "table2"
    tables.main(["table2", "--metrics", str(write_metrics(tmp_path / "m", rows, {"table2": ids(rows)})), "--out", str(out)])
    table = pd.read_csv(out.with_suffix(".csv"))
    full = table[(table["labels"] == "true") & (table["aug"] == "yes") & (table["dropout"] == "yes")].iloc[0]
    assert (full["top-1 test (ours)"], full["best test (ours)"], full["top-1 test (paper)"]) == (70.0, 75.0, 77.84)
    rnd = table[(table["labels"] == "random") & (table["wd"] == "no") & (table["dropout"] == "no")].iloc[0]
    assert rnd["top-1 train (ours)"] == 90.0 and rnd["fitted"] == "NOT FITTED" and rnd["top-1 test (paper)"] == 0.11
    assert len(table) == 7


def test_table4_names_the_regularizer_and_keeps_failed_to_converge(tmp_path):
    rows = [cell("inception", "random_labels", reg="crop", crop=True, train=0.97),
            cell("alexnet", "random_labels", reg="wd", wd=5e-4, train=0.5)]
    out = tmp_path / "table4"
    tables.main(["table4", "--metrics", str(write_metrics(tmp_path / "m", rows, {"table4": ids(rows)})), "--out", str(out)])
    table = pd.read_csv(out.with_suffix(".csv")).set_index(["model", "regularizer"])
    assert table.loc[("inception", "random cropping"), "train (ours)"] == 97.0
    assert table.loc[("inception", "random cropping"), "train (paper)"] == "99.93"
    assert table.loc[("alexnet", "weight decay"), "train (paper)"] == "failed to converge"
    assert table.loc[("alexnet", "weight decay"), "fitted"] == "NOT FITTED"
    assert table.loc[("mlp_1x512", "weight decay"), "fitted"] == "no cell"


# ----------------------------------------------------------------------------- figures


def corruption_rows():
    rows = []
    # paper-like: test accuracy differs by architecture and falls to chance with corruption
    for arch, slope, base in (("inception", 1.5, 0.86), ("alexnet", 2.0, 0.77), ("mlp_1x512", 3.0, 0.52)):
        for level in (0.0, 0.5, 1.0):
            noise = {0.0: "true_labels", 1.0: "random_labels"}.get(level, "corrupt_p0.5")
            rows.append(cell(arch, noise, level=level, steps=int(100 * (1 + (slope - 1) * level)),
                             test=base - (base - 0.1) * level))
    rows.append(cell("alexnet", "corrupt_p0.5", level=0.5, seed=1, train=0.9))  # a seed that never fitted
    return rows


def test_relative_time_to_overfit_is_per_architecture_and_seed():
    frame = metrics.relative_time_to_overfit(pd.DataFrame(corruption_rows()))
    got = frame.set_index("cell")["relative_time"]
    assert got["d/mlp_1x512/none/random_labels/s0"] == pytest.approx(3.0)
    assert got["d/alexnet/none/corrupt_p0.5/s0"] == pytest.approx(1.5)
    assert np.isnan(got["d/alexnet/none/corrupt_p0.5/s1"])  # no fit, and no p = 0 cell for seed 1
    nothing_fitted = pd.DataFrame([cell("mlp_1x512", train=0.5), cell("mlp_1x512", "random_labels", train=0.5)])
    assert metrics.relative_time_to_overfit(nothing_fitted)["relative_time"].isna().all()


@pytest.mark.parametrize("name", ["fig1a", "fig1b", "fig1c", "fig2a", "fig2b"])
def test_each_figure_renders_with_provenance(tmp_path, name):
    rows = corruption_rows() + [
        cell("inception", noise) for noise in ("shuffled_pixels", "random_pixels", "gaussian")
    ] + [cell("inception_nobn", test=0.7, best=0.75), cell("alexnet", reg="d", dropout=0.5, wd=5e-4)]
    plotted = {"fig1a": [r for r in rows if r["arch_name"] == "inception" and r["level"] in (0.0, 1.0)],
               "fig2b": [r for r in rows if r["arch_name"].startswith("inception") and r["noise"] == "true_labels"],
               "fig2a": [r for r in rows if r["arch_name"] == "alexnet" and r["noise"] == "true_labels"]}.get(name, corruption_rows())
    root = write_metrics(tmp_path / "m", rows, {name: ids(plotted) + ["d/missing/none/true_labels/s0"]})
    out = tmp_path / "figures" / name
    figures.main([name, "--metrics", str(root), "--out", str(out)])
    assert out.with_suffix(".pdf").stat().st_size > 5000 and out.with_suffix(".png").stat().st_size > 5000
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["cells"] == len(plotted) and side["cells_planned"] == len(plotted) + 1 and side["config"] == "test.yaml"
    assert f"{len(plotted)} of {len(plotted) + 1} planned cells" in side["caption"]
    if name == "fig1b":
        assert "1 cell(s) that never fitted" in side["caption"]


def test_fig2a_condition_names_follow_the_paper():
    row = pd.Series({"crop": False, "aug": True, "wd": True, "dropout": True})
    assert figures.regularizer_words(row) == "w/ aug, wd, dropout"
    assert figures.regularizer_words(row.replace(True, False).where(lambda s: s.index != "dropout", True)) == "w/o aug, dropout"


def test_fig3_is_drawn_from_the_model(tmp_path):
    layers = figures.inception_layers()
    assert layers[0] == ("Conv 3x3, 96, stride 1", (96, 28, 28))
    assert ("Downsample (80)", (160, 14, 14)) in layers and ("Downsample (96)", (240, 7, 7)) in layers
    assert layers[-3] == ("Inception (176, 160)", (336, 7, 7)) and layers[-1][1] == (10,)
    figures.main(["fig3", "--out", str(tmp_path / "fig3")])
    assert (tmp_path / "fig3.png").stat().st_size > 10000


def test_missing_experiment_is_a_clear_error(tmp_path, capsys):
    root = write_metrics(tmp_path / "m", [cell("inception")], {"fig1a": ["d/inception/none/true_labels/s0"]})
    with pytest.raises(SystemExit) as info:
        figures.main(["fig1c", "--metrics", str(root), "--out", str(tmp_path / "x")])
    assert info.value.code == 2 and "experiment 'fig1c' is not in test.yaml (experiments: fig1a)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- claims


def paper_like_rows():
    rows = corruption_rows()[:-1] + [cell("inception", n) for n in ("shuffled_pixels", "random_pixels", "gaussian")]
    rows += [cell("inception_nobn", test=0.82), cell("inception", reg="wd", wd=5e-4, test=0.87),
             cell("mlp_1x512", "random_labels", reg="wd", wd=5e-4, train=0.995, test=0.1, level=1.0)]
    for r in rows:
        if r["noise"] == "random_labels":
            r["final_test_acc"] = 0.1
    return rows


def verdicts(rows, **thresholds):
    return {r["id"]: r["verdict"] for r in claims.check_all(pd.DataFrame(rows), {**DEFAULT_THRESHOLDS, **thresholds})}


def test_claims_hold_on_paper_like_metrics():
    assert set(verdicts(paper_like_rows()).values()) == {"pass"}


@pytest.mark.parametrize("claim, change", [
    ("fits_random_labels", lambda r: r.update(final_train_acc=0.9) if r["cell"] == "d/alexnet/none/random_labels/s0" else None),
    ("random_labels_at_chance", lambda r: r.update(final_test_acc=0.3) if r["noise"] == "random_labels" else None),
    ("error_grows_with_corruption", lambda r: r.update(final_test_acc=0.05, best_test_acc=0.05) if r["cell"] == "d/mlp_1x512/none/true_labels/s0" else None),
    ("overfit_slowdown", lambda r: r.update(steps_to_fit=5000) if r["cell"] == "d/mlp_1x512/none/random_labels/s0" else None),
    ("pixels_fitted", lambda r: r.update(final_train_acc=0.5) if r["noise"] == "gaussian" else None),
    ("regularizers_vs_architecture", lambda r: r.update(final_test_acc=0.3) if r["regularizer"] == "wd" and r["noise"] == "true_labels" else None),
    ("batchnorm_effect", lambda r: r.update(final_test_acc=0.1, best_test_acc=0.1) if r["arch_name"] == "inception_nobn" else None),
    ("early_stopping_band", lambda r: r.update(best_test_acc=r["final_test_acc"] + 0.2) if r["cell"] == "d/alexnet/none/true_labels/s0" else None),
])
def test_each_claim_fails_when_the_metrics_contradict_it(claim, change):
    rows = paper_like_rows()
    for r in rows:
        change(r)
    got = verdicts(rows)
    assert got[claim] == "fail", got
    assert sum(v == "fail" for v in got.values()) == 1, got


def test_claims_without_data_are_not_measured_and_the_cli_writes_both_files(tmp_path):
    rows = [cell("mlp_1x512")]
    got = verdicts(rows)
    assert got["fits_random_labels"] == "not measured" and got["batchnorm_effect"] == "not measured"
    root = write_metrics(tmp_path / "m", paper_like_rows(), {"all": ids(paper_like_rows())})
    claims.main(["--metrics", str(root), "--thresholds", json.dumps(DEFAULT_THRESHOLDS), "--out", str(tmp_path / "claims")])
    data = json.loads((tmp_path / "claims.json").read_text())
    assert len(data["claims"]) == 8 and {c["verdict"] for c in data["claims"]} == {"pass"}
    assert "| Every architecture fits random labels (training accuracy) | 1.0 | >= 0.99 | **pass** |" in (tmp_path / "claims.md").read_text()


def test_table3_takes_the_kernel_metrics(tmp_path):
    root = write_metrics(tmp_path / "m", [cell("mlp_1x512")], {"x": []})
    pd.DataFrame({"dataset": ["mnist"], "features": ["raw"], "test_error": [0.0125]}).to_csv(root / "kernel.csv", index=False)
    tables.main(["table3", "--metrics", str(root), "--out", str(tmp_path / "table3")])
    table = pd.read_csv(tmp_path / "table3.csv").set_index(["dataset", "features"])
    assert table.loc[("mnist", "raw"), "test error (ours)"] == 1.25 and table.loc[("mnist", "raw"), "diff"] == 0.05
    assert np.isnan(table.loc[("cifar10", "raw"), "test error (ours)"]) and table.loc[("cifar10", "raw"), "test error (paper)"] == 46.0
