"""Figures 1a, 1b, 1c, 2a, 2b (from results/metrics/*) and 3 (from the model definition).

Each figure is written as PDF and PNG plus a JSON sidecar with its caption, provenance
(config, cells, seeds) and the plotted numbers (`series`). With several seeds a line is the
mean over seeds and a band (`--band`: min-max or mean +- 1 sd) shows their spread; the
caption says which band and how many seeds each line has.

    python -m rethink.analysis.figures fig1c --metrics results/metrics --band minmax --out results/figures/fig1c
"""

import argparse
import json
import pathlib
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; cluster nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from rethink.analysis import FIGURES, metrics, paper  # noqa: E402
from rethink.errors import RethinkError, cli_main  # noqa: E402
from rethink.fileio import atomic_path, write_text_atomic  # noqa: E402

NOISE_WORDS = {
    "true_labels": "true labels", "random_labels": "random labels", "shuffled_pixels": "shuffled pixels",
    "random_pixels": "random pixels", "gaussian": "Gaussian",
}  # fmt: skip


def _style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.15)
    plt.rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "legend.frameon": True})


def _models(frame):
    """`frame` with a `model` column (the paper's names), and those names in the paper's order."""
    frame = frame.assign(model=frame["arch_name"].map(lambda a: paper.ARCH_WORDS.get(a, a)))
    known = [w for w in paper.ARCH_WORDS.values() if w in set(frame["model"])]
    return frame, known + sorted(set(frame["model"]) - set(known))


def _records(frame):
    """Plotted numbers for the JSON sidecar (missing values as null)."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _seed_lines(ax, frame, line, order, x, y, band, marker=None):
    """One line per value of `line` (in `order`): the mean of `y` over seeds at each `x`, with
    a band of kind `band` where a point has more than one seed. -> the plotted numbers."""
    stats = metrics.over_seeds(frame, [line, x], y)
    for color, name in zip(sns.color_palette(n_colors=len(order)), order):
        rows = stats[stats[line] == name].sort_values(x)
        ax.plot(rows[x], rows["mean"], marker=marker, color=color, label=name)
        low, high = metrics.band(rows, band)
        if (rows["n"] > 1).any():
            ax.fill_between(rows[x], low, high, color=color, alpha=0.2, lw=0)
    low, high = metrics.band(stats, band)
    return _records(stats.assign(low=low, high=high))


def seeds_note(frame, line, band, spread="band"):
    """What a line and its `spread` are, and each line's seed count, e.g. 'line: mean over
    seeds, band: min-max over seeds; n = 2 seeds: AlexNet, MLP 1x512; n = 1 seed: Inception'."""
    counts = frame.groupby(line, sort=False)["seed"].nunique()
    by_n = {}
    for name, n in counts.items():
        by_n.setdefault(int(n), []).append(str(name))
    text = "; ".join(
        f"n = {n} seed{'s' if n > 1 else ''}: {', '.join(names)}" for n, names in sorted(by_n.items(), reverse=True)
    )
    return (f"line: mean over seeds, {spread}: {metrics.BANDS[band]}; " if counts.max() > 1 else "") + text


def fig1a(cells, curves, band):
    """Average training loss vs thousand steps under the five randomizations: the online loss
    (training mode, averaged over each epoch's minibatches), as the paper plots it."""
    loss = "train_avg_loss"
    data = curves.assign(thousand_steps=curves["step"] / 1000, condition=curves["noise"].map(NOISE_WORDS))
    data = data.dropna(subset=[loss])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    order = [w for n, w in NOISE_WORDS.items() if n in set(curves["noise"])]
    series = _seed_lines(ax, data, "condition", order, "thousand_steps", loss, band)
    ax.legend()
    # A spike (large learning rates, BatchNorm's running statistics in eval mode) would flatten
    # everything else: show up to 1.5x the untrained loss and say when something is cut off.
    top = 1.5 * curves.loc[curves["step"] == 0, "train_loss"].max()
    ax.set(xlabel="thousand steps", ylabel="average loss", title="(a) learning curves", ylim=(0, top))
    clipped = sum(r["mean"] > top for r in series)
    what = "Average training loss (online: training mode, mean over each epoch's minibatches)"
    note = f"; {clipped} point(s) above {top:.2f} are cut off" if clipped else ""
    caption = f"{what} vs thousand steps, one line per randomization; {seeds_note(data, 'condition', band)}{note}"
    return fig, caption, series


