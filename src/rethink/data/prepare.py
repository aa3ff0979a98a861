"""CLI for the data rules: one clean shard, the training set's channel statistics, one
randomized shard. Each call writes exactly one file, atomically.

  python -m rethink.data.prepare clean     --spec JSON --split train --shard 0 --out PATH
  python -m rethink.data.prepare stats     --spec JSON --shards PATH... --out PATH
  python -m rethink.data.prepare randomize --spec JSON --noise NAME --seed S --split train
                                           --shard 0 --clean PATH [--stats PATH] --out PATH

`--spec` is the canonical JSON {"dataset": <resolved dataset config>, "shards": <shards
config>, "randomization": <options>} that the workflow passes as a rule parameter, so editing
it reruns the rule.
"""

import argparse
import json
import pathlib
import time

from rethink import fileio
from rethink.data import randomize, shards, sources
from rethink.errors import RethinkError, cli_main
from rethink.fileio import write_text_atomic


def _spec(text):
    try:
        spec = json.loads(text)
        return spec["dataset"], spec["shards"], spec.get("randomization")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RethinkError(f"--spec must be JSON with 'dataset' and 'shards' ({err})") from None


def _shard_range(dataset, shards_cfg, split, shard):
    size, total = shards_cfg["size"], sources.split_size(dataset, split)
    count = -(-total // size)
    if not 0 <= shard < count:
        raise RethinkError(f"shard {shard} out of range: the {split} split has {count} shards")
    return shard * size, min(total, (shard + 1) * size), count


def make_clean(dataset, shards_cfg, split, shard, out):
    start, stop, count = _shard_range(dataset, shards_cfg, split, shard)
    images, labels, provenance = sources.load_split(dataset, split)
    attrs = dict(
        provenance,
        dataset=dataset["name"],
        source=dataset["source"],
        split=split,
        noise="clean",
        level=0.0,
        seed=-1,
        shard_index=shard,
        n_shards=count,
        offset=start,
        num_classes=sources.num_classes(dataset),
        split_samples=len(labels),
        dataset_spec=fileio.canonical_json(dataset),
    )
    return shards.write_shard(
        out,
        {"images": images[start:stop], "labels": labels[start:stop]},
        attrs,
        compression=shards_cfg["compression"],
        chunk_samples=shards_cfg["chunk_samples"],
    )


def make_stats(shard_paths, out):
    checksums, blocks = [], []
    for path in shard_paths:
        arrays, attrs = shards.read_shard(path, ["images"])
        checksums.append(attrs["content_sha256"])
        blocks.append(arrays["images"])
    stats = dict(randomize.channel_stats(blocks), shard_sha256=checksums)
    write_text_atomic(out, json.dumps(stats, indent=2) + "\n")
    return stats


def make_randomized(dataset, shards_cfg, noise_name, seed, split, shard, clean, stats, out, options=None):
    noise = randomize.parse_noise(noise_name)
    # Label noises only need the clean labels: the images are linked, never read here.
    arrays, clean_attrs = shards.read_shard(clean, None if noise.changes_images else ["labels"])
    if (clean_attrs["dataset"], clean_attrs["split"], clean_attrs["shard_index"]) != (dataset["name"], split, shard):
        raise RethinkError(f"{clean} is not shard {shard} of {dataset['name']} {split}")
    channel_stats = json.loads(pathlib.Path(stats).read_text()) if stats else None
    new = randomize.randomize_shard(
        noise,
        seed,
        split,
        shard,
        arrays.get("images"),
        arrays["labels"],
        sources.num_classes(dataset),
        channel_stats,
        options,
    )
    # Whatever the randomization did not rewrite is linked to the clean shard, not copied.
    links = {"true_labels": (clean, "labels")}
    links.update({name: (clean, name) for name in ("images", "labels") if name not in new})
    attrs = {
        key: clean_attrs[key]
        for key in ("dataset", "source", "split", "shard_index", "n_shards", "offset", "split_samples", "num_classes")
    }
    # provenance: the options that shape this noise (test_labels for label noises)
    options = randomize.noise_options(noise, options)
    attrs.update(noise=noise.name, level=noise.level, seed=seed, randomization=fileio.canonical_json(options))
    if channel_stats:
        mean, std = randomize.gaussian_moments(channel_stats, options["gaussian_stats"])
        attrs["gaussian_mean"], attrs["gaussian_std"] = json.dumps(mean.tolist()), json.dumps(std.tolist())
    return shards.write_shard(
        out,
        new,
        attrs,
        links=links,
        compression=shards_cfg["compression"],
        chunk_samples=shards_cfg["chunk_samples"],
    )


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m rethink.data.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("clean", "stats", "randomize"):
        sub = commands.add_parser(name)
        sub.add_argument("--spec", required=True, help="canonical JSON {dataset, shards}")
        sub.add_argument("--out", required=True, help="file to write")
        if name == "stats":
            sub.add_argument("--shards", nargs="+", required=True, help="clean training shards")
            continue
        sub.add_argument("--split", required=True, choices=sources.SPLITS)
        sub.add_argument("--shard", required=True, type=int)
        if name == "randomize":
            sub.add_argument("--noise", required=True)
            sub.add_argument("--seed", required=True, type=int)
            sub.add_argument("--clean", required=True, help="the clean shard to randomize")
            sub.add_argument("--stats", help="channel statistics JSON (gaussian only)")
    return parser


@cli_main
def main(argv=None):
    args = _parser().parse_args(argv)
    dataset, shards_cfg, options = _spec(args.spec)
    started = time.time()
    if args.command == "clean":
        digest = make_clean(dataset, shards_cfg, args.split, args.shard, args.out)
    elif args.command == "stats":
        digest = make_stats(args.shards, args.out)["shard_sha256"][0]
    else:
        digest = make_randomized(
            dataset,
            shards_cfg,
            args.noise,
            args.seed,
            args.split,
            args.shard,
            args.clean,
            args.stats,
            args.out,
            options,
        )
    print(f"{args.command}: wrote {args.out} ({digest[:12]}) in {time.time() - started:.2f} s")


if __name__ == "__main__":
    main()
