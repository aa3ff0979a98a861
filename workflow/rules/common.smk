# Config validation, grid expansion and input functions. Parsed again inside every cluster
# job: nothing here may import torch or read data.
import collections
import pathlib

from snakemake.exceptions import WorkflowError

import rethink.config
from rethink import codehash, fileio, grid, paths
from rethink.data import randomize, sources
from rethink.errors import RethinkError

try:
    # Snakemake's YAML reader keeps the last of two repeated keys: read each file again, strictly
    for configfile_path in workflow.configfiles:
        rethink.config.read_yaml(configfile_path)
    rethink.config.validate(
        config, workflow.source_path("../schemas/config.schema.yaml")
    )
    CELLS, EXPERIMENTS = grid.expand(config)
except RethinkError as err:
    raise WorkflowError(str(err)) from None

SHARDS = config["shards"]
TEST_LABELS = config["randomization"]["test_labels"]
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
    noise=randomize.WILDCARD_PATTERN,


DATA_UNITS = grid.data_units(config, CELLS)
CODE = {stage: codehash.digest(stage) for stage in codehash.STAGES}


def dataset_spec(name):
    return config["datasets"][name]


def data_targets():
    """Every shard the cells read, clean and randomized."""
    targets = set()
    for name, noise, seed in DATA_UNITS:
        for split in sources.SPLITS:
            targets.update(
                paths.split_shards(
                    dataset_spec(name), SHARDS, noise, seed, split, TEST_LABELS
                )
            )
    return sorted(targets)


def cell_outputs(ids):
    """The cells' summary.json files (each written last by its training job)."""
    return [paths.cell_summary(CELLS[i][0]) for i in ids]


# ----------------------------------------------------------------------------- reports

# A figure or table is made when the config has the experiment of that name; Figure 3 (the
# model diagram) needs no experiment.
FIGURES = [
    name
    for name in ("fig1a", "fig1b", "fig1c", "fig2a", "fig2b")
    if name in EXPERIMENTS
] + ["fig3"]
TABLES = [name for name in ("table1", "table2", "table4") if name in EXPERIMENTS]


def report_outputs():
    """Every figure, table and the claims check the config asks for."""
    files = [paths.FIGURE.format(name=f, ext="png") for f in FIGURES]
    files += [paths.TABLE.format(name=t, ext="csv") for t in TABLES]
    return files + kernel_outputs() + [paths.CLAIMS.format(ext="md")]


def metrics_inputs(name):
    """What a report reads: the metrics tables and the experiment membership (none for fig3)."""
    if name == "fig3":
        return {}
    return {
        "summary": paths.METRICS["summary_parquet"],
        "curves": paths.METRICS["curves_parquet"],
        "experiments": paths.EXPERIMENTS_JSON,
    }


def metrics_argument(name):
    return (
        ""
        if name == "fig3"
        else f"--metrics {pathlib.Path(paths.EXPERIMENTS_JSON).parent}"
    )


def relative_to_workdir(path):
    """A path as recorded in provenance: relative when inside the working directory, so a
    moved or freshly cloned checkout with its results is still up to date."""
    path, here = pathlib.Path(path).resolve(), pathlib.Path.cwd().resolve()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def membership_json():
    configs = [relative_to_workdir(p) for p in workflow.config_settings.configfiles]
    configs = configs or ["config/config.yaml"]
    return fileio.canonical_json(
        {"config": ", ".join(configs), "experiments": EXPERIMENTS}
    )


def claims_json():
    return fileio.canonical_json(config["claims"])


def missing_datasets():
    """Datasets whose clean shards are not built yet and whose raw files cannot be found."""
    for name in sorted({name for name, _, _ in DATA_UNITS} | kernel_datasets()):
        spec = dataset_spec(name)
        built = all(
            pathlib.Path(p).exists()
            for s in sources.SPLITS
            for p in paths.clean_shards(spec, SHARDS, s)
        )
        if not built:
            sources.check_available(spec)


# ----------------------------------------------------------------------------- data inputs


def stored_spec(name):
    """The dataset config as the data files record it: without stream.shards_per_job, which
    only groups shard writing into jobs (changing it rebuilds no file)."""
    spec = dict(dataset_spec(name))
    if "stream" in spec:
        spec["stream"] = {
            k: v for k, v in spec["stream"].items() if k != "shards_per_job"
        }
    return spec


