"""Paper-settings mini-grid for the GPU proof: a few cells of Fig. 1a and Table 1 from
config/paper-fashion-mnist.yaml (full-size Fashion-MNIST, full widths), trained for a few epochs as
one pack by the trainer itself (no Snakemake needed), on shards the pipeline's own data
functions write. Writes DIR/minigrid.md and DIR/minigrid.json.

    python bench/gpu_minigrid.py --out DIR [--epochs 3] [--device cuda] [--root FOLDER]
                                 [--subset N_TRAIN N_TEST] [--width W]     (the CPU smoke run's sizes)
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

from rethink import config as rconfig
from rethink import paths, plan
from rethink.data import prepare, sources
from rethink.errors import cli_main
from rethink.fileio import write_text_atomic
from rethink.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASET = "fashion_mnist"
CELLS = [
    "fashion_mnist/inception/none/true_labels/s0",
    "fashion_mnist/inception/none/random_labels/s0",
    "fashion_mnist/inception/none/shuffled_pixels/s0",
    "fashion_mnist/alexnet/crop_wd/true_labels/s0",
    "fashion_mnist/mlp_1x512/wd/true_labels/s0",
]
SUMMARY_KEYS = (
    "cell", "epochs", "steps", "final_train_acc", "final_test_acc", "final_train_avg_acc", "stop_reason",
    "device_name", "wall_s",
)  # fmt: skip


def paper_cells(configfile, root, subset):
    """The config (its dataset's root and subset replaced where given) and the mini-grid's cells
    as {id: (dataset, noise, seed, cell spec)}, the spec as the workflow would train it. The one
    place this script reads the config and its plan: config.read_yaml, config.validate,
    plan.Plan's cells (a Cell's dataset, noise, seed)."""
    raw = rconfig.read_yaml(configfile)
    dataset = raw["datasets"][DATASET]
    if root:
        dataset["root"] = root
    if subset:
        dataset["subset"] = {"train": subset[0], "test": subset[1]}
    config = rconfig.validate(raw)
    cells = plan.Plan(config, [configfile]).cells
    return config, {i: (cells[i][0].dataset, cells[i][0].noise, cells[i][0].seed, cells[i][1]) for i in CELLS}


def build_shards(config, dataset, noise, seed, test_labels, root):
    """A cell's train and test shards under root, made as the workflow's data rules make them:
    clean shards, then (where the noise rewrites a split) randomized ones, from the clean
    training split's channel statistics for gaussian noise."""
    spec, shards_cfg = config["datasets"][dataset], config["shards"]

    def made(relative, make):
        path = root / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
        return path

    clean = {
        split: [
            made(p, lambda out, split=split, i=i: prepare.make_clean(spec, shards_cfg, split, i, out))
            for i, p in enumerate(paths.clean_shards(spec, shards_cfg, split))
        ]
        for split in ("train", "test")
    }
    stats = None
    if noise.name == "gaussian":
        stats = made(paths.channel_stats(spec), lambda out: prepare.make_stats(clean["train"], out))
    files = {}
    for split in ("train", "test"):
        wanted = paths.split_shards(spec, shards_cfg, noise, seed, split, test_labels)
        if wanted == paths.clean_shards(spec, shards_cfg, split):
            files[split] = [str(p) for p in clean[split]]
            continue
        files[split] = [
            str(
                made(
                    p,
                    lambda out, split=split, i=i: prepare.make_randomized(
                        spec,
                        shards_cfg,
                        noise.name,
                        seed,
                        split,
                        i,
                        clean[split][i],
                        stats,
                        out,
                        config["randomization"],
                    ),  # fmt: skip
                )
            )
            for i, p in enumerate(wanted)
        ]
    return files


def markdown(args, rows, data_s, train_s):
    return [
        f"## Paper-settings mini-grid ({args.configfile}, {args.epochs} epochs, one pack of {len(rows)})",
        "",
        f"Shards built in {data_s:.0f} s; the pack trained in {train_s:.0f} s on {rows[0]['device_name']}"
        + (f" (smoke sizes: subset {args.subset}, width {args.width:g})" if args.subset or args.width else "")
        + ".",
        "",
        "| cell | epochs | train acc (eval) | train acc (online) | test acc | stop | s per epoch |",
        "|---|---:|---:|---:|---:|---|---:|",
        *(
            f"| {r['cell']} | {r['epochs']} | {r['final_train_acc']:.4f} | {r['final_train_avg_acc']:.4f} | "
            f"{r['final_test_acc']:.4f} | {r['stop_reason']} | {r['wall_s'] / max(r['epochs'], 1):.1f} |"
            for r in rows
        ),
    ]


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--configfile", default=str(REPO / "config/paper-fashion-mnist.yaml"))
    p.add_argument("--root", help=f"overrides datasets.{DATASET}.root (the four idx .gz files)")
    p.add_argument("--subset", type=int, nargs=2, metavar=("N_TRAIN", "N_TEST"), help="part of each split")
    p.add_argument("--width", type=float, help="every cell's width (default: the config's)")
    args = p.parse_args(argv)
    config, cells = paper_cells(args.configfile, args.root, args.subset)
    sources.check_available(config["datasets"][DATASET])  # one line naming the folder, before any work
    root = pathlib.Path(tempfile.mkdtemp())
    start = time.perf_counter()
    jobs = []
    for cell_id, (dataset, noise, seed, spec) in cells.items():
        hparams = dict(spec["hparams"], max_epochs=args.epochs, device=args.device)
        spec = dict(spec, hparams=hparams, width=args.width or spec["width"])
        files = build_shards(config, dataset, noise, seed, spec["test_labels"], root)
        jobs.append(loop.Job(spec, files["train"], files["test"], root / "cells" / cell_id, root / f"{len(jobs)}.pt"))
    data_s = time.perf_counter() - start
    start = time.perf_counter()
    summaries = loop.train(jobs, echo=False)
    train_s = time.perf_counter() - start
    rows = [{k: s[k] for k in SUMMARY_KEYS} for s in summaries]
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"configfile": args.configfile, "subset": args.subset, "width": args.width, "epochs": args.epochs}
    write_text_atomic(
        args.out / "minigrid.json",
        json.dumps(dict(record, data_s=data_s, train_s=train_s, cells=rows), indent=2) + "\n",
    )
    lines = markdown(args, rows, data_s, train_s)
    write_text_atomic(args.out / "minigrid.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
