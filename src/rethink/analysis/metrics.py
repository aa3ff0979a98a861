"""Reading results/metrics/*: the one place figures, tables and claims get their data from.

`experiments.json` (written by the workflow from the config) names each experiment's cells
and the config they came from; `summary.parquet` has one row per cell, `curves.parquet` one
row per epoch (eval-mode columns empty on epochs that were not evaluated, online columns
empty at epoch 0).
"""

import json

import pandas as pd

from rethink import paths
from rethink.errors import RethinkError


def read(metrics_dir, key):
    """A file of the metrics folder by key (rethink.paths.METRIC_FILES): JSON, or a parquet table."""
    path = paths.metrics_file(metrics_dir, key)
    try:
        return json.loads(path.read_text()) if path.suffix == ".json" else pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise RethinkError(f"{path}: cannot read ({err}); run the aggregation (snakemake analysis_aggregate)") from None


def membership(metrics_dir):
    return read(metrics_dir, "experiments")


def experiment_ids(metrics_dir, experiment):
    members = membership(metrics_dir)
    if experiment not in members["experiments"]:
        raise RethinkError(
            f"experiment {experiment!r} is not in {members['config']} "
            f"(experiments: {', '.join(sorted(members['experiments']))})"
        )
    return members["experiments"][experiment], members["config"]


def experiment_cells(metrics_dir, experiment):
    """The experiment's rows of the summary table, and where they came from."""
    ids, config = experiment_ids(metrics_dir, experiment)
    summary = read(metrics_dir, "summary_parquet")
    rows = summary[summary["cell"].isin(ids)].reset_index(drop=True)
    provenance = {
        "experiment": experiment, "config": config, "cells": int(rows["cell"].nunique()),
        "cells_planned": len(ids), "seeds": int(rows["seed"].nunique()) if len(rows) else 0,
    }  # fmt: skip
    return rows, provenance


def with_switches(cells):
    """Boolean columns for what a cell's regularization does, read from its hyper-parameters."""
    return cells.assign(
        crop=cells["hp_random_crop"].astype(bool), aug=cells["hp_augment"].astype(bool),
        wd=cells["hp_weight_decay"] > 0, dropout=cells["hp_dropout"] > 0,
    )  # fmt: skip


def relative_time_to_overfit(cells):
    """steps_to_fit / steps_to_fit at p = 0 (same architecture, regularizer and seed), the
    paper's Fig. 1b quantity; NaN where either cell did not fit."""
    keys = ["arch_name", "regularizer", "seed"]
    steps = pd.to_numeric(cells["steps_to_fit"], errors="coerce")  # None (never fitted) -> NaN
    base = cells.assign(base=steps)[cells["level"] == 0].groupby(keys)["base"].first().reset_index()
    matched = cells[keys].merge(base, on=keys, how="left")["base"].to_numpy(dtype=float)
    return cells.assign(relative_time=steps.to_numpy(dtype=float) / matched)


def over_seeds(frame, keys, column):
    """Per group of `keys`, the seed statistics of `column`: mean, sd (sample, n - 1; NaN for
    one seed), min, max and n (seeds with a value), in the groups' order of appearance."""
    values = frame.assign(_v=pd.to_numeric(frame[column], errors="coerce")).dropna(subset=["_v"])
    stats = values.groupby(keys, sort=False)["_v"].agg(["mean", "std", "min", "max", "count"])
    return stats.rename(columns={"std": "sd", "count": "n"}).reset_index()


BANDS = {"minmax": "min-max over seeds", "sd": "mean +- 1 sd over seeds"}


def band(stats, kind):
    """(low, high) of the band of `kind` (a key of BANDS) around `stats`' means."""
    if kind == "minmax":
        return stats["min"], stats["max"]
    sd = stats["sd"].fillna(0.0)
    return stats["mean"] - sd, stats["mean"] + sd
