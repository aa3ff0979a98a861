"""Every file name under results/: the rules, the CLIs that write or read these files, and the
tests take their paths from here (a pattern's `{wildcards}` are the rules' wildcards)."""

import hashlib
import math
import pathlib

from rethink.data import sources

RESULTS = "results"
CLEAN_SHARD = RESULTS + "/data/{dataset}/clean/{split}-{shard}.h5"
NOISE_SHARD = RESULTS + "/data/{dataset}/{noise}/s{seed}/{split}-{shard}.h5"
# A streamed dataset's listing of one split (rethink.data.imagenet): what its shard jobs read.
SPLIT_INDEX = RESULTS + "/data/{dataset}/clean/{split}-index.json"
# Where a streamed dataset's range job keeps its finished shards until all are done (outside
# its outputs, which Snakemake deletes when the job fails: a rerun reuses them). {code}: the
# data code's hash, so a changed writer never meets shards of the old one.
CLEAN_STAGING = RESULTS + "/data/{dataset}/clean/staging/{code}"
CHANNEL_STATS = RESULTS + "/data/{dataset}/clean/train-stats.json"
DOWNLOADED = RESULTS + "/data/{dataset}/downloaded.json"  # what rethink.data.download fetched
DATA_LOG = RESULTS + "/logs/data/{dataset}/{stage}/{split}-{shard}.log"
# One directory per cell; the checkpoint lives outside it (a failed job's outputs are deleted,
# its checkpoint must survive for the retry to resume). The checkpoint's name carries a hash of
# the cell's JSON and of the training code: a retry of the same cell resumes, an edited cell
# or changed trainer starts afresh instead of meeting a checkpoint it must refuse.
CELL_ID = "{dataset}/{arch}/{regularizer}/{noise}/s{seed}"  # a cell's name, and its place in every tree below
CELL_DIR = RESULTS + "/cells/" + CELL_ID
# What a cell directory holds: the trainer writes them, the aggregation reads them. train.log
# (epochs, checkpoints, resumes) is appended across retries and is not a declared output.
CELL_FILES = {"cell": "cell.json", "history": "history.csv", "summary": "summary.json", "log": "train.log"}
CELL_JSON, CELL_HISTORY, CELL_SUMMARY = (f"{CELL_DIR}/{CELL_FILES[k]}" for k in ("cell", "history", "summary"))
# A training job's stderr for that attempt (Snakemake truncates a declared log on every attempt),
# where a failure's one-line cause goes: per cell (rule train), or per pack (compute.pack > 1).
TRAIN_LOG = RESULTS + "/logs/train/" + CELL_ID + ".log"
TRAIN_PACK_LOG = RESULTS + "/logs/train/{pack}.log"
# A training job's run time and peak memory (Snakemake's benchmark), which rethink.calibrate reads
TRAIN_BENCHMARK = RESULTS + "/benchmarks/train/" + CELL_ID + ".tsv"
TRAIN_PACK_BENCHMARK = RESULTS + "/benchmarks/train/{pack}.tsv"
CHECKPOINT = RESULTS + "/checkpoints/" + CELL_ID + "/{key}.pt"
# Live curves of a cell (config `tracking`): TensorBoard event files, or W&B's offline run folders
# (in their `wandb/`); {cell} is a cell id. No declared output: switching tracking reruns nothing.
TRACKING = RESULTS + "/tracking/{backend}/{cell}"
# The aggregated metrics; the analysis CLIs get the folder (--metrics) and find each file by key.
METRICS_DIR = RESULTS + "/metrics"
METRIC_FILES = {
    **{f"{table}_{ext}": f"{table}.{ext}" for table in ("summary", "curves") for ext in ("csv", "parquet")},
    "experiments": "experiments.json",  # experiment -> its cells, and the config they came from
    "kernel": "kernel.csv",  # Table 3's rows (the kernel step)
}
METRICS = {key: f"{METRICS_DIR}/{METRIC_FILES[key]}" for key in METRIC_FILES if key.startswith(("summary", "curves"))}
EXPERIMENTS_JSON = f"{METRICS_DIR}/{METRIC_FILES['experiments']}"
KERNEL_METRICS = f"{METRICS_DIR}/{METRIC_FILES['kernel']}"
FIGURE = RESULTS + "/figures/{name}.{ext}"
TABLE = RESULTS + "/tables/{name}.{ext}"
REPORT_LOG = RESULTS + "/logs/analysis/{name}.log"
CLAIMS = RESULTS + "/claims.{ext}"
# Section 5 / Appendix C: one result file per Table 3 row, their table, Theorem 1's checks
KERNEL_ROW = RESULTS + "/kernel/{row}.json"
KERNEL_LOG = RESULTS + "/logs/kernel/{row}.log"
THEOREM1 = RESULTS + "/theorem1.{ext}"


def cell_file(out_dir, kind):
    """A file of a cell directory by kind (a key of CELL_FILES)."""
    return pathlib.Path(out_dir) / CELL_FILES[kind]


def tracking_dir(backend, cell_id):
    return pathlib.Path(TRACKING.format(backend=backend, cell=cell_id))


def metrics_file(metrics_dir, key):
    """A file of the metrics folder by key (a key of METRIC_FILES)."""
    return pathlib.Path(metrics_dir) / METRIC_FILES[key]


def shard_id(index):
    return f"{index:05d}"


def n_shards(spec, shards_cfg, split):
    return math.ceil(sources.split_size(spec, split) / sources.shard_size(spec, shards_cfg))


def clean_shards(spec, shards_cfg, split):
    return [
        CLEAN_SHARD.format(dataset=spec["name"], split=split, shard=shard_id(i))
        for i in range(n_shards(spec, shards_cfg, split))
    ]


def split_shards(spec, shards_cfg, noise, seed, split, test_labels):
    """The shards a cell reads for one split: randomized where the noise rewrites the split
    (which, for the test split of a label noise, `test_labels` decides)."""
    if split not in noise.splits(test_labels):
        return clean_shards(spec, shards_cfg, split)
    return [
        NOISE_SHARD.format(dataset=spec["name"], noise=noise.name, seed=seed, split=split, shard=shard_id(i))
        for i in range(n_shards(spec, shards_cfg, split))
    ]


def split_index(spec, split):
    return SPLIT_INDEX.format(dataset=spec["name"], split=split)


def channel_stats(spec):
    return CHANNEL_STATS.format(dataset=spec["name"])


def checkpoint(cell, cell_json, code_digest):
    key = hashlib.sha256(f"{cell_json}|{code_digest}".encode()).hexdigest()[:16]
    return CHECKPOINT.format(**cell.wildcards, key=key)


def cell_dir(cell):
    return CELL_DIR.format(**cell.wildcards)


def cell_files(cell):
    """A cell's declared outputs: cell.json, history.csv, summary.json (written last)."""
    return [template.format(**cell.wildcards) for template in (CELL_JSON, CELL_HISTORY, CELL_SUMMARY)]


def cell_summary(cell):
    return CELL_SUMMARY.format(**cell.wildcards)


def train_job_log(cell, rule):
    """The log of the job that trains a cell: its own (rule `train`), or its pack's (a train_* rule)."""
    return TRAIN_LOG.format(**cell.wildcards) if rule == "train" else TRAIN_PACK_LOG.format(pack=rule)
