"""CLI for the data rules: one clean shard (or a range of them), the training set's channel
statistics, one randomized shard, a streamed dataset's split index. Each file is written atomically.

  python -m rethink.data.prepare index     --spec JSON --split train --out PATH   (streamed only)
  python -m rethink.data.prepare clean     --spec JSON --split train --shard 0 [--index PATH] --out PATH
  python -m rethink.data.prepare clean     --spec JSON --split train --shards 0-63 --index PATH
                                           [--staging DIR] --out PATH...          (a range: one PATH a shard)
  python -m rethink.data.prepare stats     --spec JSON --shards PATH... --out PATH
  python -m rethink.data.prepare randomize --spec JSON --noise NAME --seed S --split train
                                           --shard 0 --clean PATH [--stats PATH] --out PATH

`--spec` is the canonical JSON {"dataset": <resolved dataset config>, "shards": <shards
config>, "randomization": <options>} that the workflow passes as a rule parameter, so editing
it reruns the rule.
"""

import argparse
import hashlib
import json
import os
import pathlib
import time

from rethink import fileio
from rethink.data import imagenet, randomize, shards, sources
from rethink.errors import RethinkError, cli_main
from rethink.fileio import write_text_atomic
from rethink.progress import Progress, say


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


def _clean_identity(dataset, shards_cfg, split, shard):
    start, stop, count = _shard_range(dataset, shards_cfg, split, shard)
    identity = dict(
        dataset=dataset["name"], source=dataset["source"], split=split, noise="clean", level=0.0, seed=-1,
        shard_index=shard, n_shards=count, offset=start, dataset_spec=fileio.canonical_json(dataset),
    )  # fmt: skip
    return identity, start, stop


def make_clean(dataset, shards_cfg, split, shard, out, index=None):
    identity, start, stop = _clean_identity(dataset, shards_cfg, split, shard)
    if sources.streamed(dataset):
        return _make_jpeg_shard(dataset, shards_cfg, identity, _read_index(dataset, split, index), start, stop, out)
    images, labels, provenance = sources.load_split(dataset, split)
    attrs = dict(provenance, **identity, num_classes=sources.num_classes(dataset), split_samples=len(labels))
    return shards.write_shard(
        out,
        {"images": images[start:stop], "labels": labels[start:stop]},
        attrs,
        compression=shards_cfg["compression"],
        chunk_samples=shards_cfg["chunk_samples"],
    )


def _read_index(dataset, split, index_path):
    """A streamed dataset's split index, checked against the dataset config."""
    if index_path is None:
        raise RethinkError(f"dataset {dataset['name']!r} is streamed: its clean shards need --index")
    index = imagenet.read_index(index_path)
    if (index["dataset"], index["split"], index["dataset_spec"]) != (
        dataset["name"], split, fileio.canonical_json(dataset)
    ):  # fmt: skip
        raise RethinkError(f"{index_path} is not the {split} index of dataset {dataset['name']!r}")
    if len(index["files"]) != sources.split_size(dataset, split):
        raise RethinkError(f"{index_path}: {len(index['files'])} entries, the config expects a different count")
    return index


def _make_jpeg_shard(dataset, shards_cfg, identity, index, start, stop, out):
    """One shard of a streamed dataset: entries start:stop of the split's index, as JPEG bytes."""
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


def parse_shards(text):
    """'FIRST-LAST' (inclusive) -> range of shard numbers."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise RethinkError(f"--shards {text!r}: expected FIRST-LAST, two shard numbers with FIRST <= LAST")
    return range(int(first), int(last) + 1)


def make_clean_range(dataset, shards_cfg, split, shard_ids, outs, index_path=None, staging=None):
    """Consecutive clean shards in one process (a streamed dataset's index is read once), one
    output each; each is written as `make_clean` writes it. With `staging`, each finished shard
    is first written under staging/<key>/ (outside the job's outputs, which Snakemake deletes
    when a job fails) and renamed into place once all are done: a rerun of a killed job reuses
    the finished ones, after verifying their checksums and identity. <key> hashes the spec, the
    index and `staging` itself (the workflow puts the data code's hash in it), so a staged shard
    is only reused for the same inputs and code. -> the shards' content digests."""
    if len(outs) != len(shard_ids):
        raise RethinkError(f"--shards names {len(shard_ids)} shards but --out gives {len(outs)} paths")
    index = _read_index(dataset, split, index_path) if sources.streamed(dataset) else None
    targets = list(outs)
    if staging is not None:
        key = hashlib.sha256(fileio.canonical_json([dataset, shards_cfg, str(staging)]).encode())
        if index_path is not None:
            key.update(pathlib.Path(index_path).read_bytes())
        folder = pathlib.Path(staging) / key.hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        targets = [folder / f"{split}-{shard:05d}.h5" for shard in shard_ids]
    digests = []
    with Progress(f"shards {split}", len(shard_ids), "shards") as bar:
        for shard, target in zip(shard_ids, targets, strict=True):
            identity, start, stop = _clean_identity(dataset, shards_cfg, split, shard)
            reused = staging is not None and _staged_digest(target, identity)
            if reused:
                say(f"clean: shard {shard} reused from {target}")
                digests.append(reused)
            elif index is not None:
                digests.append(_make_jpeg_shard(dataset, shards_cfg, identity, index, start, stop, target))
            else:
                digests.append(make_clean(dataset, shards_cfg, split, shard, target))
            bar.update()
    if staging is not None:
        for target, out in zip(targets, outs, strict=True):
            pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, out)
        try:  # the key's folder, then the code's: empty unless another job is at work
            folder.rmdir()
            folder.parent.rmdir()
        except OSError:
            pass
    return digests


def _staged_digest(path, identity):
    """The content digest of a finished staged shard of this identity, or None (absent, damaged, other)."""
    if not pathlib.Path(path).exists():
        return None
    try:
        attrs = shards.read_shard(path)[1]
    except (RethinkError, OSError) as err:
        say(f"clean: {path} not reused ({err})")
        return None
    return attrs["content_sha256"] if all(attrs.get(k) == v for k, v in identity.items()) else None


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
        sub.add_argument("--out", required=True, nargs="+" if name == "clean" else None, help="file(s) to write")
        if name == "stats":
            sub.add_argument("--shards", nargs="+", required=True, help="clean training shards")
            continue
        sub.add_argument("--split", required=True, choices=sources.SPLITS)
        if name == "index":
            continue
        if name == "clean":
            which = sub.add_mutually_exclusive_group(required=True)
            which.add_argument("--shard", type=int)
            which.add_argument("--shards", type=parse_shards, help="FIRST-LAST: a range, one --out path each")
            sub.add_argument("--index", help="the split's index (streamed datasets)")
            sub.add_argument("--staging", help="with --shards: where finished shards wait (kept if the job dies)")
        else:
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
    if args.command == "index":
        count = imagenet.write_index(dataset, args.split, args.out)
        print(f"index: {count} {args.split} images of {dataset['name']} listed in {args.out}")
        return
    if args.command == "clean" and args.shards is not None:
        digests = make_clean_range(dataset, shards_cfg, args.split, args.shards, args.out, args.index, args.staging)
        first, last = args.shards[0], args.shards[-1]
        print(
            f"clean: wrote {args.split} shards {first}-{last} ({len(digests)} files) in {time.time() - started:.2f} s"
        )
        return
    if args.command == "clean":
        if len(args.out) != 1 or args.staging is not None:
            raise RethinkError("--shard writes one --out path, without --staging (that is for --shards)")
        args.out = args.out[0]
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
