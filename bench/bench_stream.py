"""ImageNet streaming: what a shard stores, and images/s of the streaming reader vs torchvision's
ImageFolder + DataLoader, measured in the same run on the same JPEG files.

    python bench/bench_stream.py [--images 512] [--ranks 4] [--no-write]

No real ImageNet here: a synthetic folder of photo-like JPEGs (smooth random fields plus grain,
quality 90) at ImageNet's mean size of about 400 x 350, written by the tests' real-format helper's
layout. Measured:
  - storage per image: the JPEG bytes (what our shards keep) vs resized 299 x 299 uint8 (the
    alternative), and the CPU cost of decoding one JPEG (what storing bytes costs per sample);
  - throughput (read + decode + augment, TF-slim crop-and-resize to 299 + flip, batch 32): our
    StreamedSplit (a batch thread and a reading thread) vs ImageFolder + DataLoader with the equivalent
    torchvision transforms (RandomResizedCrop(299, (0.05, 1), (3/4, 4/3)) + flip), 0 and 2
    workers. Best of --repeats. On a GPU machine add --device cuda for nvJPEG decoding;
  - what one of --ranks processes reads per epoch (the bytes its read calls return, from
    /proc/self/io, over the shards' bytes), in its first epoch and in a later one;
  - the reader alone: ms per batch of 8 in an epoch after the first, decoding and cropping
    stubbed out (as free to the host as a GPU makes them), windows of one shard: the reads that
    are on the batch thread's path.
Results replace this benchmark's section of docs/BENCHMARKS.md.
"""

import argparse
import datetime
import io
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bench_read import machine  # noqa: E402
from rethink.data import prepare  # noqa: E402
from rethink.data.shards import read_shard  # noqa: E402
from rethink.fileio import canonical_json  # noqa: E402
from rethink.train import distributed, stream  # noqa: E402

from report import best_of, publish  # noqa: E402

WNIDS = [f"n{i:08d}" for i in range(8)]


def photo_like(rng, h, w):
    """A smooth random colour field with grain: compresses like a photograph, not like noise."""
    from PIL import Image

    coarse = rng.uniform(0, 255, size=(h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8))


