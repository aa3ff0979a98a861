"""Tables 1, 2 and 4: our numbers next to the paper's, as CSV, Markdown and LaTeX (booktabs).

Rows come from one experiment's cells (results/metrics/experiments.json says which) and are
matched to the paper by what the cells do, read from their resolved hyper-parameters. With
several seeds a value is the mean over seeds and `n` says how many. A row whose cells did not
reach the fitting threshold is marked in the `fitted` column, never dropped; a paper row with
no cell is listed with our values empty.

    python -m rethink.analysis.tables table1 --metrics results/metrics --out results/tables/table1
"""

import argparse
import json
import pathlib
import sys

import pandas as pd

from rethink.analysis import metrics, paper
from rethink.errors import RethinkError, cli_main
from rethink.fileio import write_text_atomic

NOISE_WORDS = {"true_labels": "true labels", "random_labels": "random labels"}


def _pct(x):
    return None if x is None or pd.isna(x) else round(100 * float(x), 2)


def _diff(ours, theirs):
    return None if ours is None or theirs is None else round(ours - theirs, 2)


def _grouped(cells, keys):
    """Per row key (a tuple of `keys`' values): the mean over seeds of its metrics, the seed
    count and whether every seed fitted."""
    agg = cells.groupby(keys, dropna=False, sort=False).agg(
        train=("final_train_acc", "mean"), test=("final_test_acc", "mean"),
        best_test=("best_test_acc", "mean"), n=("seed", "nunique"), fitted=("converged", "all"),
    )  # fmt: skip
    return {tuple(r[k] for k in keys): r for r in agg.reset_index().to_dict("records")}


def table1(cells):
    cells = metrics.with_switches(cells)
    ours = _grouped(cells, ["arch_name", "crop", "wd", "noise"])
    keys = list(dict.fromkeys([*ours, *paper.TABLE1]))
    rows = []
    for arch, crop, wd, noise in keys:
        mine, theirs = ours.get((arch, crop, wd, noise)), paper.TABLE1.get((arch, crop, wd, noise), (None, None))
        train, test = (_pct(mine["train"]), _pct(mine["test"])) if mine else (None, None)
        rows.append({
            "model": arch + ("" if noise == "true_labels" else f", {NOISE_WORDS.get(noise, noise)}"),
            "random crop": _yn(crop), "weight decay": _yn(wd),
            "train (ours)": train, "train (paper)": theirs[0], "train diff": _diff(train, theirs[0]),
            "test (ours)": test, "test (paper)": theirs[1], "test diff": _diff(test, theirs[1]),
            "fitted": _fitted(mine), "n": mine["n"] if mine else 0,
        })  # fmt: skip
    return pd.DataFrame(rows)


def table2(cells):
    cells = metrics.with_switches(cells)
    ours = _grouped(cells, ["noise", "aug", "dropout", "wd"])
    rows = []
    for key in dict.fromkeys([*ours, *paper.TABLE2]):
        noise, aug, dropout, wd = key
        mine = ours.get(key)
        theirs = paper.TABLE2.get(key, (None,) * 6)
        train, test, best = (_pct(mine["train"]), _pct(mine["test"]), _pct(mine["best_test"])) if mine else (None,) * 3
        rows.append({
            "labels": NOISE_WORDS.get(noise, noise).split()[0], "aug": _yn(aug), "dropout": _yn(dropout), "wd": _yn(wd),
            "top-1 train (ours)": train, "top-1 train (paper)": theirs[0], "train diff": _diff(train, theirs[0]),
            "top-1 test (ours)": test, "top-1 test (paper)": theirs[2], "test diff": _diff(test, theirs[2]),
            "best test (ours)": best, "best test (paper)": theirs[4],
            "top-5 train (paper)": theirs[1], "top-5 test (paper)": theirs[3],
            "fitted": _fitted(mine), "n": mine["n"] if mine else 0,
        })  # fmt: skip
    return pd.DataFrame(rows)


