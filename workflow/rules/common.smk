# The plan (src/rethink/plan.py) decides what runs; this file builds it once per parse and asks
# it, one line per question. Parsed again inside every cluster job: nothing here imports torch.
import inspect
import os

from snakemake.exceptions import WorkflowError

import rethink.config
import rethink.plan
from rethink import fileio, paths
from rethink.data import randomize
from rethink.errors import RethinkError

try:
    # Snakemake's YAML reader keeps the last of two repeated keys: read each file again, strictly
    for configfile_path in workflow.configfiles:
        rethink.config.read_yaml(configfile_path)
    rethink.config.validate(
        config, workflow.source_path("../schemas/config.schema.yaml")
    )
    PLAN = rethink.plan.Plan(config, workflow.configfiles)
except RethinkError as err:
    raise WorkflowError(str(err)) from None

# Tracking (config key `tracking`) reaches the trainer through the environment, which every job
# inherits and which, unlike a rule's params and shell command, is no rerun trigger.
os.environ.update(PLAN.environment())

# For --software-deployment-method conda: the pinned environment of the whole project.
ENV = "../../environment.yml"
NAME = r"[a-z][a-z0-9_]*"


wildcard_constraints:
    dataset=NAME,
    arch=NAME,
    regularizer=NAME,
    split="train|test",
    shard=r"\d{5}",
    seed=r"\d+",
    noise=randomize.CELL_WILDCARD_PATTERN,


def signed(func):
    """An input function whose signature is read once: Snakemake reads it again on every call,
    some 30 times per training job (a sixth of a 5,000-cell dry run's time, profiled).
    """
    func.__signature__ = inspect.signature(func)
    return func


# ----------------------------------------------------------------------------- training jobs
# The train rule's wildcards name a cell (compute.pack 1); a pack rule's closures name its pack.


def get_pack(wildcards):
    return PLAN.pack_of(paths.CELL_ID.format(**wildcards))


@signed
def get_train_inputs(wildcards):
    pack = get_pack(wildcards)
    return {split: PLAN.train_inputs(pack, split) for split in ("train", "test")}


@signed
def get_pack_json(wildcards):
    return PLAN.pack_json(get_pack(wildcards))


@signed
def get_runtime(wildcards, attempt):
    return PLAN.runtime(get_pack(wildcards), attempt)


def per_job(setting):
    """A setting of the training jobs, as a constant when every job has the same (the paper's GPUs
    and memory), else as a function of the job's cell."""
    values = {setting(pack) for pack in PLAN.packs}
    if len(values) == 1:
        return values.pop()
    return signed(lambda wildcards: setting(get_pack(wildcards)))


# ----------------------------------------------------------------------------- data jobs


@signed
def get_shard_spec(wildcards):
    return PLAN.shard_spec(wildcards.dataset)


@signed
def get_randomize_spec(wildcards):
    return PLAN.randomize_spec(wildcards.dataset, wildcards.noise)


@signed
def get_split_index(wildcards):
    return PLAN.index_input(wildcards.dataset, wildcards.split)


@signed
def get_clean_train_shards(wildcards):
    return PLAN.clean_shards(wildcards.dataset, "train")


@signed
def get_clean_shard(wildcards):
    return paths.CLEAN_SHARD.format(**wildcards)


@signed
def get_channel_stats(wildcards):
    return PLAN.stats_input(wildcards.dataset, wildcards.noise)


# ----------------------------------------------------------------------------- reports and kernel


@signed
def get_report_inputs(wildcards):
    return PLAN.report_inputs(wildcards.name)


def get_row_shards(split):
    return lambda wildcards: PLAN.row_shards(wildcards.row, split)


@signed
def get_row_json(wildcards):
    return PLAN.row_json(wildcards.row)


def get_row_setting(key):
    return signed(lambda wildcards: PLAN.kernel_rows[wildcards.row][key])


@signed
def get_row_gpus(wildcards):
    return 1 if PLAN.kernel_rows[wildcards.row]["device"] == "cuda" else 0


@signed
def get_row_runtime(wildcards, attempt):
    return int(PLAN.kernel_rows[wildcards.row]["runtime_minutes"] * attempt)


onstart:
    try:
        PLAN.check_datasets()
    except RethinkError as err:
        raise WorkflowError(str(err)) from None