def write_folder(root, n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        wnid = WNIDS[i % len(WNIDS)]
        h, w = int(rng.normal(350, 60)), int(rng.normal(400, 60))
        path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(rng, max(h, 100), max(w, 100)).save(path, format="JPEG", quality=90)
    (root / "val" / WNIDS[0]).mkdir(parents=True)  # the layout wants one; the bench reads train/
    return sorted((root / "train").rglob("*.JPEG"))


def bytes_read():
    """Bytes this process's read calls have returned (page cache included)."""
    for line in pathlib.Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def rank_reads(paths, ranks, hp):
    """Fraction of the shards' bytes rank 0 of `ranks` processes reads in epoch 1 and in epoch 2."""
    split = stream.StreamedSplit(paths, read_shard(paths[0], ["labels"])[1], 2, torch.device("cpu"))
    world, total = distributed.World(0, ranks, 0, None), sum(pathlib.Path(p).stat().st_size for p in paths)
    fractions = []
    for seed in (1, 2):  # two epochs
        before = bytes_read()
        for _ in split.train_batches({"seed": torch.tensor([seed])}, 0, hp, world=world):
            pass
        fractions.append((bytes_read() - before) / total)
    split.close()
    return fractions


def reader_alone(paths, batch):
    """Seconds per batch of the reader alone (decoding and cropping stubbed out, as free to the host
    as a GPU makes them; the consumer takes batches at once), in an epoch after the first: the
    reads on the batch thread's path, windows of one shard so that an epoch crosses many."""
    real = stream.decode, stream.view
    stream.decode, stream.view = lambda blobs, device: blobs, lambda image, box, size, flip: torch.zeros(3, 1, 1)
    try:
        split = stream.StreamedSplit(paths, read_shard(paths[0], ["labels"])[1], 1, torch.device("cpu"))
        hp = {"batch_size": batch, "crop_size": 1, "random_crop": True, "augment": True}
        for _ in split.train_batches({"seed": torch.tensor([1])}, 0, hp):  # the first epoch verifies
            pass
        t = time.perf_counter()
        batches = sum(1 for _ in split.train_batches({"seed": torch.tensor([2])}, 0, hp))
        split.close()
        return (time.perf_counter() - t) / batches
    finally:
        stream.decode, stream.view = real


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = pathlib.Path(tempfile.mkdtemp())
    files = write_folder(tmp / "root", args.images)

    from PIL import Image

    jpeg_bytes = np.mean([f.stat().st_size for f in files])
    blobs = [f.read_bytes() for f in files]
    decode_s = best_of(args.repeats, lambda: [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    resized_bytes = 299 * 299 * 3

    spec = {
        "name": "bench", "source": "imagenet", "root": str(tmp / "root"), "download": False, "verify": True,
        "subset": {"train": args.images, "test": None, "how": "first", "seed": 0},
        "stream": {"shard_size": 64, "shuffle_seed": 0, "window_shards": 2},
    }  # fmt: skip
    spec_json = canonical_json({"dataset": spec, "shards": {"size": 50000, "compression": "none", "chunk_samples": 1}})
    index = tmp / "train-index.json"
    prepare.main(["index", "--spec", spec_json, "--split", "train", "--out", str(index)])
    paths = []
    t = time.perf_counter()
    for s in range(-(-args.images // 64)):
        paths.append(str(tmp / f"train-{s:05d}.h5"))
        prepare.main(["clean", "--spec", spec_json, "--split", "train", "--shard", str(s), "--index", str(index),
                      "--out", paths[-1]])  # fmt: skip
    write_s = time.perf_counter() - t
    shard_bytes = sum(pathlib.Path(p).stat().st_size for p in paths) / args.images

    dev = torch.device(args.device)
    split = stream.StreamedSplit(paths, read_shard(paths[0], ["labels"])[1], 2, dev)
    hp = {"batch_size": args.batch, "crop_size": 299, "random_crop": True, "augment": True}
    plan = {"seed": torch.tensor([1])}
    ours = best_of(args.repeats, lambda: sum(len(y) for _, y in split.train_batches(plan, 0, hp)))
    split.close()

    from rethink.torchvision_guard import torchvision

    transforms = torchvision.transforms
    pipeline = transforms.Compose([
        transforms.RandomResizedCrop(299, scale=(0.05, 1.0), ratio=(0.75, 1.33)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])  # fmt: skip
    folder = torchvision.datasets.ImageFolder(str(tmp / "root" / "train"), transform=pipeline)
    baselines = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(folder, batch_size=args.batch, shuffle=True, num_workers=workers)
        baselines[workers] = best_of(args.repeats, lambda loader=loader: sum(len(y) for _, y in loader))

    rate = {"ours": args.images / ours, **{f"imagefolder_w{w}": args.images / s for w, s in baselines.items()}}
    reads = rank_reads(paths, args.ranks, hp)
    load = os.getloadavg()[0]
    alone = reader_alone(paths, 8)
    results = dict(
        images=args.images, jpeg_bytes=jpeg_bytes, shard_bytes_per_image=shard_bytes, resized_bytes=resized_bytes,
        decode_ms=1000 * decode_s / args.images, shard_write_images_per_s=args.images / write_s, rate=rate,
        rank_read_fraction=reads, reader_alone_s_per_batch=alone,
        load=[load, os.getloadavg()[0]],
    )  # fmt: skip
    print(json.dumps(results, indent=2))
    date = datetime.date.today().isoformat()
    lines = [
        "## ImageNet streaming (`bench/bench_stream.py`)",
        "",
        f"{machine()}; device {args.device}; {date}. {args.images} synthetic photo-like JPEGs (~400x350, "
        "quality 90; no real ImageNet here), batch "
        f"{args.batch}, crop-and-resize to 299 + flip, best of {args.repeats}, one torch thread.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| JPEG bytes per image (these files) | {jpeg_bytes / 1024:.1f} KiB |",
        f"| shard bytes per image (JPEG + offsets, labels, sizes) | {shard_bytes / 1024:.1f} KiB |",
        f"| 299x299 uint8 per image (the alternative, uncompressed) | {resized_bytes / 1024:.1f} KiB |",
        f"| CPU decode of one JPEG (Pillow) | {1000 * decode_s / args.images:.2f} ms |",
        f"| shard writing (read, decode-check, write) | {args.images / write_s:.0f} images/s |",
        "",
        "| reader (read + decode + augment) | images/s | vs ImageFolder, 0 workers |",
        "|---|---:|---:|",
    ]
    base = rate["imagefolder_w0"]
    names = {
        "ours": "StreamedSplit (a batch thread and a reading thread)",
        "imagefolder_w0": "ImageFolder + DataLoader, 0 workers",
        "imagefolder_w2": "ImageFolder + DataLoader, 2 workers",
    }
    lines += [f"| {names[k]} | {v:.0f} | {v / base:.2f}x |" for k, v in rate.items()]
    lines += [
        "",
        f"Load average (1 min) {results['load'][0]:.1f} before and {results['load'][1]:.1f} after the "
        "reader-alone run (other jobs share these cores).",
        "",
        "| reader | value |",
        "|---|---:|",
        f"| rank 0 of {args.ranks}: bytes read / shard bytes, epoch 1 | {reads[0]:.2f} |",
        f"| rank 0 of {args.ranks}: bytes read / shard bytes, epoch 2 | {reads[1]:.2f} |",
        f"| reader alone (decoding and cropping free), after the first epoch | {1000 * alone:.2f} ms a batch |",
    ]
    publish("bench_stream", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
