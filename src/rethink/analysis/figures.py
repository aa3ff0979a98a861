"""Figures 1a, 1b, 1c, 2a, 2b (from results/metrics/*) and 3 (from the model definition).

Each figure is written as PDF and PNG plus a JSON sidecar with its caption and provenance
(config, cells, seeds). With several seeds, lines are means with a 95% confidence band.

    python -m rethink.analysis.figures fig1c --metrics results/metrics --out results/figures/fig1c
"""

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # files only; cluster nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from rethink.analysis import metrics  # noqa: E402
from rethink.errors import RethinkError, cli_main  # noqa: E402
from rethink.fileio import atomic_path, write_text_atomic  # noqa: E402

NOISE_WORDS = {
    "true_labels": "true labels", "random_labels": "random labels", "shuffled_pixels": "shuffled pixels",
    "random_pixels": "random pixels", "gaussian": "Gaussian",
}  # fmt: skip
ARCH_WORDS = {
    "inception": "Inception", "inception_nobn": "Inception w/o BatchNorm", "alexnet": "AlexNet",
    "mlp_1x512": "MLP 1x512", "mlp_3x512": "MLP 3x512", "inception_v3": "Inception V3",
}  # fmt: skip


def _style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.15)
    plt.rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "legend.frameon": True})


def _errorbar(frame):
    return ("ci", 95) if frame["seed"].nunique() > 1 else None


def _arch(frame):
    return frame.assign(model=frame["arch_name"].map(lambda a: ARCH_WORDS.get(a, a)))


def fig1a(cells, curves):
    """Average training loss vs thousand steps under the five randomizations."""
    data = curves.assign(thousand_steps=curves["step"] / 1000, condition=curves["noise"].map(NOISE_WORDS))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    order = [w for n, w in NOISE_WORDS.items() if n in set(curves["noise"])]
    sns.lineplot(data=data, x="thousand_steps", y="train_loss", hue="condition", hue_order=order,
                 errorbar=_errorbar(curves), ax=ax)
    # Early spikes (large learning rates) would flatten everything else: show up to 1.5x the
    # untrained loss and say so when something is cut off.
    top = 1.5 * data.loc[data["step"] == 0, "train_loss"].max()
    ax.set(xlabel="thousand steps", ylabel="average loss", title="(a) learning curves", ylim=(0, top))
    clipped = int((data["train_loss"] > top).sum())
    note = f"; {clipped} evaluation(s) above {top:.2f} are cut off" if clipped else ""
    return fig, "Training loss (whole training set, eval mode) vs thousand steps, one line per randomization" + note


def fig1b(cells, curves):
    data = _arch(metrics.relative_time_to_overfit(cells))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.lineplot(data=data, x="level", y="relative_time", hue="model", marker="o", errorbar=_errorbar(cells), ax=ax)
    missing = data[data["relative_time"].isna()]
    for _, row in missing.iterrows():  # not fitted: an open marker on the axis, never silently dropped
        ax.plot(row["level"], 0, marker="x", color="0.3", ms=8, ls="none")
    ax.set(xlabel="label corruption", ylabel="time to overfit (relative to true labels)",
           title="(b) convergence slowdown", xlim=(-0.05, 1.05))
    note = f"; x on the axis: {len(missing)} cell(s) that never fitted" if len(missing) else ""
    return fig, "Steps until training accuracy first reaches the threshold, relative to p = 0" + note


