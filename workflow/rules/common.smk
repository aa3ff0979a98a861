# The plan (src/rethink/plan.py) decides what runs; this file builds it once per parse and asks
# it, one line per question. Parsed again inside every cluster job: nothing here imports torch.
import inspect
import os

from snakemake.exceptions import WorkflowError

import rethink.config
import rethink.plan
from rethink import fileio, paths
from rethink.data import randomize, sources
from rethink.errors import RethinkError

try:
    # The config from its layers (rethink.plan.layered): config/config.yaml of this checkout, each
    # --configfile, --config. It replaces what Snakemake merged, whose YAML reader also keeps the
    # last of two repeated keys (ours refuses them).
    CONFIGFILES, layered = rethink.plan.layered(
        [
            os.path.join(workflow.basedir, "config", "config.yaml"),
            *workflow.config_settings.configfiles,
        ],
        workflow.config_settings.config,
    )
    config.clear()
    config.update(layered)
    rethink.config.validate(
        config, workflow.source_path("../schemas/config.schema.yaml")
    )
    PLAN = rethink.plan.Plan(config, CONFIGFILES)
except RethinkError as err:
    raise WorkflowError(str(err)) from None

# Tracking (config key `tracking`) reaches the trainer through the environment, which every job
# inherits and which, unlike a rule's params and shell command, is no rerun trigger.
os.environ.update(PLAN.environment())

NAME = r"[a-z][a-z0-9_]*"
# What every CPU job asks Slurm for: data jobs, Theorem 1, the analysis when not local rules
CPU = PLAN.cpu_resources()


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


def per_job(setting):
    """A setting of the training jobs, as a constant when every job has the same (the paper's GPUs
    and memory), else as a function of the job's cell."""
    values = {setting(pack) for pack in PLAN.packs}
    if len(values) == 1:
        return values.pop()
    return signed(lambda wildcards: setting(get_pack(wildcards)))


def train_resources():
    """The train rule's resources (PLAN.train_resources): the time limit a function of the job's
    cell and attempt, the others per_job."""
    requests = {pack: PLAN.train_resources(pack) for pack in PLAN.packs}
    resources = {
        key: per_job(lambda pack, key=key: requests[pack][key])
        for key in requests[PLAN.packs[0]]
    }
    resources["runtime"] = signed(
        lambda wildcards, attempt: PLAN.runtime(get_pack(wildcards), attempt)
    )
    return resources


def pack_resources(pack):
    """A pack rule's resources (compute.pack > 1): the time limit a function of the attempt."""
    return dict(
        PLAN.train_resources(pack),
        runtime=lambda wildcards, attempt: PLAN.runtime(pack, attempt),
    )


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
def get_downloaded(wildcards):
    return PLAN.download_input(wildcards.dataset)


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


def kernel_resources():
    """The kernel_row rule's resources (PLAN.kernel_resources), functions of the job's row and attempt."""
    keys = (
        PLAN.kernel_resources(next(iter(PLAN.kernel_rows))) if PLAN.kernel_rows else {}
    )
    return {
        key: signed(
            lambda wildcards, attempt, key=key: PLAN.kernel_resources(
                wildcards.row, attempt
            )[key]
        )
        for key in keys
    }


onstart:
    try:
        PLAN.check_datasets()
    except RethinkError as err:
        raise WorkflowError(str(err)) from None
    # Snakemake knows its --retries only now, after parsing: a training job may fail that often
    # plus once for each further job of its chain (compute.max_runtime_minutes)
    for rule_name, extra in PLAN.chain_retries().items():
        rule = getattr(rules, rule_name).rule
        rule.restart_times = workflow.execution_settings.retries + extra
