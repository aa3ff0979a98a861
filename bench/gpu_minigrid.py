"""Paper-settings mini-grid for the GPU proof: a few cells of Fig. 1a and Table 1 from
config/paper-fashion-mnist.yaml (full-size Fashion-MNIST, full widths), trained for a few epochs as
one pack by the trainer itself (no Snakemake needed). Writes DIR/minigrid.md and DIR/minigrid.json.

    python bench/gpu_minigrid.py --out DIR [--epochs 3] [--device cuda]
"""

import argparse
import json
import pathlib
import tempfile
import time

from rethink import config as rconfig
from rethink import grid, paths
from rethink.data import prepare
from rethink.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
CELLS = [
    "fashion_mnist/inception/none/true_labels/s0",
    "fashion_mnist/inception/none/random_labels/s0",
    "fashion_mnist/inception/none/shuffled_pixels/s0",
    "fashion_mnist/alexnet/crop_wd/true_labels/s0",
    "fashion_mnist/mlp_1x512/wd/true_labels/s0",
]


def build_shards(config, cell, root):
    """The cell's shards under root, made by the pipeline's own data functions."""
    spec, shards_cfg = config["datasets"][cell.dataset], config["shards"]
    out = {}
    for split in ("train", "test"):
        files = []
        for i, clean in enumerate(paths.clean_shards(spec, shards_cfg, split)):
            clean = root / clean
            if not clean.exists():
                clean.parent.mkdir(parents=True, exist_ok=True)
                prepare.make_clean(spec, shards_cfg, split, i, clean)
            files.append(clean)
        if split in cell.noise.splits:
            stats = root / paths.channel_stats(spec)
            if cell.noise.name == "gaussian" and not stats.exists():
                prepare.make_stats(files, stats)
            noisy = [root / p for p in paths.split_shards(spec, shards_cfg, cell.noise, cell.seed, split)]
            for i, (clean, target) in enumerate(zip(files, noisy)):
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    prepare.make_randomized(
                        spec,
                        shards_cfg,
                        cell.noise.name,
                        cell.seed,
                        split,
                        i,
                        clean,
                        stats if cell.noise.name == "gaussian" else None,
                        target,
                        config["randomization"],
                    )
            files = noisy
        out[split] = [str(f) for f in files]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--configfile", default=str(REPO / "config/paper-fashion-mnist.yaml"))
    p.add_argument("--root", help="overrides datasets.fashion_mnist.root (the four idx .gz files)")
    args = p.parse_args(argv)
    config = rconfig.load(args.configfile, REPO / "workflow/schemas/config.schema.yaml")
    if args.root:
        config["datasets"]["fashion_mnist"]["root"] = args.root
    cells, _ = grid.expand(config)
    root = pathlib.Path(tempfile.mkdtemp())
    start = time.perf_counter()
    jobs = []
    for cell_id in CELLS:
        cell, spec = cells[cell_id]
        spec = dict(spec, hparams=dict(spec["hparams"], max_epochs=args.epochs, device=args.device))
        files = build_shards(config, cell, root)
        jobs.append(loop.Job(spec, files["train"], files["test"], root / "cells" / cell_id, root / f"{len(jobs)}.pt"))
    data_s = time.perf_counter() - start
    start = time.perf_counter()
    summaries = loop.train(jobs, echo=False)
    train_s = time.perf_counter() - start
    rows = [
        {
            k: s[k]
            for k in (
                "cell",
                "epochs",
                "steps",
                "final_train_acc",
                "final_test_acc",
                "final_train_avg_acc",
                "stop_reason",
                "device_name",
                "wall_s",
            )
        }
        for s in summaries
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "minigrid.json").write_text(
        json.dumps({"data_s": data_s, "train_s": train_s, "cells": rows}, indent=2) + "\n"
    )
    lines = [
        f"## Paper-settings mini-grid ({args.configfile}, {args.epochs} epochs, one pack of {len(rows)})",
        "",
        f"Shards built in {data_s:.0f} s; the pack trained in {train_s:.0f} s on {rows[0]['device_name']}.",
        "",
        "| cell | epochs | train acc (eval) | train acc (online) | test acc | stop |",
        "|---|---:|---:|---:|---:|---|",
        *(
            f"| {r['cell']} | {r['epochs']} | {r['final_train_acc']:.4f} | {r['final_train_avg_acc']:.4f} | "
            f"{r['final_test_acc']:.4f} | {r['stop_reason']} |"
            for r in rows
        ),
    ]
    (args.out / "minigrid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
