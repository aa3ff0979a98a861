"""The kernel stage's CLIs, as the workflow's rules call them.

    python -m rethink.kernel solve --row JSON --train SHARDS --test SHARDS --out results/kernel/<row>.json
    python -m rethink.kernel aggregate --rows results/kernel/*.json --out results/metrics/kernel.csv
    python -m rethink.kernel theorem1 --spec JSON [--train SHARDS] --out results/theorem1

Images come from the pipeline's clean shards, read through `rethink.data.shards` (checksums
verified), never from raw files.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import pandas as pd

from rethink.data import shards
from rethink.errors import RethinkError, cli_main
from rethink.fileio import write_text_atomic

# what kernel.csv holds per (row, l2), in this order
COLUMNS = [
    "row", "dataset", "source", "features", "feature_dim", "gamma", "gamma_setting", "l2", "n_train", "n_test",
    "num_classes", "test_error", "train_error", "max_train_residual", "rkhs_norm", "alpha_norm", "device",
    "featurise_seconds", "solve_seconds",
]  # fmt: skip


def _split(paths):
    arrays, attrs = shards.read_split(paths, ["images", "labels"])
    return arrays["images"], arrays["labels"], attrs


def _log(message):
    print(message, flush=True)


def solve_row(row, train_paths, test_paths):
    """Featurise, then one exact (or ridge) solve per `l2` value; -> list of result dicts."""
    import torch

    from rethink.kernel import features, solve

    device = solve.pick_device(row["device"])
    train_images, train_labels, attrs = _split(train_paths)
    test_images, test_labels, _ = _split(test_paths)
    n, m, classes = len(train_labels), len(test_labels), int(attrs["num_classes"])
    shape = tuple(train_images.shape[1:])
    dim = features.feature_dim(row["features"], row, shape)
    available = solve.bytes_available(device)
    steps = features.batching(row["features"], row, shape, row["batch"], available - solve.features_bytes(n, m, dim))
    needed, available = solve.check_memory(n, m, dim, row["batch"], device, steps.bytes, available)
    _log(
        f"{row['name']}: n = {n}, test {m}, {row['features']} features (D = {dim}) on {device}"
        f"{f', {steps.images} images x {steps.filters} filters at a time' if steps.filters else ''}; "
        f"needs {needed / 2**30:.2f} GiB of {available / 2**30:.1f} GiB available"
    )

    start = time.perf_counter()
    x = features.featurise(row["features"], row, torch.from_numpy(train_images), steps, device, "train")
    x_test = features.featurise(row["features"], row, torch.from_numpy(test_images), steps, device, "test")
    featurise_seconds = time.perf_counter() - start
    gamma = solve.median_gamma(x, row["median_samples"]) if row["gamma"] == "median" else float(row["gamma"])
    y_train = torch.from_numpy(train_labels).to(device)
    y_test = torch.from_numpy(test_labels).to(device)
    onehot = torch.nn.functional.one_hot(y_train, classes).double()
    buffer = torch.empty(n, n, dtype=torch.float64, device=device)

    results = []
    for l2 in row["l2"]:
        start = time.perf_counter()
        solution = solve.solve(x, onehot, gamma, float(l2), buffer)
        solve_seconds = time.perf_counter() - start
        train_out = solve.predict(x, x, solution, row["batch"], "train")
        test_out = solve.predict(x_test, x, solution, row["batch"], "test")
        results.append({
            "row": row["name"], "dataset": attrs["dataset"], "source": attrs["source"], "features": row["features"],
            "feature_dim": int(x.shape[1]), "gamma": gamma, "gamma_setting": str(row["gamma"]), "l2": float(l2),
            "n_train": n, "n_test": m, "num_classes": classes,
            "test_error": float((test_out.argmax(1) != y_test).double().mean()),
            "train_error": float((train_out.argmax(1) != y_train).double().mean()),
            "max_train_residual": float((train_out - onehot).abs().max()),
            "rkhs_norm": solution.rkhs_norm, "alpha_norm": solution.alpha_norm, "device": str(device),
            "featurise_seconds": round(featurise_seconds, 3), "solve_seconds": round(solve_seconds, 3),
        })  # fmt: skip
        _log(
            f"  l2 = {l2:g}, gamma = {gamma:.4g}: test error {results[-1]['test_error']:.4f}, train error "
            f"{results[-1]['train_error']:.4f}, norm {solution.rkhs_norm:.1f}, solve {solve_seconds:.1f} s"
        )
    return results


def theorem1_rows(spec, train_paths):
    """Random points (N(0, 1) in d = spec.dim, labels N(0, 1)) at each of spec.sizes, then the
    first n images of the dataset (pixels / 255, the class index as a real label) at each of
    spec.dataset_sizes."""
    from rethink.kernel import theorem1

    rows = []
    for n in spec["sizes"]:
        generator = np.random.default_rng([spec["seed"], n])
        x, y = generator.standard_normal((n, spec["dim"])), generator.standard_normal(n)
        rows.append({"data": "random", **theorem1.verify(x, y, spec["seed"])})
        _log(f"random n = {n}: {rows[-1]}")
    if spec["dataset_sizes"]:
        images, labels, attrs = _split(train_paths)
        for n in spec["dataset_sizes"]:
            if n > len(labels):
                raise RethinkError(
                    f"config key theorem1.dataset_sizes: {n} is more than the {len(labels)} training images of "
                    f"{attrs['dataset']}"
                )
            x = images[:n].reshape(n, -1).astype(np.float64) / 255.0
            rows.append({"data": attrs["dataset"], **theorem1.verify(x, labels[:n].astype(np.float64), spec["seed"])})
            _log(f"{attrs['dataset']} n = {n}: {rows[-1]}")
    return pd.DataFrame(rows)


def _markdown(frame, caption):
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    body = "".join("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |\n"
                   for r in frame.itertuples(index=False))  # fmt: skip
    return f"{caption}\n\n{head}{body}"


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.kernel", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("solve", help="one Table 3 row: featurise, solve, predict")
    p.add_argument("--row", required=True, help="JSON: the row's config with its featuriser settings")
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("aggregate", help="the rows' results -> results/metrics/kernel.csv")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("theorem1", help="Appendix C's construction, verified")
    p.add_argument("--spec", required=True, help="JSON of the config's theorem1 section")
    p.add_argument("--train", nargs="*", default=[])
    p.add_argument("--out", required=True, help="output prefix; .csv and .md are written")
    args = parser.parse_args(argv)

    if args.command == "solve":
        row = json.loads(args.row)
        results = solve_row(row, args.train, args.test)
        write_text_atomic(args.out, json.dumps({"row": row, "results": results}, indent=2) + "\n")
    elif args.command == "aggregate":
        records = [r for path in args.rows for r in json.loads(pathlib.Path(path).read_text())["results"]]
        write_text_atomic(args.out, pd.DataFrame(records, columns=COLUMNS).to_csv(index=False))
    else:
        spec = json.loads(args.spec)
        frame = theorem1_rows(spec, args.train)
        out = pathlib.Path(args.out)
        caption = (
            "Theorem 1 (Appendix C): the depth-two ReLU network with 2n + d weights built by the paper's "
            "construction, float64; max_residual = max_i |c(x_i) - y_i| of the network itself, "
            "condition_number = LAPACK's 1-norm estimate for the triangular system A w = y."
        )
        write_text_atomic(out.with_suffix(".csv"), frame.to_csv(index=False))
        write_text_atomic(out.with_suffix(".md"), _markdown(frame, caption))
    return 0


if __name__ == "__main__":
    sys.exit(main())
