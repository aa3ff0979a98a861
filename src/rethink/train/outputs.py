"""What a cell's directory holds while and after it trains: history.csv (one row per epoch,
appended as the epoch ends), summary.json (written last, atomically: the "finished" signal the
workflow waits for) and train.log. Imports no torch: readers of these files may import it.

history.csv while a cell trains: its header and rows are the checkpoint's history, rewritten
atomically when a run starts or resumes (so a resumed cell's file is cut back to where its
checkpoint was saved; rows appended after that save by a killed run are dropped), then one row
appended per epoch. Each row is written by one open-append-close: a reader on another machine of
a network file system sees it once the file is closed (NFS's close-to-open consistency). No
fsync: the checkpoint (fsynced) is the durable record, and the file is rewritten from it at the
next start; a row lost to a crashed node would be rewritten then. At the end the file is
rewritten once more from the finished history, to the same bytes.
"""

import csv
import io
import json
import math
import time

from rethink import paths
from rethink.fileio import write_text_atomic
from rethink.train import cell as cells

HISTORY_COLUMNS = (
    "step",
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "train_top5",
    "test_top5",
    "train_avg_loss",
    "train_avg_acc",
    "elapsed_s",
)
# empty where not evaluated; top-5: the label is among the five largest logits (Table 2)
EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "train_top5", "test_top5")


def csv_text(rows, header=True):
    """history.csv's text of `rows`: floats as repr (exact, so histories compare bit for bit),
    None as empty."""
    text = io.StringIO()
    writer = csv.DictWriter(text, HISTORY_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


class History:
    """A cell's history.csv as it trains."""

    def __init__(self, out_dir):
        self.path = paths.cell_file(out_dir, "history")

    def rewrite(self, rows):
        write_text_atomic(self.path, csv_text(rows))

    def append(self, row):
        with open(self.path, "a") as f:
            f.write(csv_text([row], header=False))


def write(out_dir, history, summary):
    """A finished cell's outputs, summary.json last."""
    History(out_dir).rewrite(history)
    write_text_atomic(paths.cell_file(out_dir, "summary"), json.dumps(summary, indent=2, allow_nan=False) + "\n")


def finite(value):
    return value if value is None or math.isfinite(value) else None  # JSON has no NaN


def summary(cell, history, reason, **run):
    """summary.json: the cell, what its history shows (final and best metrics, steps to fit, the
    stop), and `run`, what the loop knows of the run (steps, epochs, model, data, device, versions);
    together every field of cell.RESULT_KEYS."""
    evaluated = [r for r in history if r["train_acc"] is not None]
    last, fitted, online = evaluated[-1], reason == "fit_threshold", history[-1]
    best = max(evaluated, key=lambda r: r["test_acc"])  # the first of equal maxima
    avg_accs = [r["train_avg_acc"] for r in history if r["train_avg_acc"] is not None]
    return cells.summary(
        cell,
        final_train_loss=finite(last["train_loss"]), final_train_acc=last["train_acc"],
        final_test_loss=finite(last["test_loss"]), final_test_acc=last["test_acc"],
        final_train_top5=last["train_top5"], final_test_top5=last["test_top5"],
        best_test_top5=max(r["test_top5"] for r in evaluated),
        final_train_avg_loss=finite(online["train_avg_loss"]), final_train_avg_acc=online["train_avg_acc"],
        train_avg_acc_global=sum(avg_accs) / len(avg_accs) if avg_accs else None,
        best_test_acc=best["test_acc"], best_test_step=best["step"], best_test_epoch=best["epoch"],
        steps_to_fit=last["step"] if fitted else None, epochs_to_fit=last["epoch"] if fitted else None,
        converged=fitted, stop_reason=reason, wall_s=online["elapsed_s"],
        **dict(run, param_norm=finite(run["param_norm"])),
    )  # fmt: skip


def epoch_line(row):
    """train.log's line for a history row."""
    text = " ".join(
        f"{k.replace('_', ' ')} {row[k]:.4f}"
        for k in (*EVAL_COLUMNS, "train_avg_loss", "train_avg_acc")
        if row[k] is not None
    )
    return f"epoch {row['epoch']:4d} step {row['step']:7d} lr {row['lr']:.4g} {text} elapsed {row['elapsed_s']:.1f}s"


class Log:
    """train.log, appended to across resumes; each line also echoed to stdout."""

    def __init__(self, out_dir, echo=True):
        self.path, self.echo = paths.cell_file(out_dir, "log"), echo

    def __call__(self, message):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)