def fig1c(cells, curves):
    data = _arch(cells.assign(test_error=1 - cells["final_test_acc"]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.lineplot(data=data, x="level", y="test_error", hue="model", marker="o", errorbar=_errorbar(cells), ax=ax)
    classes = int(cells["num_classes"].iloc[0])
    ax.axhline(1 - 1 / classes, color="0.5", ls="--", lw=1, label="chance")
    ax.set(xlabel="label corruption", ylabel="test error", title="(c) generalization error growth",
           xlim=(-0.05, 1.05), ylim=(0, 1))
    ax.legend()
    return fig, "Test error (clean test set) at the end of training vs label corruption"


def _band_plot(curves, condition_column, title):
    """Train/test accuracy vs thousand steps; shaded: test accuracy up to its running maximum."""
    data = curves.assign(thousand_steps=curves["step"] / 1000)
    conditions = list(dict.fromkeys(data[condition_column]))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    palette = sns.color_palette(n_colors=len(conditions))
    for color, condition in zip(palette, conditions):
        rows = data[data[condition_column] == condition]
        mean = rows.groupby("thousand_steps")[["train_acc", "test_acc"]].mean().reset_index()
        best = mean["test_acc"].cummax()
        ax.plot(mean["thousand_steps"], mean["train_acc"], color=color, ls="--", label=f"{condition} (train)")
        ax.plot(mean["thousand_steps"], mean["test_acc"], color=color, label=f"{condition} (test)")
        ax.fill_between(mean["thousand_steps"], mean["test_acc"], best, color=color, alpha=0.25, lw=0)
    ax.set(xlabel="thousand steps", ylabel="accuracy", title=title, ylim=(0, 1.02))
    ax.legend(fontsize="small", loc="lower right")
    return fig


def regularizer_words(row):
    switches = [w for w, on in (("aug", row["crop"] or row["aug"]), ("wd", row["wd"]), ("dropout", row["dropout"])) if on]
    if not switches:
        return "no regularizer"
    return "w/ " + ", ".join(switches) if "aug" in switches else "w/o aug, " + ", ".join(switches)


def fig2a(cells, curves):
    named = metrics.with_switches(cells)
    words = dict(zip(named["cell"], named.apply(regularizer_words, axis=1)))
    fig = _band_plot(curves.assign(condition=curves["cell"].map(words)), "condition",
                     f"(a) {ARCH_WORDS.get(cells['arch_name'].iloc[0], cells['arch_name'].iloc[0])}")
    return fig, "Train (dashed) and test accuracy; shaded: the gain early stopping could give (test up to its running maximum)"


def fig2b(cells, curves):
    words = {c: ARCH_WORDS.get(a, a) for c, a in zip(cells["cell"], cells["arch_name"])}
    fig = _band_plot(curves.assign(condition=curves["cell"].map(words)), "condition", "(b) BatchNorm")
    return fig, "Inception with and without BatchNorm, no explicit regularizer; shaded: early-stopping gain"


FIGURES = {"fig1a": fig1a, "fig1b": fig1b, "fig1c": fig1c, "fig2a": fig2a, "fig2b": fig2b}


# ----------------------------------------------------------------------------- Figure 3


def inception_layers(input_shape=(3, 28, 28), width=1.0):
    """(label, output shape) of each top-level block of the small Inception, read from the model."""
    import torch

    from rethink.models import build_model
    from rethink.models.small import Conv, Downsample, Inception

    model = build_model("inception", input_shape, 10, width)
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[1:])))
             for k, m in enumerate(model)]
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
        ax.text(0.6, y, "x".join(map(str, shape[::-1] if len(shape) == 3 else shape)), va="center", fontsize=8, color="0.3")
        if i:
            ax.annotate("", (0.3, y + 0.35), (0.3, y + 0.65), arrowprops={"arrowstyle": "<-", "color": "0.3"})
    definitions = ("Conv(k, C, s): k x k conv, C filters, stride s, same padding -> BatchNorm (no scale/shift) -> ReLU\n"
                   "Inception(C1, C3) = concat[Conv(1, C1, 1), Conv(3, C3, 1)]\n"
                   "Downsample(C3) = concat[Conv(3, C3, 2), max-pool 3x3 stride 2]")
    ax.text(0.05, 0.2, definitions, fontsize=7.5, va="top", family="monospace")
    ax.set(xlim=(0, 1.25), ylim=(-0.8, len(layers) + 0.7))
    ax.axis("off")
    ax.set_title("Small Inception (28x28x3 input), generated from rethink.models")
    return fig, "The small Inception of the paper's Figure 3, drawn from the model definition (output H x W x C per block)"


# ----------------------------------------------------------------------------- output


def save(fig, out_prefix, caption, provenance):
    out_prefix = pathlib.Path(out_prefix)
    for ext in ("pdf", "png"):
        with atomic_path(out_prefix.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext)
    plt.close(fig)
    if provenance:
        caption += (f". {provenance['cells']} of {provenance['cells_planned']} planned cells, "
                    f"{provenance['seeds']} seed(s), config {provenance['config']}")
    write_text_atomic(out_prefix.with_suffix(".json"), json.dumps(dict(provenance, caption=caption), indent=2) + "\n")


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.analysis.figures", description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=[*sorted(FIGURES), "fig3"])
    parser.add_argument("--metrics", help="results/metrics (not needed for fig3)")
    parser.add_argument("--experiment", help="experiment whose cells to plot (default: the figure's name)")
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
        curves = metrics.read(args.metrics, "curves.parquet")
        curves = curves[curves["cell"].isin(cells["cell"])].reset_index(drop=True)
        fig, caption = FIGURES[args.figure](cells, curves)
        save(fig, args.out, caption, provenance)
    print(f"{args.figure}: wrote {args.out}.{{pdf,png,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
