"""What a config makes the workflow run, decided once per parse: the cells of every experiment,
the training jobs (their cells, shards, resources and launcher), the data units and ImageNet
shard ranges, the kernel rows, the reports and the code hash of every stage. The workflow's
rules only ask the plan (workflow/rules/common.smk); everything here is checked before any job
runs, and nothing imports torch or reads data (the Snakefile is parsed again in every cluster job).

A cell is (dataset, architecture, regularizer, noise, seed). Its hyper-parameters resolve in
this order, later entries winning:

    training  <  architectures.<arch>.hparams  <  regularizers.<reg>
              <  experiments.<exp>.overrides  <  experiments.<exp>.grid[i].overrides

Every experiment lists sub-grids (architectures x regularizers x noises x seeds; a sub-grid's
`seeds` default to the experiment's); the union over all enabled experiments, deduplicated by
cell id, is what trains. Two experiments that resolve the same cell id to different
hyper-parameters are a config error: a cell has one meaning.

    python -m rethink.plan [--configfile config/paper.yaml] [--json]   # cells, jobs, resources
"""

import argparse
import ast
import dataclasses
import functools
import json
import math
import pathlib
import sys

from rethink import codehash, fileio, paths, tracking
from rethink import config as rconfig
from rethink.analysis import FIGURES, TABLES
from rethink.data import randomize, sources
from rethink.data.randomize import Noise, label_corruption
from rethink.errors import ConfigError, RethinkError, cli_main

# The rules' names: `all`, one rule per stage, and prefixes of the rules made one per pack,
# shard range or stage step (a workflow test checks every rule against these). An experiment is
# a target rule too (`snakemake fig1c`), so it may not take one of these names.
WORKFLOW_RULES = ("all", "train", "figure", "table")
RULE_PREFIXES = ("data_", "train_", "analysis_", "kernel_")
# The module each stage's rules run (`python -m <module>`): its code hash covers what that imports.
ENTRIES = {
    "data": "rethink.data.prepare",
    "train": "rethink.train",
    "aggregate": "rethink.analysis.aggregate",
    "figure": "rethink.analysis.figures",
    "table": "rethink.analysis.tables",
    "claims": "rethink.analysis.claims",
    "kernel": "rethink.kernel",
}
# Reports that need no experiment: Figure 3 draws the model; Table 3 comes from the kernel rows.
MODEL_FIGURE, KERNEL_TABLE = "fig3", "table3"


@dataclasses.dataclass(frozen=True)
class Cell:
    dataset: str
    arch: str
    regularizer: str
    noise: Noise
    seed: int

    @property
    def id(self):
        """Human-readable and path-safe: <dataset>/<arch>/<regularizer>/<noise>/s<seed>."""
        return paths.CELL_ID.format(**self.wildcards)

    @property
    def wildcards(self):
        return dict(
            dataset=self.dataset, arch=self.arch, regularizer=self.regularizer, noise=self.noise.name, seed=self.seed
        )


@dataclasses.dataclass(frozen=True)
class Pack:
    """Cells trained together by one job (compute.pack at a time); a pack of one is one cell."""

    rule: str  # the rule that trains it: train, or train_<dataset>_<arch>_p<NNN> when packed
    ids: tuple  # its cells' ids


@dataclasses.dataclass(frozen=True)
class ShardRange:
    """Consecutive clean shards of a streamed dataset written by one job (stream.shards_per_job)."""

    rule: str  # data_<dataset>_<split>_r<NNN>
    dataset: str
    split: str
    first: int
    last: int


# The default config: the first layer of every run's config (layered)
CHECKOUT = pathlib.Path(__file__).resolve().parents[2]  # the workflow's: config/, workflow/, src/
DEFAULT_CONFIG = CHECKOUT / "config" / "config.yaml"


def layered(configfiles, overrides=None):
    """A run's config from its layers: the default config and each --configfile in order, then
    --config's values. A file that lists experiments is a whole config and starts afresh (the
    default does; so do config/paper*.yaml); any other file is an override, merged onto the
    layers before it: mappings key by key, while a list or a value replaces the one before.
    -> (the files the config is made of, from the last whole one on; the merged config)."""
    texts = [rconfig.read_yaml(path) or {} for path in configfiles]
    start = max((i for i, text in enumerate(texts) if "experiments" in text), default=0)
    config = {}
    for text in [*texts[start:], dict(overrides or {})]:
        _merge(config, text)
    return list(configfiles[start:]), config


def _merge(into, new):
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def load(configfiles, schema=rconfig.SCHEMA):
    """The plan of config files (one path or several) layered onto the default config, as the
    workflow layers them (for CLIs and tests; the workflow builds its own from Snakemake's settings)."""
    given = [configfiles] if isinstance(configfiles, (str, pathlib.Path)) else list(configfiles)
    files, config = layered([DEFAULT_CONFIG, *given])
    return Plan(rconfig.validate(config, pathlib.Path(schema)), files)


