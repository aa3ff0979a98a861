"""The paper's claims as measurable checks over results/metrics/summary.parquet.

Each check reports the measured value, the threshold (config key `claims`, with the paper's
reasoning in config/README.md), a verdict (pass, fail, or "not measured" when the config has no
cells for it) and how many seeds each cell setting it rests on has. Checks on an effect use the
mean over seeds of each setting, so one seed's chaotic outcome does not decide them alone. The check
reports; it never fails the workflow.

    python -m rethink.analysis.claims --metrics results/metrics --thresholds JSON --out results/claims
"""

import argparse
import json
import math
import pathlib
import sys

import pandas as pd

from rethink.analysis import metrics
from rethink.data.randomize import IMAGE_NOISES
from rethink.errors import cli_main
from rethink.fileio import write_text_atomic


def _plain(cells):
    """Cells without any explicit regularizer."""
    s = metrics.with_switches(cells)
    return s[~(s["crop"] | s["aug"] | s["wd"] | s["dropout"])]


SETTING = ["arch_name", "regularizer", "noise"]  # a cell setting: its seeds are its cells


def _seeds(rows):
    """How many seeds the cell settings among `rows` have: 'n', or 'min-max' when they differ."""
    counts = rows.groupby(SETTING)["seed"].nunique()
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def _check(claim, measured, threshold, passed, detail="", seeds=""):
    return {
        "claim": claim,
        "measured": measured,
        "threshold": threshold,
        "verdict": "not measured" if passed is None else ("pass" if passed else "fail"),
        "seeds": seeds,
        "detail": detail,
    }


def _none(claim, threshold, why):
    return _check(claim, None, threshold, None, why)


def fits_random_labels(cells, t):
    claim = "Every architecture fits random labels (training accuracy)"
    rows = _plain(cells)[lambda d: d["noise"] == "random_labels"]
    if rows.empty:
        return _none(claim, f">= {t['fit_accuracy']}", "no random-label cell without regularizers")
    per_arch = rows.groupby("arch_name")["final_train_acc"].min()
    detail = ", ".join(f"{a} {v:.4f}" for a, v in per_arch.items())
    return _check(
        claim,
        round(float(per_arch.min()), 4),
        f">= {t['fit_accuracy']}",
        bool(per_arch.min() >= t["fit_accuracy"]),
        detail,
        _seeds(rows),
    )


def random_labels_at_chance(cells, t):
    claim = "Random-label test accuracy is at chance (binomial interval around 1/classes)"
    rows = cells[cells["noise"] == "random_labels"]
    if rows.empty:
        return _none(claim, f"|acc - 1/K| <= {t['chance_z']} sd", "no random-label cell")
    p = 1 / rows["num_classes"]
    z = (rows["final_test_acc"] - p) / (p * (1 - p) / rows["n_test"]).pow(0.5)
    worst = rows.loc[z.abs().idxmax()]
    detail = f"largest deviation: {worst['cell']} test acc {worst['final_test_acc']:.4f} (z = {z.abs().max():.2f})"
    return _check(
        claim,
        round(float(z.abs().max()), 2),
        f"|z| <= {t['chance_z']}",
        bool(z.abs().max() <= t["chance_z"]),
        detail,
        _seeds(rows),
    )


def error_grows_with_corruption(cells, t):
    claim = "Test error increases with label corruption (Spearman rank correlation per architecture)"
    rows = _plain(cells)[lambda d: ~d["noise"].isin(IMAGE_NOISES)]  # true, corrupted and random labels
    rho = {}
    for arch, group in rows.groupby("arch_name"):
        if group["level"].nunique() >= 3:
            rho[arch] = (1 - group["final_test_acc"]).rank().corr(group["level"].rank())
    if not rho:
        return _none(claim, f">= {t['min_rank_correlation']}", "no architecture with 3 or more corruption levels")
    detail = ", ".join(f"{a} {v:.2f}" for a, v in rho.items())
    return _check(
        claim,
        round(min(rho.values()), 3),
        f">= {t['min_rank_correlation']}",
        min(rho.values()) >= t["min_rank_correlation"],
        detail,
        _seeds(rows[rows["arch_name"].isin(rho)]),
    )