def fig1b(cells, curves, band):
    data, order = _models(metrics.relative_time_to_overfit(cells))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series = _seed_lines(ax, data, "model", order, "level", "relative_time", band, marker="o")
    ax.legend()
    missing = data[data["relative_time"].isna()]
    for _, row in missing.iterrows():  # not fitted: a cross on the axis, never silently dropped
        ax.plot(row["level"], 0, marker="x", color="0.3", ms=8, ls="none")
    ax.set(
        xlabel="label corruption",
        ylabel="time to overfit (relative to true labels)",
        title="(b) convergence slowdown",
        xlim=(-0.05, 1.05),
    )
    note = f"; x on the axis: {len(missing)} cell(s) that never fitted" if len(missing) else ""
    caption = (
        "Steps until training accuracy first reaches the threshold, relative to p = 0 of the same seed; "
        f"{seeds_note(data, 'model', band)}{note}"
    )
    return fig, caption, series


def fig1c(cells, curves, band):
    data, order = _models(cells.assign(test_error=1 - cells["final_test_acc"]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series = _seed_lines(ax, data, "model", order, "level", "test_error", band, marker="o")
    classes = int(cells["num_classes"].iloc[0])
    ax.axhline(1 - 1 / classes, color="0.5", ls="--", lw=1, label="chance")
    ax.set(
        xlabel="label corruption",
        ylabel="test error",
        title="(c) generalization error growth",
        xlim=(-0.05, 1.05),
        ylim=(0, 1),
    )
    ax.legend()
    caption = (
        f"Test error (clean test set) at the end of training vs label corruption; {seeds_note(data, 'model', band)}"
    )
    return fig, caption, series


def _band_plot(curves, condition_column, title, band):
    """Train/test accuracy (eval mode, whole split) vs thousand steps at each evaluation;
    shaded: test accuracy up to its running maximum; with several seeds, means over seeds and
    error bars of kind `band`."""
    data = curves.dropna(subset=["test_acc"]).assign(thousand_steps=curves["step"] / 1000)
    conditions = list(dict.fromkeys(data[condition_column]))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    palette = sns.color_palette(n_colors=len(conditions))
    series = []
    for color, condition in zip(palette, conditions):
        rows = data[data[condition_column] == condition]
        for split, ls in (("train", "--"), ("test", "-")):
            stats = metrics.over_seeds(rows, ["thousand_steps"], f"{split}_acc").sort_values("thousand_steps")
            low, high = metrics.band(stats, band)
            ax.plot(stats["thousand_steps"], stats["mean"], color=color, ls=ls, label=f"{condition} ({split})")
            if (stats["n"] > 1).any():
                ax.errorbar(
                    stats["thousand_steps"],
                    stats["mean"],
                    yerr=[stats["mean"] - low, high - stats["mean"]],
                    color=color,
                    ls="none",
                    elinewidth=0.8,
                    capsize=1.5,
                )
            if split == "test":
                best = stats["mean"].cummax()
                ax.fill_between(stats["thousand_steps"], stats["mean"], best, color=color, alpha=0.25, lw=0)
            series += _records(stats.assign(condition=condition, split=split, low=low, high=high))
    ax.set(xlabel="thousand steps", ylabel="accuracy", title=title, ylim=(0, 1.02))
    ax.legend(fontsize="small", loc="lower right")
    return fig, series


def regularizer_words(row):
    switches = [
        w for w, on in (("aug", row["crop"] or row["aug"]), ("wd", row["wd"]), ("dropout", row["dropout"])) if on
    ]
    if not switches:
        return "no regularizer"
    return "w/ " + ", ".join(switches) if "aug" in switches else "w/o aug, " + ", ".join(switches)


def fig2a(cells, curves, band):
    named = metrics.with_switches(cells)
    words = dict(zip(named["cell"], named.apply(regularizer_words, axis=1)))
    data = curves.assign(condition=curves["cell"].map(words))
    stand_in = paper.stand_in(cells, "fig2a")
    models = ", ".join(_models(cells)[1])
    fig, series = _band_plot(data, "condition", f"(a) {models}" + (" (stand-in)" if stand_in else ""), band)
    caption = (
        "Train (dashed) and test accuracy; shaded: the gain early stopping could give (test up to its running "
        f"maximum); {seeds_note(data, 'condition', band, 'error bars')}"
    )
    return fig, caption + (f". {stand_in}" if stand_in else ""), series


def fig2b(cells, curves, band):
    named, _ = _models(cells)
    data = curves.assign(condition=curves["cell"].map(dict(zip(named["cell"], named["model"]))))
    fig, series = _band_plot(data, "condition", "(b) BatchNorm", band)
    caption = (
        "Inception with and without BatchNorm, no explicit regularizer; shaded: early-stopping gain; "
        f"{seeds_note(data, 'condition', band, 'error bars')}"
    )
    return fig, caption, series


PLOTS = {name: globals()[name] for name in FIGURES if name != "fig3"}  # fig3 draws the model, below


# ----------------------------------------------------------------------------- Figure 3


def inception_layers(input_shape=(3, 28, 28), width=1.0):
    """(label, output shape) of each top-level block of the small Inception, read from the model."""
    import torch

    from rethink.models import build_model
    from rethink.models.small import Conv, Downsample, Inception

    model = build_model("inception", input_shape, 10, width)
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[1:])))
        for k, m in enumerate(model)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()

    def label(m):
        if isinstance(m, Conv):
            return f"Conv {m.conv.kernel_size[0]}x{m.conv.kernel_size[1]}, {m.conv.out_channels}, stride {m.s}"
        if isinstance(m, Inception):
            return f"Inception ({m.b1.conv.out_channels}, {m.b3.conv.out_channels})"
        if isinstance(m, Downsample):
            return f"Downsample ({m.conv.conv.out_channels})"
        if isinstance(m, torch.nn.AdaptiveAvgPool2d):
            return "Global average pool"
        if isinstance(m, torch.nn.Linear):
            return f"Linear {m.out_features}"
        return type(m).__name__

    shown = [k for k, m in enumerate(model) if not isinstance(m, (torch.nn.Dropout, torch.nn.Flatten))]
    return [(label(model[k]), shapes[k]) for k in shown]