class Plan:
    """Built from a config that passed the schema (rethink.config.validate); completes and checks it."""

    def __init__(self, config, configfiles=()):
        self.config, self.configfiles = config, [str(f) for f in configfiles]
        self.datasets, self.shards = config["datasets"], config["shards"]
        self.test_labels = config["randomization"]["test_labels"]
        _complete(config)
        self.models = {name: _check_model(name, arch["model"]) for name, arch in config["architectures"].items()}
        _skip_missing_streamed(config)
        _check_experiments(config)
        self.cells, self.experiments, self.experiment_grids = expand(config)
        _check_gpus(config, self.cells)
        _check_compile(config)
        tracking.check(config["tracking"]["backend"])
        _check_kernel(config)
        self.code = {stage: codehash.digest(module) for stage, module in ENTRIES.items()}
        # a user's model joins its cells' training code: editing it reruns exactly those cells
        self.arch_code = {
            name: codehash.digest(ENTRIES["train"], module) if module else self.code["train"]
            for name, module in self.models.items()
        }
        self.packs = _packs(config, self.cells)
        self.packed = config["compute"]["pack"] > 1
        _check_time_limits(self)
        self._pack_of = {cell_id: pack for pack in self.packs for cell_id in pack.ids}
        self.data_units = sorted(
            {(cell.dataset, cell.noise, cell.seed) for cell, _ in self.cells.values()},
            key=lambda u: (u[0], u[1].name, u[2]),
        )
        self.streamed = sorted(name for name, spec in self.datasets.items() if sources.streamed(spec))
        self.shard_ranges = self._shard_ranges()
        kernel = config["kernel"]
        self.kernel_rows = {name: row for name, row in kernel["rows"].items() if row["enabled"]}
        self.theorem1 = config["theorem1"]
        self.figures = [f for f in FIGURES if f in self.experiments or f == MODEL_FIGURE]
        self.tables = [t for t in TABLES if (bool(self.kernel_rows) if t == KERNEL_TABLE else t in self.experiments)]

    # ------------------------------------------------------------------------- cells and training

    def cell(self, cell_id):
        """(Cell, its JSON) of a cell id; an id this config does not have is an error naming it."""
        try:
            return self.cells[cell_id]
        except KeyError:
            raise RethinkError(f"{cell_id} is not a cell of this config (python -m rethink.plan lists them)") from None

    def pack_of(self, cell_id):
        """The training job of a cell (its pack; the cell alone when compute.pack is 1)."""
        self.cell(cell_id)
        return self._pack_of[cell_id]

    def cell_summaries(self, ids=None):
        """The cells' summary.json files (each written last by its training job)."""
        return [paths.cell_summary(self.cells[i][0]) for i in (self.cells if ids is None else ids)]

    def members(self, pack):
        return [self.cells[cell_id] for cell_id in pack.ids]

    @functools.cache  # noqa: B019  (one plan per parse; a job's functions ask several times)
    def cell_shards(self, cell, split):
        spec = self.datasets[cell.dataset]
        return paths.split_shards(spec, self.shards, cell.noise, cell.seed, split, self.test_labels)

    @functools.cache  # noqa: B019
    def clean_shards(self, dataset, split):
        return paths.clean_shards(self.datasets[dataset], self.shards, split)

    def train_inputs(self, pack, split):
        """Every shard the pack's cells read for `split`, and the clean shards a randomized shard
        links to (its true labels, and images for label noise): a deleted clean shard is rebuilt."""
        shards = set()
        for cell, _ in self.members(pack):
            shards.update(self.cell_shards(cell, split), self.clean_shards(cell.dataset, split))
        return sorted(shards)

    def train_outputs(self, pack):
        return [f for cell, _ in self.members(pack) for f in paths.cell_files(cell)]

    def train_code(self, pack):
        """The training code's hash for the pack's architecture (with its model, a user's)."""
        return self.arch_code[self.members(pack)[0][0].arch]

    def pack_json(self, pack):
        """What the trainer reads: each cell's JSON, its shards, output directory and checkpoint
        (keyed by the cell's JSON and the training code, so an edited cell starts afresh)."""
        members = [
            {
                "cell": spec,
                "train": self.cell_shards(cell, "train"),
                "test": self.cell_shards(cell, "test"),
                "out_dir": paths.cell_dir(cell),
                "checkpoint": paths.checkpoint(cell, fileio.canonical_json(spec), self.train_code(pack)),
            }
            for cell, spec in self.members(pack)
        ]
        return fileio.canonical_json(members)

    def _arch(self, pack):
        """The architecture's config entry: one per pack (packs never mix architectures)."""
        return self.config["architectures"][self.members(pack)[0][0].arch]

    def ranks(self, pack):
        """Processes that train the pack's cell together (the architecture's `gpus`; 1 = one process)."""
        return self._arch(pack)["gpus"]

    def launcher(self, pack):
        """How the job starts the trainer: one process, or torchrun with one process per GPU."""
        ranks = self.ranks(pack)
        return "exec python" if ranks == 1 else f"exec torchrun --standalone --nnodes=1 --nproc_per_node={ranks}"

    def threads(self):
        """Threads per process (Snakemake exports OMP_NUM_THREADS and the BLAS equivalents)."""
        return self.config["compute"]["threads"]

    def cpus(self, pack):
        return self.threads() * self.ranks(pack)

    def gpus(self, pack):
        """GPUs the job asks for: one per process of a multi-GPU cell (none when its device is cpu,
        where the processes are CPU ranks); else compute.gpus, or 1 for a cuda cell."""
        ranks, device = self.ranks(pack), self.members(pack)[0][1]["hparams"]["device"]
        if ranks > 1:
            return 0 if device == "cpu" else ranks
        requested = self.config["compute"]["gpus"]
        if requested is not None:
            return requested
        return 1 if device == "cuda" else 0

    def mem_mb(self, pack):
        return self._arch(pack)["mem_mb"]

    def compile_mode(self):
        return self.config["compute"]["compile"]

    # ------------------------------------------------------------------------- what each job asks Slurm for
    # One function per kind of job (training, kernel rows, CPU jobs), each giving the job's Snakemake
    # resources. The Slurm executor plugin makes them sbatch options: runtime -t, mem_mb --mem,
    # cpus_per_task -c (0: none), cpus_per_gpu --cpus-per-gpu, gpu --gpus=N (with gpu_model
    # --gpus=<model>:N), gres --gres, slurm_partition -p, slurm_account -A, qos --qos,
    # constraint -C, slurm_extra as it is. 0 and "" ask for nothing: a job of no GPUs asks gpu 0,
    # gpu_model "" and gres "", so the plugin adds no GPU option whatever a profile's
    # default-resources say; every job of a kind has the same keys.

    def train_estimate(self, pack):
        """Minutes the pack's training takes: the architecture's estimate per cell, times its cells."""
        return self._arch(pack)["runtime_minutes"] * len(pack.ids)

    def runtime(self, pack, attempt=1):
        """The time limit (minutes) of a training job: the estimate, times the attempt (a job that ran
        out of time gets more), never above compute.max_runtime_minutes."""
        return _capped(self.train_estimate(pack) * attempt, self.config["compute"])

    def chain(self, pack):
        """Jobs the pack's training takes: 1, or, when its estimate runs past the cap, one per stretch
        a capped job surely trains before its signal (_trained_per_job)."""
        compute = self.config["compute"]
        return (
            1
            if compute["max_runtime_minutes"] is None
            else math.ceil(self.train_estimate(pack) / _trained_per_job(compute))
        )

    def chain_retries(self):
        """{training rule: attempts its jobs need beyond the first for their chains}, to add to the
        retries Snakemake allows every job (its --retries, for failures)."""
        extra = {}
        for pack in self.packs:
            extra[pack.rule] = max(extra.get(pack.rule, 0), self.chain(pack) - 1)
        return extra

    def train_resources(self, pack, attempt=1):
        signal = round(self.config["compute"]["signal_minutes"] * 60)
        warn = f"--signal=TERM@{signal}" if signal else ""  # to every job step: the trainer saves and exits
        return {
            "runtime": self.runtime(pack, attempt), "mem_mb": self.mem_mb(pack),
            **self._site("train", self.gpus(pack), self.cpus(pack), warn),
        }  # fmt: skip

    def kernel_resources(self, row, attempt=1):
        spec = self.kernel_rows[row]
        compute = self.config["compute"]
        return {
            "runtime": _capped(spec["runtime_minutes"] * attempt, compute), "mem_mb": spec["mem_mb"],
            **self._site("kernel", 1 if spec["device"] == "cuda" else 0, spec["threads"]),
        }  # fmt: skip

    def cpu_resources(self):
        """Data jobs, Theorem 1, and the analysis jobs when they are not local rules: no GPU, ever."""
        spec = self.config["slurm"]["cpu"]
        return {
            "runtime": _capped(spec["runtime_minutes"], self.config["compute"]), "mem_mb": spec["mem_mb"],
            **_site_keys(spec, spec["extra"]), "gpu": 0, "gpu_model": "", "gres": "",
        }  # fmt: skip

    def local_analysis(self):
        """Whether the aggregation, figures, tables, claims and kernel aggregation are local rules."""
        return self.config["slurm"]["local_analysis"]

    def _site(self, kind, gpus, cpus, extra=""):
        """What a GPU kind of job (train, kernel) asks: the site's keys, its GPUs the way
        slurm.<kind>.gpu_request says, and its CPUs (per task, or per GPU)."""
        spec = self.config["slurm"][kind]
        model, request = spec["gpu_model"], {"gpu": 0, "gpu_model": "", "gres": "", "cpus_per_gpu": 0}
        if gpus and spec["gpu_request"] == "gres":
            request["gres"] = ":".join(["gpu", *filter(None, [model]), str(gpus)])
        elif gpus:
            request.update(gpu=gpus, gpu_model=model or "")
        if gpus and spec["cpus_per_gpu"] is not None:
            request.update(cpus_per_gpu=spec["cpus_per_gpu"], cpus_per_task=0)  # 0: no --cpus-per-task
        else:
            request["cpus_per_task"] = cpus
        return {**_site_keys(spec, " ".join(filter(None, [spec["extra"], extra]))), **request}

    def environment(self):
        """What the workflow exports to its jobs: the tracking settings (rethink.tracking.ENV). The
        environment is no rerun trigger: switching tracking reruns nothing."""
        return tracking.environment(self.config["tracking"], self.experiment_grids)

    # ------------------------------------------------------------------------- data

    def data_targets(self):
        """Every shard the cells read, clean and randomized."""
        targets = set()
        for dataset, noise, seed in self.data_units:
            spec = self.datasets[dataset]
            for split in sources.SPLITS:
                targets.update(paths.split_shards(spec, self.shards, noise, seed, split, self.test_labels))
        return sorted(targets)

    def stored_spec(self, dataset):
        """The dataset config as the data files record it: without stream.shards_per_job, which
        only groups shard writing into jobs (changing it rebuilds no file)."""
        spec = dict(self.datasets[dataset])
        if "stream" in spec:
            spec["stream"] = {k: v for k, v in spec["stream"].items() if k != "shards_per_job"}
        return spec

    def shard_spec(self, dataset):
        return fileio.canonical_json({"dataset": self.stored_spec(dataset), "shards": self.shards})

    def randomize_spec(self, dataset, noise):
        """Only the options that shape this noise: editing another one rebuilds none of its shards."""
        options = randomize.noise_options(randomize.parse_noise(noise), self.config["randomization"])
        return fileio.canonical_json(
            {"dataset": self.stored_spec(dataset), "shards": self.shards, "randomization": options}
        )

    def index_input(self, dataset, split):
        """A streamed dataset's clean shards read its split's index; the others read raw files."""
        spec = self.datasets[dataset]
        return [paths.split_index(spec, split)] if sources.streamed(spec) else []

    def stats_input(self, dataset, noise):
        return [paths.channel_stats(self.datasets[dataset])] if noise == "gaussian" else []

    def not_streamed(self, name_pattern):
        """A wildcard pattern: a dataset name that is not a streamed one (their clean shards are
        written by range rules)."""
        if not self.streamed:
            return name_pattern
        return f"(?!(?:{'|'.join(self.streamed)})(?![a-z0-9_])){name_pattern}"

    def _shard_ranges(self):
        ranges = []
        for name in self.streamed:
            spec = self.datasets[name]
            per_job = spec["stream"]["shards_per_job"]
            for split in sources.SPLITS:
                count = paths.n_shards(spec, self.shards, split)
                for r, first in enumerate(range(0, count, per_job)):
                    last = min(count, first + per_job) - 1
                    ranges.append(ShardRange(f"data_{name}_{split}_r{r:03d}", name, split, first, last))
        return ranges

    def range_outputs(self, span):
        return [
            paths.CLEAN_SHARD.format(dataset=span.dataset, split=span.split, shard=paths.shard_id(i))
            for i in range(span.first, span.last + 1)
        ]

    @functools.cache  # noqa: B019
    def downloads(self):
        """Datasets the workflow fetches first (download: true), by a local rule: no job downloads."""
        used = {name for name, _, _ in self.data_units} | self.kernel_datasets()
        wanted = [name for name in used if self.datasets[name]["download"]]
        return sorted(name for name in wanted if self.datasets[name]["source"] in sources.TORCHVISION_CLASS)

    def download_input(self, dataset):
        """The download's record, for the jobs that read a dataset's raw files (its clean shards)."""
        return [paths.DOWNLOADED.format(dataset=dataset)] if dataset in self.downloads() else []

    def check_datasets(self):
        """Datasets whose clean shards are not built yet and whose raw files cannot be found stop
        the run before any job, saying where they were looked for."""
        for name in sorted({name for name, _, _ in self.data_units} | self.kernel_datasets()):
            spec = self.datasets[name]
            if not all(pathlib.Path(p).exists() for s in sources.SPLITS for p in self.clean_shards(name, s)):
                sources.check_available(spec)

    # ------------------------------------------------------------------------- kernel (Table 3, Theorem 1)

    def theorem1_dataset(self):
        t = self.theorem1
        return t["dataset"] if t["enabled"] and t["dataset_sizes"] else None

    def kernel_datasets(self):
        names = {row["dataset"] for row in self.kernel_rows.values()}
        return names | ({self.theorem1_dataset()} if self.theorem1_dataset() else set())

    def kernel_outputs(self):
        """Theorem 1's results when it is enabled (Table 3 is a report, below)."""
        return [paths.THEOREM1.format(ext="csv")] if self.theorem1["enabled"] else []

    def row_shards(self, row, split):
        return self.clean_shards(self.kernel_rows[row]["dataset"], split)

    def row_json(self, row):
        """What the solver reads: the row, its name, and the settings of its featuriser."""
        kernel = self.config["kernel"]
        spec = dict(self.kernel_rows[row], name=row, batch=kernel["batch"], median_samples=kernel["median_samples"])
        if spec["features"] != "raw":
            spec[spec["features"]] = kernel[spec["features"]]
        return fileio.canonical_json(spec)

    def theorem1_shards(self):
        dataset = self.theorem1_dataset()
        return self.clean_shards(dataset, "train") if dataset else []

    # ------------------------------------------------------------------------- reports

    def report_inputs(self, name):
        """What a figure or table reads: the metrics and the experiment membership (Figure 3
        nothing; Table 3 the kernel rows' metrics)."""
        if name == MODEL_FIGURE:
            return {}
        if name == KERNEL_TABLE:
            return {"kernel": paths.KERNEL_METRICS, "experiments": paths.EXPERIMENTS_JSON}
        return {
            "summary": paths.METRICS["summary_parquet"],
            "curves": paths.METRICS["curves_parquet"],
            "experiments": paths.EXPERIMENTS_JSON,
        }

    def report_outputs(self):
        """Every figure, table, Theorem 1 result and the claims check the config asks for."""
        files = [paths.FIGURE.format(name=f, ext="png") for f in self.figures]
        files += [paths.TABLE.format(name=t, ext="csv") for t in self.tables]
        return files + self.kernel_outputs() + [paths.CLAIMS.format(ext="md")]

    def membership_json(self):
        """experiments.json: each experiment's cells, and the config files they came from (layered)."""
        configs = ", ".join(_relative_to_checkout(p) for p in self.configfiles)
        return fileio.canonical_json({"config": configs, "experiments": self.experiments})

    # ------------------------------------------------------------------------- the CLI's view

    def describe(self):
        """The plan as data: cells, experiments, and every job with what it asks for."""
        training = [
            {
                "rule": pack.rule, "cells": list(pack.ids), "runtime_minutes": self.runtime(pack),
                "jobs": self.chain(pack), "mem_mb": self.mem_mb(pack), "threads": self.threads(),
                "cpus": self.cpus(pack), "gpus": self.gpus(pack),
                "launcher": self.launcher(pack).removeprefix("exec "), "code": self.train_code(pack),
                "resources": self.train_resources(pack),
            }
            for pack in self.packs
        ]  # fmt: skip
        return {
            "configfiles": self.configfiles,
            "cells": {cell_id: spec for cell_id, (_, spec) in self.cells.items()},
            "experiments": self.experiments,
            "disabled": [name for name, exp in self.config["experiments"].items() if not exp["enabled"]],
            "jobs": {
                "train": training,
                "data": {
                    "units": [[d, n.name, s] for d, n, s in self.data_units],
                    "shards": len(self.data_targets()),
                    "ranges": [dataclasses.asdict(r) for r in self.shard_ranges],
                },
                "kernel": {
                    "rows": {row: self.kernel_resources(row) for row in sorted(self.kernel_rows)},
                    "theorem1": self.theorem1["enabled"],
                },
                "reports": {"figures": self.figures, "tables": self.tables},
                "downloads": self.downloads(),
                "cpu": self.cpu_resources(),
                "local_analysis": self.local_analysis(),
            },
            "code": self.code,
        }