def overfit_slowdown(cells, t):
    claim = "Time to overfit random labels is a small constant factor of true labels' (p = 1 vs p = 0)"
    rows = metrics.relative_time_to_overfit(_plain(cells)[lambda d: d["noise"].isin(["true_labels", "random_labels"])])
    factors = rows[rows["noise"] == "random_labels"].groupby("arch_name")["relative_time"].mean()
    if factors.empty:
        return _none(claim, f"<= {t['max_overfit_factor']}", "no architecture with both p = 0 and p = 1 cells")
    detail = ", ".join(f"{a} {'not fitted' if math.isnan(v) else f'{v:.2f}x'}" for a, v in factors.items())
    worst = factors.max() if factors.notna().all() else math.inf
    return _check(
        claim,
        None if math.isinf(worst) else round(float(worst), 2),
        f"<= {t['max_overfit_factor']}x",
        bool(worst <= t["max_overfit_factor"]),
        detail,
        _seeds(rows),
    )


def pixels_fitted(cells, t):
    claim = "Shuffled pixels, random pixels and Gaussian inputs are fitted too"
    rows = _plain(cells)[lambda d: d["noise"].isin(IMAGE_NOISES)]
    if rows.empty:
        return _none(claim, f">= {t['fit_accuracy']}", "no pixel-randomization cell")
    detail = ", ".join(f"{r['arch_name']}/{r['noise']} {r['final_train_acc']:.4f}" for _, r in rows.iterrows())
    worst = rows["final_train_acc"].min()
    passed = bool(worst >= t["fit_accuracy"])
    return _check(claim, round(float(worst), 4), f">= {t['fit_accuracy']}", passed, detail, _seeds(rows))


def regularizers_vs_architecture(cells, t):
    claim = "Explicit regularizers change test accuracy far less than the architecture does"
    rows = metrics.with_switches(cells)[lambda d: d["noise"] == "true_labels"]
    # an architecture's generalization is read off cells that trained (fitted), not off a
    # network that never learned anything
    plain = _plain(rows)[lambda d: d["converged"]].groupby("arch_name")["final_test_acc"].mean()
    by_arch = rows.groupby(["arch_name", "regularizer"])["final_test_acc"].mean().groupby("arch_name")
    reg_effect = (by_arch.max() - by_arch.min())[lambda s: by_arch.size() > 1]
    if len(plain) < 2 or reg_effect.empty:
        return _none(
            claim,
            f"ratio <= {t['max_regularizer_to_architecture_ratio']}",
            "needs 2+ architectures and regularized cells",
        )
    arch_effect = plain.max() - plain.min()
    ratio = reg_effect.max() / arch_effect if arch_effect > 0 else math.inf
    detail = (
        f"largest regularizer effect {100 * reg_effect.max():.1f} points ({reg_effect.idxmax()}); "
        f"spread across architectures (fitted cells) {100 * arch_effect:.1f} points"
    )
    return _check(
        claim,
        round(float(ratio), 3),
        f"<= {t['max_regularizer_to_architecture_ratio']}",
        bool(ratio <= t["max_regularizer_to_architecture_ratio"]),
        detail,
        _seeds(rows),
    )


def batchnorm_effect(cells, t):
    claim = "BatchNorm changes test accuracy by a few points (Inception with vs without)"
    cells = _plain(cells)[
        lambda d: (d["noise"] == "true_labels") & d["arch_name"].isin(["inception", "inception_nobn"])
    ]
    rows = cells.groupby("arch_name")["final_test_acc"].mean()
    if not {"inception", "inception_nobn"} <= set(rows.index):
        return _none(
            claim, f"<= {t['batchnorm_max_points']} points", "needs inception and inception_nobn true-label cells"
        )
    delta = 100 * (rows["inception"] - rows["inception_nobn"])
    detail = f"with BN {100 * rows['inception']:.2f}%, without {100 * rows['inception_nobn']:.2f}%"
    return _check(
        claim,
        round(float(delta), 2),
        f"|delta| <= {t['batchnorm_max_points']} points",
        bool(abs(delta) <= t["batchnorm_max_points"]),
        detail,
        _seeds(cells),
    )