def table4(cells):
    cells = metrics.with_switches(cells)
    cells = cells.assign(regularizer_kind=cells.apply(_table4_kind, axis=1))
    ours = _grouped(cells, ["arch_name", "regularizer_kind"])
    words = {"wd": "weight decay", "crop": "random cropping", "aug": "augmentation"}
    rows = []
    for key in dict.fromkeys([*ours, *paper.TABLE4]):
        mine, theirs = ours.get(key), paper.TABLE4.get(key)
        train = _pct(mine["train"]) if mine else None
        rows.append({
            "model": key[0], "regularizer": words.get(key[1], key[1]),
            "train (ours)": train, "train (paper)": "failed to converge" if key in paper.TABLE4 and theirs is None else theirs,
            "train diff": _diff(train, theirs), "fitted": _fitted(mine), "n": mine["n"] if mine else 0,
        })  # fmt: skip
    return pd.DataFrame(rows)


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
    """Kernel interpolation test error (section 5) from results/metrics/kernel.csv, whose rows
    (dataset, features, test_error as a fraction) the kernel step writes."""
    ours = {(r["dataset"], r["features"]): _pct(r["test_error"]) for r in kernel.to_dict("records")}
    rows = []
    for key in dict.fromkeys([*ours, *paper.TABLE3]):
        mine, theirs = ours.get(key), paper.TABLE3.get(key)
        rows.append({"dataset": key[0], "features": key[1], "test error (ours)": mine,
                     "test error (paper)": theirs, "diff": _diff(mine, theirs)})
    return pd.DataFrame(rows)


TABLES = {"table1": table1, "table2": table2, "table3": table3, "table4": table4}


# ----------------------------------------------------------------------------- output


def to_markdown(frame, caption):
    cells = frame.astype(object).where(frame.notna(), "")
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_text(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return f"{caption}\n\n" + "\n".join(lines) + "\n"


def to_latex(frame, caption):
    escape = lambda v: _text(v).replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    cells = frame.astype(object).where(frame.notna(), "")
    body = [" & ".join(escape(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(caption)}}}",
        r"\begin{tabular}{" + "l" * 3 + "r" * (len(frame.columns) - 3) + "}", r"\toprule",
        " & ".join(escape(c) for c in frame.columns) + r" \\", r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}", "",
    ])  # fmt: skip


def _text(value):
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_table(name, frame, provenance, out_prefix):
    out_prefix = pathlib.Path(out_prefix)
    caption = (f"{name}: ours vs the paper (%), from {provenance['cells']} cells of {provenance['config']}, "
               f"{provenance['seeds']} seed(s) per row; 'NOT FITTED' rows did not reach the fitting threshold.")
    write_text_atomic(out_prefix.with_suffix(".csv"), frame.to_csv(index=False))
    write_text_atomic(out_prefix.with_suffix(".md"), to_markdown(frame, caption))
    write_text_atomic(out_prefix.with_suffix(".tex"), to_latex(frame, caption))
    write_text_atomic(out_prefix.with_suffix(".json"), json.dumps(dict(provenance, caption=caption), indent=2) + "\n")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.analysis.tables", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--metrics", required=True, help="results/metrics")
    parser.add_argument("--experiment", help="experiment whose cells to use (default: the table's name)")
    parser.add_argument("--out", required=True, help="output prefix; .csv .md .tex .json are written")
    args = parser.parse_args(argv)
    if args.table == "table3":
        kernel = pd.read_csv(pathlib.Path(args.metrics) / "kernel.csv")
        provenance = {"experiment": "table3", "config": metrics.membership(args.metrics)["config"],
                      "cells": len(kernel), "cells_planned": len(kernel), "seeds": 1}
        write_table("table3", table3(kernel), provenance, args.out)
        return 0
    cells, provenance = metrics.experiment_cells(args.metrics, args.experiment or args.table)
    if cells.empty:
        raise RethinkError(f"experiment {args.experiment or args.table} has no finished cells in {args.metrics}")
    write_table(args.table, TABLES[args.table](cells), provenance, args.out)
    print(f"{args.table}: wrote {args.out}.{{csv,md,tex,json}} from {provenance['cells']} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