# ----------------------------------------------------------------------------- Slurm requests

# slurm.<kind> keys -> the Snakemake resources the Slurm plugin reads
SITE_RESOURCES = {"partition": "slurm_partition", "account": "slurm_account", "qos": "qos", "constraint": "constraint"}
# what the CLI's table shows of a job's resources besides its time, memory, CPUs and GPU count
_SITE_SHOWN = (*SITE_RESOURCES.values(), "gpu_model", "gres", "cpus_per_gpu", "slurm_extra")


def _site_keys(spec, extra):
    """A kind's partition, account, QoS and constraint where set, and its extra sbatch options."""
    keys = {SITE_RESOURCES[key]: spec[key] for key in SITE_RESOURCES if spec[key] is not None}
    return {**keys, "slurm_extra": extra} if extra else keys


def _capped(minutes, compute):
    """Whole minutes, at most compute.max_runtime_minutes."""
    cap = compute["max_runtime_minutes"]
    return math.ceil(minutes) if cap is None else min(math.ceil(minutes), cap)


# slurmctld sends a job's --signal at its time-limit check, every 30 s on Slurm 22.05 (the chains of
# tests/test_slurm.py), so up to half a minute before the time asked for; sbatch(1) allows up to 60 s
# (README "Running on a cluster": raise compute.signal_minutes where a site's come earlier).
SIGNAL_EARLY_MINUTES = 0.5


