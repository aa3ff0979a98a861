"""Tables 1, 2 and 4: our numbers next to the paper's, as CSV, Markdown and LaTeX (booktabs).

Rows come from one experiment's cells (results/metrics/experiments.json says which) and are
matched to the paper by what the cells do, read from their resolved hyper-parameters, in the
paper's row order (rows the paper does not have follow). With several seeds a value is the mean
over seeds with its sample sd beside it (`<x> sd` in the CSV, `mean ± sd` in Markdown and
LaTeX), and `n` says how many seeds. A row whose cells did not reach the fitting threshold is
marked in the `fitted` column, never dropped; a paper row with no cell is listed with our
values empty. Ours are set against the paper's (a `diff` column) only where the cells are the
paper's setting (paper.SETTINGS: CIFAR-10 at the paper's widths for Tables 1 and 4, Inception V3
on ImageNet for Table 2); elsewhere they are a stand-in, and the tables compare effects instead
(each row's difference to its table's baseline row, ours beside the paper's), with the paper's
values labelled with its dataset (Table 2: left out, 1000 classes do not compare with 10).

    python -m rethink.analysis.tables table1 --metrics results/metrics --out results/tables/table1
"""

import argparse
import json
import pathlib
import sys

import pandas as pd

from rethink import analysis, paths
from rethink.analysis import metrics, paper
from rethink.errors import RethinkError, cli_main
from rethink.fileio import write_text_atomic

NOISE_WORDS = {"true_labels": "true labels", "random_labels": "random labels"}
# what a row measures: column name -> the summary column it is the seed mean (and sd) of
MEASURED = {
    "train": "final_train_acc",
    "test": "final_test_acc",
    "best test": "best_test_acc",
    "online train": "train_avg_acc_global",
    # top-5 (Table 2): the label among the five largest logits (all of them for fewer classes)
    "top-5 train": "final_train_top5",
    "top-5 test": "final_test_top5",
    "best top-5 test": "best_test_top5",
}


def _pct(x):
    return None if x is None or pd.isna(x) else round(100 * float(x), 2)


def _diff(ours, theirs):
    return None if ours is None or theirs is None else round(ours - theirs, 2)


def _grouped(cells, keys):
    """Per row key (a tuple of `keys`' values): each MEASURED quantity's mean and sample sd
    over seeds in % (sd None for one seed), the seed count n, and whether every seed fitted."""
    rows = {}
    for key, group in cells.groupby(keys, dropna=False, sort=False):
        row = {"n": group["seed"].nunique(), "fitted": bool(group["converged"].all())}
        for name, column in MEASURED.items():
            values = pd.to_numeric(group[column], errors="coerce").dropna()
            row[name] = _pct(values.mean()) if len(values) else None
            row[f"{name} sd"] = _pct(values.std()) if len(values) > 1 else None
        rows[key] = row
    return rows


def _get(mine, name):
    return mine[name] if mine else None


def _ours(mine, name, label=None):
    """The columns of one measured quantity: `<label> (ours)` (the seed mean) and `<label> sd`."""
    label = label or name
    return {f"{label} (ours)": _get(mine, name), f"{label} sd": _get(mine, f"{name} sd")}


def _in_paper_order(ours, theirs):
    """Row keys: the paper's rows in its order, then ours that the paper does not have."""
    return list(dict.fromkeys([*theirs, *ours]))


def table1(cells):
    """Next to the paper's values, and each row's test-accuracy effect: its test accuracy minus
    that of the same model on true labels without random crop or weight decay (so a row shows
    what crop, weight decay or random labels did), ours and the paper's."""
    stand_in = paper.stand_in(cells, "table1")
    cells = metrics.with_switches(cells)
    ours = _grouped(cells, ["arch_name", "crop", "wd", "noise"])
    ours_test = {key: r["test"] for key, r in ours.items()}
    paper_test = {key: v[1] for key, v in paper.TABLE1.items()}
    rows = []
    for key in _in_paper_order(ours, paper.TABLE1):
        (arch, crop, wd, noise), mine = key, ours.get(key)
        theirs = paper.TABLE1.get(key, (None, None))
        plain = (arch, False, False, "true_labels")
        rows.append({
            "model": arch + ("" if noise == "true_labels" else f", {NOISE_WORDS.get(noise, noise)}"),
            "random crop": _yn(crop), "weight decay": _yn(wd),
            **_ours(mine, "train"), "train (paper)": theirs[0], "train diff": _diff(_get(mine, "train"), theirs[0]),
            **_ours(mine, "test"), "test (paper)": theirs[1], "test diff": _diff(_get(mine, "test"), theirs[1]),
            "test effect (ours)": _effect(ours_test, key, plain),
            "test effect (paper)": _effect(paper_test, key, plain),
            "fitted": _fitted(mine), "n": mine["n"] if mine else 0,
        })  # fmt: skip
    effects = (
        "test effect: test accuracy minus that of the same model on true labels without random crop or "
        "weight decay (points), i.e. what random crop, weight decay or random labels change"
    )
    return _against_paper(pd.DataFrame(rows), stand_in, "table1", effects)


