"""The paper's data randomizations (section 3; docs/PAPER.md, "Data randomizations"), seeded and per shard.

Names (the `noise` wildcard and config values):
  true_labels       nothing changes (cells read the clean shards)
  corrupt_p<p>      each training label, with probability p, is replaced by a class drawn
                    uniformly from all classes (it may equal the true one: ~0.9p change)
  random_labels     the same at p = 1 (corrupt_p0 is true_labels, corrupt_p1 is random_labels)
  shuffled_pixels   ONE permutation of pixel positions for every train and test image
  random_pixels     an independent permutation per training image
  gaussian          training images replaced by Gaussian noise with the clean training set's
                    per-channel mean and standard deviation

Three choices the paper leaves open are options (config key `randomization`): whether pixel
permutations move a position's C channel values together (`permute: positions`, default) or
permute all C*H*W values (`permute: values`); whether gaussian noise matches each channel's
statistics (`gaussian_stats: per_channel`, default) or one global mean and std; and whether
label noise leaves the test labels clean (`test_labels: clean`, default: the paper's reading,
which gives Fig. 1c its 90% limit) or corrupts them by the same process (`corrupted`, what the
first author's PyTorch demo does). A shard records only the options that change its noise.

Seeding: every draw comes from numpy's PCG64 seeded with (seed, stream, split, shard). Label
corruptions at every level share the "labels" stream, so with one seed the samples corrupted
at p = 0.2 are a subset of those at p = 0.4 (a coupling that makes the p-curve smoother, not
a different distribution: each level alone is exactly the paper's process).
"""

import dataclasses
import math
import re
import zlib

import numpy as np

from rethink.errors import RethinkError

NAMED = ("true_labels", "random_labels", "shuffled_pixels", "random_pixels", "gaussian")  # the names, once
IMAGE_NOISES = ("shuffled_pixels", "random_pixels", "gaussian")  # the rest change labels, or nothing
_CORRUPT = re.compile(r"corrupt_p(?P<level>\d+(?:\.\d+)?)")
# Snakemake wildcard constraint for the noise part of a shard path (true labels read clean data).
WILDCARD_PATTERN = "|".join(name for name in NAMED if name != "true_labels") + r"|corrupt_p\d+(?:\.\d+)?"
# ... and for a cell, whose noise may also be true_labels (it then reads the clean shards).
CELL_WILDCARD_PATTERN = "true_labels|" + WILDCARD_PATTERN
_CHUNK = 1024  # images per block when drawing per-image noise (bounds memory for big images)
TEST_LABELS = ("clean", "corrupted")
# option -> (default, the noise kinds whose shards it changes)
OPTIONS = {
    "permute": ("positions", ("shuffled_pixels", "random_pixels")),
    "gaussian_stats": ("per_channel", ("gaussian",)),
    "test_labels": ("clean", ("corrupt", "random_labels")),
}
DEFAULT_OPTIONS = {name: default for name, (default, _) in OPTIONS.items()}
LEVEL_DECIMALS = 6  # decimals a label-corruption level may have: all of them are in its name


@dataclasses.dataclass(frozen=True)
class Noise:
    kind: str  # one of NAMED or "corrupt"
    level: float  # label-corruption probability; 1.0 for the image randomizations

    @property
    def name(self):
        return f"corrupt_p{format_level(self.level)}" if self.kind == "corrupt" else self.kind

    @property
    def changes_labels(self):
        return self.kind in ("corrupt", "random_labels")

    @property
    def changes_images(self):
        return self.kind in IMAGE_NOISES

    def splits(self, test_labels):
        """The splits this noise rewrites; the others are read from the clean shards. Label noise
        rewrites the test labels too when `test_labels` (randomization.test_labels) is corrupted."""
        if test_labels not in TEST_LABELS:
            raise RethinkError(f"test_labels={test_labels!r} is unknown; allowed: {', '.join(TEST_LABELS)}")
        if self.kind == "shuffled_pixels" or (self.changes_labels and test_labels == "corrupted"):
            return ("train", "test")
        return ("train",) if self.changes_labels or self.changes_images else ()


