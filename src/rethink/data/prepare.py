"""CLI for the data rules: one clean shard, the training set's channel statistics, one
randomized shard, a streamed dataset's split index. Each call writes exactly one file, atomically.

  python -m rethink.data.prepare index     --spec JSON --split train --out PATH   (streamed only)
  python -m rethink.data.prepare clean     --spec JSON --split train --shard 0 [--index PATH] --out PATH
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
from rethink.data import imagenet, randomize, shards, sources
from rethink.errors import RethinkError, cli_main
from rethink.fileio import write_text_atomic


def _spec(text):
    try:
        spec = json.loads(text)
        return spec["dataset"], spec["shards"], spec.get("randomization")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RethinkError(f"--spec must be JSON with 'dataset' and 'shards' ({err})") from None


def _shard_range(dataset, shards_cfg, split, shard):
    size, total = sources.shard_size(dataset, shards_cfg), sources.split_size(dataset, split)
    count = -(-total // size)
    if not 0 <= shard < count:
        raise RethinkError(f"shard {shard} out of range: the {split} split has {count} shards")
    return shard * size, min(total, (shard + 1) * size), count


def make_clean(dataset, shards_cfg, split, shard, out, index=None):
    start, stop, count = _shard_range(dataset, shards_cfg, split, shard)
    identity = dict(
        dataset=dataset["name"], source=dataset["source"], split=split, noise="clean", level=0.0, seed=-1,
        shard_index=shard, n_shards=count, offset=start, dataset_spec=fileio.canonical_json(dataset),
    )  # fmt: skip
    if sources.streamed(dataset):
        return _make_jpeg_shard(dataset, shards_cfg, identity, index, start, stop, out)
    images, labels, provenance = sources.load_split(dataset, split)
    attrs = dict(provenance, **identity, num_classes=sources.num_classes(dataset), split_samples=len(labels))
    return shards.write_shard(
        out,
        {"images": images[start:stop], "labels": labels[start:stop]},
        attrs,
        compression=shards_cfg["compression"],
        chunk_samples=shards_cfg["chunk_samples"],
    )


def _make_jpeg_shard(dataset, shards_cfg, identity, index_path, start, stop, out):
    """One shard of a streamed dataset: entries start:stop of the split's index, as JPEG bytes."""
    if index_path is None:
        raise RethinkError(f"dataset {dataset['name']!r} is streamed: its clean shards need --index")
    index = imagenet.read_index(index_path)
    if (index["dataset"], index["split"], index["dataset_spec"]) != (
        dataset["name"], identity["split"], identity["dataset_spec"]
    ):  # fmt: skip
        raise RethinkError(f"{index_path} is not the {identity['split']} index of dataset {dataset['name']!r}")
    if len(index["files"]) != sources.split_size(dataset, identity["split"]):
        raise RethinkError(f"{index_path}: {len(index['files'])} entries, the config expects a different count")
    arrays, source_sha256, reencoded = imagenet.shard_arrays(index, start, stop)
    attrs = dict(
        identity,
        format=imagenet.SHARD_FORMAT,
        num_classes=len(index["classes"]),
        split_samples=len(index["files"]),
        source_root=index["root"],
        source_sha256=source_sha256,
        reencoded=reencoded,
    )
    # JPEG bytes do not compress; 64 KiB chunks of the flat byte array waste < 64 KiB per shard
    return shards.write_shard(out, arrays, attrs, compression="none", chunk_samples=1 << 16)


def clean_attrs_format(path):
    return shards.read_shard(path, ["labels"])[1].get("format")


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
    if noise.changes_images and clean_attrs_format(clean) == imagenet.SHARD_FORMAT:
        raise RethinkError(f"noise {noise.name} rewrites pixels; {clean} holds JPEG bytes, so only label noises apply")
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
        int(clean_attrs["num_classes"]),
        channel_stats,
        options,
    )
    # Whatever the randomization did not rewrite is linked to the clean shard, not copied.
    links = {"true_labels": (clean, "labels")}
    links.update({name: (clean, name) for name in shards.dataset_names(clean) if name not in new})
    attrs = {
        key: clean_attrs[key]
        for key in ("dataset", "source", "split", "shard_index", "n_shards", "offset", "split_samples", "num_classes")
    }
    if "format" in clean_attrs:
        attrs["format"] = clean_attrs["format"]
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
    for name in ("index", "clean", "stats", "randomize"):
        sub = commands.add_parser(name)
        sub.add_argument("--spec", required=True, help="canonical JSON {dataset, shards}")
        sub.add_argument("--out", required=True, help="file to write")
        if name == "stats":
            sub.add_argument("--shards", nargs="+", required=True, help="clean training shards")
            continue
        sub.add_argument("--split", required=True, choices=sources.SPLITS)
        if name == "index":
            continue
        sub.add_argument("--shard", required=True, type=int)
        if name == "clean":
            sub.add_argument("--index", help="the split's index (streamed datasets)")
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
    if args.command == "index":
        count = imagenet.write_index(dataset, args.split, args.out)
        print(f"index: {count} {args.split} images of {dataset['name']} listed in {args.out}")
        return
    if args.command == "clean":
        digest = make_clean(dataset, shards_cfg, args.split, args.shard, args.out, args.index)
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
