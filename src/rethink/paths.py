"""The path scheme under results/, in one place (rules, CLIs and tests all ask here)."""

import math

from rethink.data import sources

RESULTS = "results"
CLEAN_SHARD = RESULTS + "/data/{dataset}/clean/{split}-{shard}.h5"
NOISE_SHARD = RESULTS + "/data/{dataset}/{noise}/s{seed}/{split}-{shard}.h5"
CHANNEL_STATS = RESULTS + "/data/{dataset}/clean/train-stats.json"
DATA_LOG = RESULTS + "/logs/data/{dataset}/{stage}/{split}-{shard}.log"


def shard_id(index):
    return f"{index:05d}"


def n_shards(spec, shards_cfg, split):
    return math.ceil(sources.split_size(spec, split) / shards_cfg["size"])


def clean_shards(spec, shards_cfg, split):
    return [
        CLEAN_SHARD.format(dataset=spec["name"], split=split, shard=shard_id(i))
        for i in range(n_shards(spec, shards_cfg, split))
    ]


def split_shards(spec, shards_cfg, noise, seed, split):
    """The shards a cell reads for one split: randomized where the noise rewrites the split."""
    if split not in noise.splits:
        return clean_shards(spec, shards_cfg, split)
    return [
        NOISE_SHARD.format(dataset=spec["name"], noise=noise.name, seed=seed, split=split, shard=shard_id(i))
        for i in range(n_shards(spec, shards_cfg, split))
    ]


def channel_stats(spec):
    return CHANNEL_STATS.format(dataset=spec["name"])