def early_stopping_band(cells, t):
    """The largest early-stopping gain of a cell setting, as the mean over its seeds."""
    claim = "Early stopping would gain little on true labels (best minus final test accuracy)"
    rows = _plain(cells)[lambda d: d["noise"] == "true_labels"]
    if rows.empty:
        return _none(claim, f"<= {t['early_stopping_max_points']} points", "no true-label cell without regularizers")
    gains = rows.assign(gain=100 * (rows["best_test_acc"] - rows["final_test_acc"])).groupby(SETTING)["gain"]
    mean, worst = gains.mean(), gains.mean().idxmax()
    seeds = ", ".join(f"{g:.2f}" for g in gains.get_group(worst))
    detail = f"largest: {'/'.join(worst)} ({mean.max():.2f} points; per seed {seeds})"
    return _check(
        claim,
        round(float(mean.max()), 2),
        f"<= {t['early_stopping_max_points']} points",
        bool(mean.max() <= t["early_stopping_max_points"]),
        detail,
        _seeds(rows),
    )


def kernel_interpolation_generalizes(kernel, t):
    """Section 5: the exact (l2 = 0) interpolant of the raw pixels still predicts far above chance."""
    claim = "Interpolating the raw training set exactly (Gaussian kernel) still generalizes far above chance"
    threshold = f">= {t['kernel_min_chance_multiple']}x chance"
    rows = None if kernel is None else kernel[(kernel["features"] == "raw") & (kernel["l2"] == 0)]
    if rows is None or rows.empty:
        return _none(claim, threshold, "no raw-pixel kernel row with l2 = 0 (config key kernel.rows)")
    multiple = (1 - rows["test_error"]) * rows["num_classes"]
    detail = ", ".join(
        f"{r.row}: test error {100 * r.test_error:.2f}%, train error {100 * r.train_error:.2f}% "
        f"(n = {r.n_train}), {m:.1f}x chance"
        for r, m in zip(rows.itertuples(), multiple)
    )
    # an interpolant that does not fit its training set is not the claim's (a failed solve)
    passed = bool(multiple.min() >= t["kernel_min_chance_multiple"] and (rows["train_error"] == 0).all())
    return _check(claim, round(float(multiple.min()), 2), threshold, passed, detail)


CHECKS = (
    fits_random_labels,
    random_labels_at_chance,
    error_grows_with_corruption,
    overfit_slowdown,
    pixels_fitted,
    regularizers_vs_architecture,
    batchnorm_effect,
    early_stopping_band,
)


def check_all(cells, thresholds, kernel=None):
    """Every check on the training cells, then the kernel check on results/metrics/kernel.csv."""
    results = [dict(id=check.__name__, **check(cells, thresholds)) for check in CHECKS]
    check = kernel_interpolation_generalizes
    return results + [dict(id=check.__name__, **check(kernel, thresholds))]


def to_markdown(results, provenance):
    lines = [
        f"Claims of the paper, checked on {provenance['cells']} cells of {provenance['config']}.",
        "",
        "| claim | measured | threshold | verdict | seeds | detail |",
        "|---|---:|---|---|---:|---|",
    ]
    for r in results:
        measured = "" if r["measured"] is None else r["measured"]
        row = f"| {r['claim']} | {measured} | {r['threshold']} | **{r['verdict']}** | {r['seeds']} | {r['detail']} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.analysis.claims", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--thresholds", required=True, help="JSON of the config's `claims` section")
    parser.add_argument("--kernel", help="results/metrics/kernel.csv (Table 3), when the config has kernel rows")
    parser.add_argument("--out", required=True, help="output prefix; .md and .json are written")
    args = parser.parse_args(argv)
    cells = metrics.read(args.metrics, "summary_parquet")
    kernel = pd.read_csv(args.kernel) if args.kernel else None
    config = metrics.membership(args.metrics)["config"]
    provenance = {"config": config, "cells": int(len(cells))}
    results = check_all(cells, json.loads(args.thresholds), kernel)
    out = pathlib.Path(args.out)
    write_text_atomic(
        out.with_suffix(".json"), json.dumps(dict(provenance, claims=results), indent=2, default=float) + "\n"
    )
    write_text_atomic(out.with_suffix(".md"), to_markdown(results, provenance))
    print(to_markdown(results, provenance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