def _trained_per_job(compute):
    """Minutes a job capped at compute.max_runtime_minutes trains at least before Slurm signals it."""
    return compute["max_runtime_minutes"] - compute["signal_minutes"] - SIGNAL_EARLY_MINUTES


def signal_lead(compute):
    """Minutes before its time limit that a training job may be signalled (and stop training)."""
    return compute["signal_minutes"] + SIGNAL_EARLY_MINUTES if compute["signal_minutes"] else 0


def _check_time_limits(plan):
    """Every training job has time to train before Slurm signals it."""
    compute = plan.config["compute"]
    before = signal_lead(compute)
    why = (
        f"Slurm signals it compute.signal_minutes ({compute['signal_minutes']}) before its limit, and up to "
        f"{SIGNAL_EARLY_MINUTES} minutes earlier; raise it or lower signal_minutes"
    )
    if compute["max_runtime_minutes"] is not None and compute["max_runtime_minutes"] <= before:
        raise ConfigError(
            f"config key compute.max_runtime_minutes: {compute['max_runtime_minutes']} leaves a training job "
            f"no time to train: {why}"
        )
    for pack in plan.packs:
        if plan.runtime(pack) <= before:
            arch = plan.members(pack)[0][0].arch
            raise ConfigError(
                f"config key architectures.{arch}.runtime_minutes: {plan.runtime(pack)} minutes (a job's time "
                f"limit) leave the job no time to train: {why}"
            )