def noise_options(noise, options=None):
    """The options that change `noise`'s shards, defaults filled in. A shard records, and its
    rule depends on, only these: changing another option rebuilds nothing of this noise."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise RethinkError(f"unknown randomization option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
    return {name: value for name, value in options.items() if noise.kind in OPTIONS[name][1]}


def format_level(level):
    """A level as noise names write it: fixed-point, at most LEVEL_DECIMALS decimals, no trailing zeros."""
    return f"{float(level):.{LEVEL_DECIMALS}f}".rstrip("0").rstrip(".")


def label_corruption(level):
    """The canonical noise for label corruption at level p (0 -> true, 1 -> random labels)."""
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise RethinkError(f"label corruption level {level} is outside [0, 1]")
    named = round(level, LEVEL_DECIMALS)
    # Float noise (0.1 + 0.2) is the same level; a real difference would share another level's
    # name and data (1e-7 would train as true labels).
    if not math.isclose(named, level, rel_tol=0.0, abs_tol=1e-12):
        raise RethinkError(
            f"label corruption level {level!r} has more than the {LEVEL_DECIMALS} decimals that noise "
            f"names keep, so it would train as {label_corruption(named).name}; "
            f"write it with at most {LEVEL_DECIMALS} decimals"
        )
    level = named
    if level == 0.0:
        return Noise("true_labels", 0.0)
    if level == 1.0:
        return Noise("random_labels", 1.0)
    return Noise("corrupt", level)


def parse_noise(name):
    """A noise name -> Noise; unknown names and levels outside [0, 1] are errors."""
    if name in NAMED:
        return Noise(name, 0.0 if name == "true_labels" else 1.0)
    match = _CORRUPT.fullmatch(str(name))
    if match is None:
        raise RethinkError(
            f"unknown noise {name!r}; known: {', '.join(NAMED)}, or corrupt_p<level> with "
            "level in [0, 1] (e.g. corrupt_p0.2)"
        )
    return label_corruption(match["level"])


def _rng(seed, stream, split="", shard=0):
    words = [int(seed), zlib.crc32(stream.encode()), zlib.crc32(split.encode()), int(shard)]
    return np.random.default_rng(words)


def randomize_shard(noise, seed, split, shard, images, labels, num_classes, stats=None, options=None):
    """Apply `noise` to one clean shard -> dict of the arrays that change plus `changed`.

    `changed` (uint8 per sample) marks samples whose label or image differs from the clean
    one. `stats` (per-channel `mean` and `std` of the clean training set) is needed for
    gaussian only. `options`: see DEFAULT_OPTIONS.
    """
    options = {**DEFAULT_OPTIONS, **(options or {})}
    if split not in noise.splits(options["test_labels"]):
        why = f" (test_labels={options['test_labels']})" if noise.changes_labels else ""
        raise RethinkError(f"noise {noise.name} leaves the {split} split clean{why}; nothing to write")
    if noise.changes_labels:
        rng = _rng(seed, "labels", split, shard)
        redraw = rng.random(len(labels)) < noise.level
        drawn = rng.integers(0, num_classes, size=len(labels))
        new = np.where(redraw, drawn, labels).astype(np.int64)
        return {"labels": new, "changed": (new != labels).astype(np.uint8)}

    n, c, h, w = images.shape
    # Permute positions (C values travel together) or every value: view images as n x C' x P.
    flat = images.reshape((n, c, h * w) if options["permute"] == "positions" else (n, 1, c * h * w))
    positions = flat.shape[2]
    if noise.kind == "shuffled_pixels":
        permutation = _rng(seed, "shuffled_pixels").permutation(positions)  # shared by all shards
        new = flat[:, :, permutation].reshape(images.shape)
    elif noise.kind == "random_pixels":
        rng = _rng(seed, "random_pixels", split, shard)
        new = np.empty_like(images)
        for start in range(0, n, _CHUNK):
            block = flat[start : start + _CHUNK]
            order = rng.permuted(np.tile(np.arange(positions), (len(block), 1)), axis=1)
            new[start : start + _CHUNK] = np.take_along_axis(block, order[:, None, :], axis=2).reshape(
                (len(block), c, h, w)
            )
    elif noise.kind == "gaussian":
        if stats is None:
            raise RethinkError("gaussian noise needs the clean training set's channel statistics")
        rng = _rng(seed, "gaussian", split, shard)
        mean, std = gaussian_moments(stats, options["gaussian_stats"])
        mean, std = mean[:, None, None], std[:, None, None]
        new = np.empty(images.shape, dtype=np.float32)
        for start in range(0, n, _CHUNK):
            size = (min(_CHUNK, n - start), c, h, w)
            new[start : start + _CHUNK] = rng.normal(0.0, 1.0, size=size) * std + mean
    else:
        raise RethinkError(f"noise {noise.name} does not change images")
    changed = (new.reshape(n, -1) != images.reshape(n, -1)).any(axis=1).astype(np.uint8)
    return {"images": new, "changed": changed}


def gaussian_moments(stats, how):
    """Per-channel (mean, std) arrays the gaussian noise is drawn with."""
    mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    if how == "global":  # pool the channels (equal pixel counts): total mean and variance
        pooled_mean = mean.mean()
        pooled_var = (std**2 + mean**2).mean() - pooled_mean**2
        mean, std = np.full_like(mean, pooled_mean), np.full_like(std, np.sqrt(pooled_var))
    return mean, std


def channel_stats(image_blocks):
    """Per-channel mean and standard deviation over all pixels of all images (float64)."""
    total = total_sq = count = 0
    for block in image_blocks:
        values = block.astype(np.float64)
        total = total + values.sum(axis=(0, 2, 3))
        total_sq = total_sq + (values**2).sum(axis=(0, 2, 3))
        count += values.shape[0] * values.shape[2] * values.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist(), "pixels_per_channel": int(count)}