def table2(cells):
    """Next to the paper's values, and what compares across settings: each regularizer's effect
    on test accuracy (vs the same labels without any) and the early-stopping gain (best minus
    final test accuracy), ours and the paper's."""
    stand_in = paper.stand_in(cells, "table2")
    cells = metrics.with_switches(cells)
    ours = _grouped(cells, ["noise", "aug", "dropout", "wd"])
    paper_test = {key: v[2] for key, v in paper.TABLE2.items()}
    ours_test = {key: r["test"] for key, r in ours.items()}
    rows = []
    for key in _in_paper_order(ours, paper.TABLE2):
        noise, aug, dropout, wd = key
        mine, plain = ours.get(key), (noise, False, False, False)
        theirs = paper.TABLE2.get(key, (None,) * 6)
        rows.append({
            "labels": NOISE_WORDS.get(noise, noise).split()[0], "aug": _yn(aug), "dropout": _yn(dropout), "wd": _yn(wd),
            **_ours(mine, "train", "top-1 train"), "top-1 train (paper)": theirs[0],
            "train diff": _diff(_get(mine, "train"), theirs[0]),
            **_ours(mine, "test", "top-1 test"), "top-1 test (paper)": theirs[2],
            "test diff": _diff(_get(mine, "test"), theirs[2]),
            **_ours(mine, "best test"), "best test (paper)": theirs[4],
            **_ours(mine, "top-5 train"), "top-5 train (paper)": theirs[1],
            "top-5 train diff": _diff(_get(mine, "top-5 train"), theirs[1]),
            **_ours(mine, "top-5 test"), "top-5 test (paper)": theirs[3],
            "top-5 test diff": _diff(_get(mine, "top-5 test"), theirs[3]),
            **_ours(mine, "best top-5 test"), "best top-5 test (paper)": theirs[5],
            "regularizer effect (ours)": _effect(ours_test, key, plain),
            "regularizer effect (paper)": _effect(paper_test, key, plain),
            "early-stopping gain (ours)": _diff(_get(mine, "best test"), _get(mine, "test")),
            "early-stopping gain (paper)": _diff(theirs[4], theirs[2]),
            "fitted": _fitted(mine), "n": mine["n"] if mine else 0,
        })  # fmt: skip
    effects = (
        "each regularizer's effect on top-1 test accuracy (points, vs the same labels without regularizers) "
        "and the early-stopping gain (best minus final top-1 test accuracy, points)"
    )
    return _against_paper(pd.DataFrame(rows), stand_in, "table2", effects)


def _effect(values, key, base):
    """The value of row `key` minus that of row `base` (points), None where either is missing."""
    return _diff(values.get(key), values.get(base))


EFFECTS = ("effect (", "gain (")  # column names of the comparisons that hold across settings


def _against_paper(frame, stand_in, name, effects):
    """-> (frame, note). On the paper's setting (stand_in None) the frame as it is. On a stand-in
    every `diff` column goes (ours minus the paper's would compare datasets and scales, not
    results) and the paper's absolute values are labelled with the dataset they were measured on,
    or left out where paper.SETTINGS says they do not compare at all; `effects` says what the
    effect columns, which stay, compare."""
    if stand_in is None:
        return frame, ""
    setting = paper.SETTINGS[name]
    absolute = [c for c in frame if c.endswith("(paper)") and not any(e in c for e in EFFECTS)]
    frame = frame.drop(columns=[c for c in frame if c.endswith(" diff")])
    if setting["absolute"]:
        label = f"(paper, {setting['label']})"
        frame = frame.rename(columns={c: c.replace("(paper)", label) for c in absolute})
        shown = f"the paper's are shown as measured on {setting['label']}, not set against ours"
    else:
        frame = frame.drop(columns=absolute)
        shown = "the paper's are left out"
    return frame, (
        f" {stand_in}: absolute accuracies do not compare across datasets, class counts and scales, so {shown}; "
        f"compared are {effects}."
    )