# ----------------------------------------------------------------------------- checks and expansion


def _complete(config):
    """What the schema cannot fill in: dataset names, default models; keep specs minimal."""
    for name, spec in config["datasets"].items():
        spec["name"] = name
        if spec["source"] != "synthetic":
            spec.pop("synthetic", None)  # only the synthetic source reads it
        if not sources.streamed(spec):
            spec.pop("stream", None)  # only streamed sources read it
    for name, arch in config["architectures"].items():
        arch.setdefault("model", name)


def _check_model(name, model):
    """None for a registry model; the module of a user's "package.module:function", found and
    checked without importing it (no torch at parse time)."""
    key = f"config key architectures.{name}"
    if model in rconfig.MODELS:
        return None
    if ":" not in model:  # the default, the architecture's name (an explicit one passed the schema)
        raise ConfigError(
            f"{key}: {name!r} is not a model name, so set architectures.{name}.model to one of "
            f"{', '.join(rconfig.MODELS)} or to a model of yours, package.module:function"
        )
    module, function = model.split(":")
    found = codehash.locate(module)
    if found is None or found[1] is None:
        raise ConfigError(
            f"{key}.model: {model!r}: there is no module {module} in the working directory or on the "
            "Python path; put it there (or set PYTHONPATH) or fix the name"
        )
    try:
        tree = ast.parse(found[1].read_bytes(), filename=str(found[1]))
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(f"{key}.model: {model!r}: {found[1]} cannot be read as Python ({err})") from None
    if function not in _top_level_names(tree):
        raise ConfigError(f"{key}.model: {model!r}: {found[1]} defines no {function}")
    return module