def shard_spec(wildcards):
    return fileio.canonical_json(
        {"dataset": stored_spec(wildcards.dataset), "shards": SHARDS}
    )


def randomize_spec(wildcards):
    # only the options that shape this noise: editing another one rebuilds none of its shards
    options = randomize.noise_options(
        randomize.parse_noise(wildcards.noise), config["randomization"]
    )
    spec = {
        "dataset": stored_spec(wildcards.dataset),
        "shards": SHARDS,
        "randomization": options,
    }
    return fileio.canonical_json(spec)


def split_index(wildcards):
    """A streamed dataset's clean shard reads its split's index; the others read raw files."""
    spec = dataset_spec(wildcards.dataset)
    return [paths.split_index(spec, wildcards.split)] if sources.streamed(spec) else []


# A streamed dataset's clean shards are written by one job per range of
# stream.shards_per_job consecutive shards (rule data_<dataset>_<split>_r<NNN>); data_clean
# (one job per shard) makes the other datasets' only.
STREAMED = sorted(n for n, s in config["datasets"].items() if sources.streamed(s))
# a dataset name that is not a streamed one (a negative lookahead on the whole name)
NOT_STREAMED = f"(?!(?:{'|'.join(STREAMED)})(?![a-z0-9_])){NAME}" if STREAMED else NAME
ShardRange = collections.namedtuple(
    "ShardRange", ["rule", "dataset", "split", "first", "last"]
)


def shard_ranges():
    ranges = []
    for name in STREAMED:
        spec = dataset_spec(name)
        per_job = spec["stream"]["shards_per_job"]
        for split in sources.SPLITS:
            count = paths.n_shards(spec, SHARDS, split)
            for r, first in enumerate(range(0, count, per_job)):
                last = min(count, first + per_job) - 1
                job = f"data_{name}_{split}_r{r:03d}"
                ranges.append(ShardRange(job, name, split, first, last))
    return ranges


def range_outputs(r):
    return [
        paths.CLEAN_SHARD.format(
            dataset=r.dataset, split=r.split, shard=paths.shard_id(i)
        )
        for i in range(r.first, r.last + 1)
    ]


def range_argument(span):
    """`--shards FIRST-LAST`, as a parameter Snakemake does not record (a function of the
    outputs): changing shards_per_job regroups the shards and reruns no job."""

    def shards(wildcards, output):
        return f"{span.first}-{span.last}"

    return shards


def clean_train_shards(wildcards):
    return paths.clean_shards(dataset_spec(wildcards.dataset), SHARDS, "train")


def clean_shard(wildcards):
    return paths.CLEAN_SHARD.format(**wildcards)


def gaussian_stats(wildcards):
    return (
        [paths.channel_stats(dataset_spec(wildcards.dataset))]
        if wildcards.noise == "gaussian"
        else []
    )


# ----------------------------------------------------------------------------- training inputs

PACKS = grid.packs(config, CELLS)


def pack_members(pack):
    return [CELLS[cell_id] for cell_id in pack.ids]


def cell_split_shards(cell, split):
    return paths.split_shards(
        dataset_spec(cell.dataset), SHARDS, cell.noise, cell.seed, split, TEST_LABELS
    )


def pack_shards(pack, split):
    """Every shard the pack's cells read for `split`, and the clean shards a randomized shard
    links to (its true labels, and images for label noise): a deleted clean shard is rebuilt.
    """
    shards = set()
    for cell, _ in pack_members(pack):
        shards.update(cell_split_shards(cell, split))
        shards.update(paths.clean_shards(dataset_spec(cell.dataset), SHARDS, split))
    return sorted(shards)


def pack_outputs(pack):
    return [f for cell, _ in pack_members(pack) for f in paths.cell_files(cell)]


def pack_json(pack):
    """What the trainer reads: each cell's JSON, its shards, output directory and checkpoint
    (keyed by the cell's JSON and the training code, so an edited cell starts afresh).
    """
    members = []
    for cell, spec in pack_members(pack):
        members.append(
            {
                "cell": spec,
                "train": cell_split_shards(cell, "train"),
                "test": cell_split_shards(cell, "test"),
                "out_dir": paths.cell_dir(cell),
                "checkpoint": paths.checkpoint(
                    cell, fileio.canonical_json(spec), CODE["train"]
                ),
            }
        )
    return fileio.canonical_json(members)


