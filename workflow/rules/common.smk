# Config validation, grid expansion and input functions. Parsed again inside every cluster
# job: nothing here may import torch or read data.
import pathlib

from snakemake.exceptions import WorkflowError

import rethink.config
from rethink import grid, paths
from rethink.data import randomize, sources
from rethink.errors import RethinkError

try:
    rethink.config.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except RethinkError as err:
    raise WorkflowError(str(err)) from None

SHARDS = config["shards"]
DATA_UNITS = grid.data_units(config)


def dataset_spec(name):
    return config["datasets"][name]


def data_targets():
    """Every shard the configured experiments read, clean and randomized."""
    targets = set()
    for name, noise, seed in DATA_UNITS:
        for split in sources.SPLITS:
            targets.update(paths.split_shards(dataset_spec(name), SHARDS, noise, seed, split))
    return sorted(targets)


def missing_datasets():
    """Datasets whose clean shards are not built yet and whose raw files cannot be found."""
    for name in sorted({name for name, _, _ in DATA_UNITS}):
        spec = dataset_spec(name)
        built = all(
            pathlib.Path(p).exists() for s in sources.SPLITS for p in paths.clean_shards(spec, SHARDS, s)
        )
        if not built:
            sources.check_available(spec)


# ----------------------------------------------------------------------------- input functions


def shard_spec(wildcards):
    return sources.canonical_json({"dataset": dataset_spec(wildcards.dataset), "shards": SHARDS})


def randomize_spec(wildcards):
    spec = {"dataset": dataset_spec(wildcards.dataset), "shards": SHARDS, "randomization": config["randomization"]}
    return sources.canonical_json(spec)


def clean_train_shards(wildcards):
    return paths.clean_shards(dataset_spec(wildcards.dataset), SHARDS, "train")


def clean_shard(wildcards):
    return paths.CLEAN_SHARD.format(**wildcards)


def gaussian_stats(wildcards):
    return [paths.channel_stats(dataset_spec(wildcards.dataset))] if wildcards.noise == "gaussian" else []


onstart:
    try:
        missing_datasets()
    except RethinkError as err:
        raise WorkflowError(str(err)) from None
