"""Cells -> results/metrics/summary.{csv,parquet} (one row per cell: every wildcard, every
resolved hyper-parameter as `hp_<name>`, every result) and curves.{csv,parquet} (one row per
epoch of history.csv, keyed by the same cell columns).

    python -m rethink.analysis.aggregate --summaries results/cells/.../summary.json ... --out-dir results/metrics
"""

import argparse
import json
import pathlib
import sys

import pandas as pd

from rethink import paths
from rethink.errors import RethinkError, cli_main
from rethink.fileio import atomic_path

KEYS = ("cell", "dataset", "arch_name", "arch", "width", "regularizer", "noise", "level", "seed")
# Online numbers (the mean over an epoch's minibatches, in training mode): None where a cell
# stopped before its first epoch, which would leave the column without a numeric type
ONLINE_SUMMARY = ("final_train_avg_acc", "final_train_avg_loss", "train_avg_acc_global")


def summary_row(summary):
    """Flatten one summary.json: hyper-parameters as hp_<name>, lists as JSON text."""
    row = {k: v for k, v in summary.items() if k != "hparams"}
    row.update({f"hp_{k}": v for k, v in summary["hparams"].items()})
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()}


def load_cell(summary_path):
    summary_path = pathlib.Path(summary_path)
    try:
        summary = json.loads(summary_path.read_text())
        curves = pd.read_csv(paths.cell_file(summary_path.parent, "history"))
    except (OSError, ValueError) as err:
        raise RethinkError(f"{summary_path.parent}: unreadable cell results ({err}); rerun that cell") from None
    for key in KEYS:
        curves.insert(KEYS.index(key), key, summary[key])
    return summary_row(summary), curves


def aggregate(summary_paths):
    rows, curves = zip(*(load_cell(p) for p in summary_paths))
    summary = pd.DataFrame(list(rows)).sort_values("cell", kind="stable").reset_index(drop=True)
    summary = summary.astype(dict.fromkeys(ONLINE_SUMMARY, float))  # None -> NaN
    columns = [k for k in KEYS if k in summary] + [c for c in summary if c not in KEYS]
    curves = pd.concat(curves, ignore_index=True)
    return summary[columns], curves.sort_values(["cell", "step"], kind="stable").reset_index(drop=True)


def write(frame, path):
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.analysis.aggregate", description=__doc__.splitlines()[0])
    parser.add_argument("--summaries", nargs="+", required=True, help="each cell's summary.json")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    summary, curves = aggregate(args.summaries)
    out = pathlib.Path(args.out_dir)
    for name, frame in (("summary", summary), ("curves", curves)):
        for ext in ("csv", "parquet"):
            write(frame, paths.metrics_file(out, f"{name}_{ext}"))
    print(f"aggregate: {len(summary)} cells, {len(curves)} epochs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