def table4(cells):
    """Random labels fitted with one regularizer, next to the paper's values, and each row's
    training-accuracy effect: its training accuracy minus that of the same model on random labels
    without regularizers (the paper's: its Table 1 random-label row), ours and the paper's."""
    stand_in = paper.stand_in(cells, "table4")
    cells = metrics.with_switches(cells)
    cells = cells.assign(regularizer_kind=cells.apply(_table4_kind, axis=1))
    ours = _grouped(cells, ["arch_name", "regularizer_kind"])
    ours_train = {key: r["train"] for key, r in ours.items()}
    paper_train = {  # the paper's Table 4, and its baselines from Table 1 (no crop, no weight decay)
        **{(arch, "none"): v[0] for (arch, crop, wd, noise), v in paper.TABLE1.items()
           if noise == "random_labels" and not (crop or wd)},
        **paper.TABLE4,
    }  # fmt: skip
    words = {"wd": "weight decay", "crop": "random cropping", "aug": "augmentation"}
    rows = []
    for key in _in_paper_order(ours, paper.TABLE4):
        mine, theirs, plain = ours.get(key), paper_train.get(key), (key[0], "none")
        rows.append({
            "model": key[0], "regularizer": words.get(key[1], key[1]),
            **_ours(mine, "train"), **_ours(mine, "online train"),
            "train (paper)": "failed to converge" if key in paper.TABLE4 and theirs is None else theirs,
            "online diff": _diff(_get(mine, "online train"), theirs),
            "train effect (ours)": _effect(ours_train, key, plain),
            "train effect (paper)": _effect(paper_train, key, plain),
            "fitted": _fitted(mine), "n": mine["n"] if mine else 0,
        })  # fmt: skip
    frame, note = _against_paper(
        pd.DataFrame(rows), stand_in, "table4",
        "train effect: training accuracy minus that of the same model on random labels without regularizers "
        "(points; the paper's from its Table 1), i.e. how much the regularizer hinders fitting random labels",
    )  # fmt: skip
    what = (
        " train: accuracy on the whole training set in eval mode at the end (what `fitted` checks); online "
        "train: the global average of online minibatch accuracy, the quantity the paper's Table 4 reports"
    )
    return frame, what + (", and the one `online diff` sets against the paper's." if stand_in is None else ".") + note


def _table4_kind(row):
    """Which single regularizer a cell uses, in Table 4's terms (or a combination of them)."""
    on = [name for name in ("wd", "crop", "aug", "dropout") if row[name]]
    return "+".join(on) if on else "none"


def _yn(flag):
    return "yes" if flag else "no"


def _fitted(mine):
    if mine is None:
        return "no cell"
    return "yes" if mine["fitted"] else "NOT FITTED"


def table3(kernel):
    """Kernel interpolation (section 5) from results/metrics/kernel.csv: one row per (kernel row,
    l2), matched to the paper by (dataset source, features, ridge or not), in the paper's order.
    norm: sqrt(trace(alpha^T K alpha)) of the solution (the RKHS norm of the interpolant)."""
    records = kernel.to_dict("records")
    ours = {(r["source"], r["features"], r["l2"] > 0, r["row"], r["l2"]): r for r in records}
    keys = [k for theirs in paper.TABLE3 for k in ours if k[:3] == theirs]
    keys += [k for k in ours if k not in keys]
    keys += [theirs for theirs in paper.TABLE3 if not any(k[:3] == theirs for k in ours)]
    rows = []
    for key in keys:
        mine = ours.get(key)
        error, norm = paper.TABLE3.get(key[:3], (None, None))
        rows.append({
            "dataset": mine["dataset"] if mine else key[0], "features": key[1],
            "l2": f"{mine['l2']:g}" if mine else ("small" if key[2] else "0"),
            "n train": mine["n_train"] if mine else None,
            "test error (ours)": _pct(mine["test_error"]) if mine else None, "test error (paper)": error,
            "diff": _diff(_pct(mine["test_error"]) if mine else None, error),
            "norm (ours)": round(mine["rkhs_norm"], 1) if mine else None, "norm (paper)": norm,
            "train error (ours)": _pct(mine["train_error"]) if mine else None,
        })  # fmt: skip
    note = (
        " Kernel rows: exact interpolation (l2 = 0) or ridge (K + l2 I) alpha = Y of one-hot labels with the "
        "Gaussian kernel exp(-gamma ||x - x'||^2), prediction argmax; norm = sqrt(trace(alpha^T K alpha)); "
        "rows of other datasets than the paper's (MNIST, CIFAR-10) have no paper values."
    )
    frame = pd.DataFrame(rows)
    return frame.astype({"n train": "Int64"}), note