def pack_arch(pack):
    """The architecture's config entry: one per pack (packs never mix architectures)."""
    return config["architectures"][pack_members(pack)[0][0].arch]


def pack_ranks(pack):
    """Processes that train the pack's cell together (the architecture's `gpus`; 1 = one process)."""
    return pack_arch(pack)["gpus"]


def pack_launcher(pack):
    """How the job starts the trainer: one process, or torchrun with one process per GPU."""
    ranks = pack_ranks(pack)
    if ranks == 1:
        return "exec python"
    return f"exec torchrun --standalone --nnodes=1 --nproc_per_node={ranks}"


def pack_cpus(pack):
    return config["compute"]["threads"] * pack_ranks(pack)


def pack_gpus(pack):
    """GPUs the job asks for: one per process of a multi-GPU cell (none when its device is cpu,
    where the processes are CPU ranks); else compute.gpus, or 1 for a cuda cell."""
    ranks, device = pack_ranks(pack), pack_members(pack)[0][1]["hparams"]["device"]
    if ranks > 1:
        return 0 if device == "cpu" else ranks
    requested = config["compute"]["gpus"]
    if requested is not None:
        return requested
    return 1 if pack_members(pack)[0][1]["hparams"]["device"] == "cuda" else 0


def pack_runtime(pack):
    """Minutes: the architecture's estimate per cell, times the cells, times the attempt number
    (a retry gets more time)."""
    per_cell = pack_arch(pack)["runtime_minutes"]

    def runtime(wildcards, attempt):
        return int(per_cell * len(pack.ids) * attempt)

    return runtime


def pack_mem_mb(pack):
    return pack_arch(pack)["mem_mb"]


# ----------------------------------------------------------------------------- kernel inputs
# Section 5 (Table 3) and Appendix C (Theorem 1): rows read their dataset's clean shards.

KERNEL = config["kernel"]
KERNEL_ROWS = {name: row for name, row in KERNEL["rows"].items() if row["enabled"]}
THEOREM1 = config["theorem1"]


def kernel_outputs():
    """Table 3 when a kernel row is enabled, Theorem 1's results when it is enabled."""
    files = [paths.TABLE.format(name="table3", ext="csv")] if KERNEL_ROWS else []
    return files + ([paths.THEOREM1.format(ext="csv")] if THEOREM1["enabled"] else [])


def theorem1_dataset():
    return (
        THEOREM1["dataset"]
        if THEOREM1["enabled"] and THEOREM1["dataset_sizes"]
        else None
    )


def kernel_datasets():
    names = {row["dataset"] for row in KERNEL_ROWS.values()}
    return names | ({theorem1_dataset()} if theorem1_dataset() else set())


def kernel_row_shards(split):
    def row_shards(wildcards):
        dataset = KERNEL_ROWS[wildcards.row]["dataset"]
        return paths.clean_shards(dataset_spec(dataset), SHARDS, split)

    return row_shards


def kernel_row_json(wildcards):
    """What the solver reads: the row, its name, and the settings of its featuriser."""
    row = dict(KERNEL_ROWS[wildcards.row], name=wildcards.row)
    row.update(batch=KERNEL["batch"], median_samples=KERNEL["median_samples"])
    if row["features"] != "raw":
        row[row["features"]] = KERNEL[row["features"]]
    return fileio.canonical_json(row)


def kernel_row_setting(key):
    return lambda wildcards: KERNEL_ROWS[wildcards.row][key]


def kernel_row_gpus(wildcards):
    return 1 if KERNEL_ROWS[wildcards.row]["device"] == "cuda" else 0


def kernel_row_runtime(wildcards, attempt):
    return int(KERNEL_ROWS[wildcards.row]["runtime_minutes"] * attempt)


def theorem1_shards():
    dataset = theorem1_dataset()
    return paths.clean_shards(dataset_spec(dataset), SHARDS, "train") if dataset else []


def claims_kernel_argument():
    """The claims check reads Table 3's metrics when the config has kernel rows."""
    return f"--kernel {paths.KERNEL_METRICS}" if KERNEL_ROWS else ""


onstart:
    try:
        missing_datasets()
    except RethinkError as err:
        raise WorkflowError(str(err)) from None