def fig3():
    layers = inception_layers()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(layers) + 1.5))
    for i, (text, shape) in enumerate(layers):
        y = len(layers) - i
        ax.add_patch(plt.Rectangle((0.05, y - 0.35), 0.5, 0.7, fc="#dce9f5", ec="0.2"))
        ax.text(0.3, y, text, ha="center", va="center", fontsize=9)
        ax.text(
            0.6, y, "x".join(map(str, shape[::-1] if len(shape) == 3 else shape)), va="center", fontsize=8, color="0.3"
        )
        if i:
            ax.annotate("", (0.3, y + 0.35), (0.3, y + 0.65), arrowprops={"arrowstyle": "<-", "color": "0.3"})
    definitions = (
        "Conv(k, C, s): k x k conv, C filters, stride s, same padding -> BatchNorm (no scale/shift) -> ReLU\n"
        "Inception(C1, C3) = concat[Conv(1, C1, 1), Conv(3, C3, 1)]\n"
        "Downsample(C3) = concat[Conv(3, C3, 2), max-pool 3x3 stride 2]"
    )
    ax.text(0.05, 0.2, definitions, fontsize=7.5, va="top", family="monospace")
    ax.set(xlim=(0, 1.25), ylim=(-0.8, len(layers) + 0.7))
    ax.axis("off")
    ax.set_title("Small Inception (28x28x3 input), generated from rethink.models")
    return (
        fig,
        "The small Inception of the paper's Figure 3, drawn from the model definition (output H x W x C per block)",
    )


# ----------------------------------------------------------------------------- output


def save(fig, out_prefix, caption, provenance, series=()):
    """PDF and PNG, and the JSON sidecar; a data figure carries its caption (what a line and a
    band are, how many seeds) under the plot too, so the picture never travels without it."""
    out_prefix = pathlib.Path(out_prefix)
    if provenance:
        caption += (
            f". {provenance['cells']} of {provenance['cells_planned']} planned cells, "
            f"{provenance['seeds']} seed(s), config {provenance['config']}"
        )
        fig.text(
            0,
            0,
            textwrap.fill(caption, 95),
            fontsize=6.5,
            va="top",
            color="0.25",
            transform=fig.transFigure + ScaledTranslation(0, -0.08, fig.dpi_scale_trans),
        )
    for ext in ("pdf", "png"):
        with atomic_path(out_prefix.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext)
    plt.close(fig)
    sidecar = dict(provenance, caption=caption, series=list(series))
    write_text_atomic(out_prefix.with_suffix(".json"), json.dumps(sidecar, indent=2, default=_json) + "\n")


def _json(value):
    return value.item()  # numpy scalars in the plotted series


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.analysis.figures", description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=FIGURES)
    parser.add_argument("--metrics", help="results/metrics (not needed for fig3)")
    parser.add_argument("--experiment", help="experiment whose cells to plot (default: the figure's name)")
    parser.add_argument(
        "--band",
        choices=sorted(metrics.BANDS),
        default="minmax",
        help="spread over seeds around each mean line (config key figures.band)",
    )
    parser.add_argument("--out", required=True, help="output prefix; .pdf .png .json are written")
    args = parser.parse_args(argv)
    _style()
    if args.figure == "fig3":
        fig, caption = fig3()
        save(fig, args.out, caption, {})
    else:
        if not args.metrics:
            raise RethinkError(f"{args.figure} needs --metrics")
        experiment = args.experiment or args.figure
        cells, provenance = metrics.experiment_cells(args.metrics, experiment)
        if cells.empty:
            raise RethinkError(f"experiment {experiment} has no finished cells in {args.metrics}")
        curves = metrics.read(args.metrics, "curves_parquet")
        curves = curves[curves["cell"].isin(cells["cell"])].reset_index(drop=True)
        fig, caption, series = PLOTS[args.figure](cells, curves, args.band)
        save(fig, args.out, caption, provenance, series)
    print(f"{args.figure}: wrote {args.out}.{{pdf,png,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