TABLES = {name: globals()[name] for name in analysis.TABLES}


# ----------------------------------------------------------------------------- output


def _shown(frame):
    """The table as Markdown and LaTeX show it: blanks for missing values, and each `<x> (ours)`
    with its `<x> sd` column in one cell, `mean ± sd` (the CSV keeps the two numbers apart)."""
    cells = frame.astype(object).where(frame.notna(), "")
    for sd in [c for c in cells if c.endswith(" sd")]:
        mean = sd.removesuffix(" sd") + " (ours)"
        cells[mean] = [_text(m) + (f" ± {_text(d)}" if d != "" else "") for m, d in zip(cells[mean], cells[sd])]
    return cells.drop(columns=[c for c in cells if c.endswith(" sd")])


def to_markdown(frame, caption):
    cells = _shown(frame)
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(_text(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return f"{caption}\n\n" + "\n".join(lines) + "\n"


def to_latex(frame, caption):
    escape = lambda v: _text(v).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
    cells = _shown(frame)
    body = [" & ".join(escape(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(caption)}}}",
        r"\begin{tabular}{" + "l" * 3 + "r" * (len(cells.columns) - 3) + "}", r"\toprule",
        " & ".join(escape(c) for c in cells.columns) + r" \\", r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}", "",
    ])  # fmt: skip


def _text(value):
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_table(name, frame, note, provenance, out_prefix):
    out_prefix = pathlib.Path(out_prefix)
    caption = (
        f"{name}: ours vs the paper (%), from {provenance['cells']} cells of {provenance['config']}, "
        f"{provenance['seeds']} seed(s); ours: mean ± sample sd over the row's n seeds (sd from n = 2 on); "
        f"'NOT FITTED' rows did not reach the fitting threshold.{note}"
    )
    write_text_atomic(out_prefix.with_suffix(".csv"), frame.to_csv(index=False))
    write_text_atomic(out_prefix.with_suffix(".md"), to_markdown(frame, caption))
    write_text_atomic(out_prefix.with_suffix(".tex"), to_latex(frame, caption))
    write_text_atomic(out_prefix.with_suffix(".json"), json.dumps(dict(provenance, caption=caption), indent=2) + "\n")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.analysis.tables", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=analysis.TABLES)
    parser.add_argument("--metrics", required=True, help="results/metrics")
    parser.add_argument("--experiment", help="experiment whose cells to use (default: the table's name)")
    parser.add_argument("--out", required=True, help="output prefix; .csv .md .tex .json are written")
    args = parser.parse_args(argv)
    if args.table == "table3":
        kernel = pd.read_csv(paths.metrics_file(args.metrics, "kernel"))
        provenance = {
            "experiment": "table3",
            "config": metrics.membership(args.metrics)["config"],
            "cells": len(kernel),
            "cells_planned": len(kernel),
            "seeds": 1,
        }
        write_table("table3", *table3(kernel), provenance, args.out)
        return 0
    cells, provenance = metrics.experiment_cells(args.metrics, args.experiment or args.table)
    if cells.empty:
        raise RethinkError(f"experiment {args.experiment or args.table} has no finished cells in {args.metrics}")
    write_table(args.table, *TABLES[args.table](cells), provenance, args.out)
    print(f"{args.table}: wrote {args.out}.{{csv,md,tex,json}} from {provenance['cells']} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