def _top_level_names(tree):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from ((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            yield from (t.id for t in targets if isinstance(t, ast.Name))


def _skip_missing_streamed(config):
    """ImageNet cannot be downloaded: experiments on a streamed dataset whose root is not there are
    switched off with one message (the paper config enables Fig. 2a and Table 2 for users who
    have ImageNet, and still runs everything else for those who do not)."""
    for name, spec in config["datasets"].items():
        users = [e for e, exp in config["experiments"].items() if exp["dataset"] == name and exp["enabled"]]
        if not users or not sources.streamed(spec):
            continue
        try:
            sources.check_available(spec)
        except RethinkError:
            for exp_name in users:
                config["experiments"][exp_name]["enabled"] = False
            print(
                f"rethink: skipping experiments {', '.join(users)}: no {spec['source']} at "
                f"{sources.root_of(spec)} (train/ and val/); set datasets.{name}.root to run them",
                file=sys.stderr,
            )


def _check_experiments(config):
    experiments, datasets = config["experiments"], config["datasets"]
    if not any(exp["enabled"] for exp in experiments.values()):
        raise ConfigError(
            f"config key experiments: every experiment is disabled ({', '.join(experiments)}), so there is "
            "nothing to train or report; set enabled: true on at least one"
        )
    for exp_name, exp in experiments.items():
        if exp_name in WORKFLOW_RULES or exp_name.startswith(RULE_PREFIXES):
            raise ConfigError(
                f"config key experiments.{exp_name}: {exp_name!r} is the name of a workflow rule (an "
                f"experiment becomes a target rule); rule names are {', '.join(WORKFLOW_RULES)} and "
                f"{', '.join(p + '*' for p in RULE_PREFIXES)}, so rename the experiment"
            )
        if exp["dataset"] not in datasets:
            raise ConfigError(
                f"config key experiments.{exp_name}.dataset: {exp['dataset']!r} is not a "
                f"configured dataset (configured: {', '.join(sorted(datasets))})"
            )


def _check_gpus(config, cells):
    """A cell on several GPUs is a job of its own, and its global batch splits evenly over them."""
    pack = config["compute"]["pack"]
    for cell, spec in cells.values():
        gpus = config["architectures"][cell.arch]["gpus"]
        if gpus > 1 and pack > 1:
            raise ConfigError(
                f"config key architectures.{cell.arch}.gpus: {gpus} processes train each of its cells, so a "
                f"job holds one cell, but compute.pack is {pack}; set compute.pack: 1 or gpus: 1"
            )
        batch = spec["hparams"]["batch_size"]
        if batch % gpus:
            raise ConfigError(
                f"config key architectures.{cell.arch}.gpus: {gpus} does not divide cell {cell.id}'s "
                f"batch_size {batch} (the global batch, split evenly over the GPUs); make batch_size a "
                f"multiple of {gpus} or change gpus"
            )


def _check_compile(config):
    """A compiled step serves one cell: pack-mates would share it, torch's guards on each optimizer
    pass their recompile limit at about 5 cells, and CUDA graphs would re-record at every switch."""
    mode, pack = config["compute"]["compile"], config["compute"]["pack"]
    if mode != "off" and pack > 1:
        raise ConfigError(
            f"config key compute.compile: {mode!r} trains a pack of one cell, but compute.pack is {pack}; "
            "set compute.pack: 1 or compute.compile: off"
        )


def _check_kernel(config):
    """Kernel rows and Theorem 1 name configured datasets."""
    datasets = config["datasets"]
    wanted = [(f"kernel.rows.{name}.dataset", row["dataset"]) for name, row in config["kernel"]["rows"].items()]
    theorem = config["theorem1"]
    if theorem["dataset_sizes"] and theorem["dataset"] is None:
        raise ConfigError(
            f"config key theorem1.dataset_sizes: {theorem['dataset_sizes']} needs theorem1.dataset (a key of datasets)"
        )
    if theorem["dataset"] is not None:
        wanted.append(("theorem1.dataset", theorem["dataset"]))
    for key, name in wanted:
        if name not in datasets:
            raise ConfigError(
                f"config key {key}: {name!r} is not a configured dataset (configured: {', '.join(sorted(datasets))})"
            )


def entry_noises(entry, where="grid entry"):
    """A grid entry's noises, canonical, deduplicated, in config order (default: true labels)."""
    noises = []
    for j, name in enumerate(entry["noises"]):
        if name not in randomize.NAMED:
            raise ConfigError(
                f"config key {where}.noises[{j}]: {name!r} is not a noise; allowed: {', '.join(randomize.NAMED)} "
                "(label corruption levels go in corruption_levels)"
            )
        noises.append(randomize.parse_noise(name))
    for j, level in enumerate(entry["corruption_levels"]):
        try:
            noises.append(label_corruption(level))
        except RethinkError as err:
            raise ConfigError(f"config key {where}.corruption_levels[{j}]: {err}") from None
    return list(dict.fromkeys(noises)) or [randomize.parse_noise("true_labels")]


def _known(config, section, name, where):
    if name not in config[section]:
        raise ConfigError(
            f"config key {where}: {name!r} is not a configured {section[:-1]} "
            f"(configured: {', '.join(sorted(config[section]))})"
        )


def _check_fits(config, exp, hparams, where):
    """What the trainer checks against the data, checked here already: the crop fits the images."""
    _, height, width = sources.shape(config["datasets"][exp["dataset"]])
    if hparams["crop_size"] > min(height, width):
        raise ConfigError(
            f"config key {where}: hparams.crop_size {hparams['crop_size']} is larger than the {height}x{width} "
            f"images of dataset {exp['dataset']!r}; set crop_size to at most {min(height, width)}"
        )


def _check_streamable(config, exp, noise, where):
    """A streamed dataset's shards hold JPEG bytes: label noises only (the paper's ImageNet runs)."""
    if noise.changes_images and sources.streamed(config["datasets"][exp["dataset"]]):
        raise ConfigError(
            f"config key {where}: noise {noise.name} rewrites pixels, but dataset {exp['dataset']!r} is "
            "streamed as JPEG bytes; use true_labels, random_labels or corruption_levels"
        )


def cell_spec(config, cell, hparams):
    """The cell JSON the trainer reads (its canonical form decides reruns). `test_labels` says
    what its test labels are: corrupted only for a label noise under randomization.test_labels:
    corrupted, so switching that option reruns exactly the label-noise cells."""
    arch = config["architectures"][cell.arch]
    test_labels = config["randomization"]["test_labels"] if cell.noise.changes_labels else "clean"
    result = {
        "cell": cell.id, "dataset": cell.dataset, "arch": arch["model"],
        "arch_name": cell.arch, "width": arch["width"], "regularizer": cell.regularizer,
        "noise": cell.noise.name, "level": cell.noise.level, "seed": cell.seed,
        "test_labels": test_labels, "hparams": hparams,
    }  # fmt: skip
    dataset = config["datasets"][cell.dataset]
    if sources.streamed(dataset):  # how the trainer mixes shards shapes its sample order
        result["stream"] = {"window_shards": dataset["stream"]["window_shards"]}
    return result


def expand(config):
    """-> (cells: {id: (Cell, spec)} sorted by id, experiments: {name: [cell ids]}, and each
    experiment's sub-grids as the cell fields they take: {name: [{field: [values]}]})."""
    cells, owners, experiments, grids = {}, {}, {}, {}
    for exp_name, exp in config["experiments"].items():
        if not exp["enabled"]:
            continue
        ids = []
        for i, entry in enumerate(exp["grid"]):
            where = f"experiments.{exp_name}.grid[{i}]"
            for j, arch in enumerate(entry["architectures"]):
                _known(config, "architectures", arch, f"{where}.architectures[{j}]")
            for j, reg in enumerate(entry["regularizers"]):
                _known(config, "regularizers", reg, f"{where}.regularizers[{j}]")
            noises = entry_noises(entry, where)
            for noise in noises:
                _check_streamable(config, exp, noise, where)
            seeds = entry.get("seeds") or exp["seeds"]
            grids.setdefault(exp_name, []).append(
                {
                    "dataset": [exp["dataset"]], "arch_name": entry["architectures"],
                    "regularizer": entry["regularizers"], "noise": [n.name for n in noises], "seed": seeds,
                }
            )  # fmt: skip
            for arch in entry["architectures"]:
                for reg in entry["regularizers"]:
                    hparams = {
                        **config["training"], **config["architectures"][arch]["hparams"],
                        **config["regularizers"][reg], **exp["overrides"], **entry["overrides"],
                    }  # fmt: skip
                    _check_fits(config, exp, hparams, f"{where} ({arch}, {reg})")
                    for noise in noises:
                        for seed in seeds:
                            cell = Cell(exp["dataset"], arch, reg, noise, seed)
                            _add(cells, owners, cell, cell_spec(config, cell, hparams), where)
                            ids.append(cell.id)
        experiments[exp_name] = list(dict.fromkeys(ids))
    return dict(sorted(cells.items())), experiments, grids


def _add(cells, owners, cell, spec, where):
    if cell.id in cells and cells[cell.id][1] != spec:
        old = cells[cell.id][1]["hparams"]
        diff = sorted(k for k in old if old[k] != spec["hparams"].get(k))
        raise ConfigError(
            f"config key {where}: cell {cell.id} is also made by {owners[cell.id]} with other "
            f"hyper-parameters ({', '.join(diff)} differ); give one of them its own regularizer name"
        )
    cells.setdefault(cell.id, (cell, spec))
    owners.setdefault(cell.id, where)


def _packs(config, cells):
    """Cells -> packs of up to compute.pack cells of one dataset, architecture and device, in
    cell-id order (so pack-mates are neighbours: same regularizer, other noises and seeds). With
    compute.pack 1 every cell is a job of the one `train` rule."""
    size = config["compute"]["pack"]
    if size == 1:
        return [Pack("train", (cell_id,)) for cell_id in cells]
    groups, counts, result = {}, {}, []
    for cell_id, (cell, spec) in cells.items():
        groups.setdefault((cell.dataset, cell.arch, spec["hparams"]["device"]), []).append(cell_id)
    for (dataset, arch, _), ids in groups.items():
        for start in range(0, len(ids), size):
            n = counts[dataset, arch] = counts.get((dataset, arch), -1) + 1
            result.append(Pack(f"train_{dataset}_{arch}_p{n:03d}", tuple(ids[start : start + size])))
    return result


def _relative_to_checkout(path):
    """A path as recorded in provenance: relative when inside the checkout (whichever directory the
    results are in: snakemake --directory), so a moved or freshly cloned checkout with its results
    is still up to date."""
    path = pathlib.Path(path).resolve()
    return str(path.relative_to(CHECKOUT)) if path.is_relative_to(CHECKOUT) else str(path)


# ----------------------------------------------------------------------------- CLI


def _table(plan):
    described = plan.describe()
    cells, experiments = plan.cells, plan.experiments
    lines = [
        f"{', '.join(map(_relative_to_checkout, plan.configfiles))}: "
        f"{len(cells)} cells, {len(plan.packs)} training jobs, "
        f"{described['jobs']['data']['shards']} shards ({len(plan.data_units)} data units), "
        f"{len(plan.kernel_rows)} kernel rows, {len(plan.figures)} figures, {len(plan.tables)} tables",
        "",
        "| experiment | cells | architectures | regularizers | noises | seeds |",
        "|---|---:|---|---|---|---|",
    ]
    for name, ids in experiments.items():
        members = [cells[i][0] for i in ids]
        archs, regs = (sorted({getattr(c, f) for c in members}) for f in ("arch", "regularizer"))
        noises = list(dict.fromkeys(c.noise.name for c in members))
        seeds = sorted({c.seed for c in members})
        lines.append(
            f"| {name} | {len(ids)} | {', '.join(archs)} | {', '.join(regs)} | {', '.join(noises)} | "
            f"{', '.join(map(str, seeds))} |"
        )
    lines += [
        "",
        "| training jobs | dataset | architecture | cells each | runtime (min) | jobs each | mem_mb | cpus | gpus "
        "| launcher |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    groups = {}
    for job in described["jobs"]["train"]:
        cell, _ = cells[job["cells"][0]]
        key = (job["rule"] if job["rule"] == "train" else "train_*", cell.dataset, cell.arch, len(job["cells"]))
        key += tuple(job[k] for k in ("runtime_minutes", "jobs", "mem_mb", "cpus", "gpus", "launcher"))
        groups[key] = groups.get(key, 0) + 1
    for (rule, *rest), count in groups.items():
        lines.append(f"| {count} x {rule} | " + " | ".join(map(str, rest)) + " |")
    site = {
        "training": described["jobs"]["train"][0]["resources"],
        "kernel rows": next(iter(described["jobs"]["kernel"]["rows"].values()), None),
        "data and Theorem 1": described["jobs"]["cpu"],
    }
    lines.append("\nSlurm, besides the above:")
    for kind, resources in site.items():
        if resources is not None:
            asked = [f"{k}={v}" for k, v in resources.items() if k in _SITE_SHOWN and v not in ("", 0)]
            lines.append(f"- {kind}: {', '.join(asked) or 'the site defaults'}")
    local = "local rules" if described["jobs"]["local_analysis"] else "CPU jobs, as data jobs"
    lines.append(f"- aggregation, figures, tables, claims: {local}")
    if described["disabled"]:
        lines.append(f"\ndisabled: {', '.join(described['disabled'])}")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rethink.plan", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        type=pathlib.Path,
        help="config files layered onto config/config.yaml, as snakemake --configfile does",
    )
    parser.add_argument("--json", action="store_true", help="the whole plan as JSON (every cell and job)")
    args = parser.parse_args(argv)
    plan = load(args.configfile)
    print(json.dumps(plan.describe(), indent=1) if args.json else _table(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
