"""Live curves of every cell in TensorBoard or Weights & Biases (config key `tracking`; README
"Watching a run").

The workflow puts the config's `tracking`, with each experiment's sub-grids (to group W&B runs
by experiment), into the environment variable RETHINK_TRACKING (`Plan.environment`), which its
jobs inherit and which is no rerun trigger (a rule's params and shell command are): switching
tracking reruns nothing. The trainer reads it (`from_environment`) and its main process gives each
cell a tracker (`start`) that logs every history row (every column of history.csv but step and
elapsed_s, at the row's step) as the row is recorded. On a resume the tracker starts from the
checkpoint's history, so the curves are history.csv's: TensorBoard hides the events of the
interrupted run (purge_step 0) and gets the rows again; a W&B run continues under the run id the
checkpoint holds (offline, each attempt leaves a folder of its own, with the rows from the first
on; online, W&B has the rows so far and gets the later ones). Tracking draws no random number and
changes no row: history.csv is the same with it or without it.

Failures: a tracker that cannot start stops the job before its first step (a RethinkError naming
the key); one that fails later (a full disk, a crashed W&B service) is reported once in train.log
and dropped, and training goes on: history.csv and the checkpoints are the record, the curves
are a view of it.

Importing this module imports neither torch nor the tracking packages (the workflow checks at
parse time that a backend's package is installed, `check`).
"""

import importlib.util
import json
import os

from rethink import paths
from rethink.errors import ConfigError, RethinkError

ENV = "RETHINK_TRACKING"
EXTRA = "tracking"  # the optional dependencies in pyproject.toml that install every backend's package
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # backend -> the package it needs


def check(backend):
    """Refuse a backend whose package is not installed (found without importing it)."""
    package = PACKAGES.get(backend)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"config key tracking.backend: {backend!r} needs the package {package}, which is not installed; "
            f"install the extra with pip install -e '.[{EXTRA}]', or set tracking.backend: none"
        )


def environment(settings, experiment_grids):
    """{ENV: the trainer's tracking settings}: the config's `tracking` and, for W&B's groups, each
    experiment's sub-grids ({experiment: [{cell field: values}]}; a list of each experiment's
    cells could pass the 128 KiB an environment variable may hold)."""
    return {ENV: json.dumps(dict(settings, experiments=experiment_grids))}  # experiments in config order


def from_environment():
    """The settings `environment` exported; None when the variable is not set (no tracking)."""
    text = os.environ.get(ENV)
    if not text:
        return None
    try:
        settings = json.loads(text)
        backend = settings["backend"]
    except (json.JSONDecodeError, TypeError, KeyError):
        raise RethinkError(
            f"environment variable {ENV}: {text[:80]!r} is not the tracking settings the workflow exports "
            "(JSON with a backend); unset it, or set config key tracking and run the workflow"
        ) from None
    if backend not in ("none", *PACKAGES):
        raise RethinkError(f"environment variable {ENV}: backend {backend!r}; allowed: none, {', '.join(PACKAGES)}")
    return settings


def experiments_of(cell, grids):
    """The experiments whose sub-grids hold the cell, in config order."""
    return [
        name
        for name, entries in grids.items()
        if any(all(cell.get(field) in values for field, values in entry.items()) for entry in entries)
    ]


def start(settings, cell, run_id, history, log):
    """The tracker of a cell's run (a no-op one without settings or with backend none), started
    from the rows of `history`. `log`: train.log's writer, for a failure later on."""
    backend = settings["backend"] if settings else "none"
    if backend == "none":
        return Tracker(backend, log)
    check(backend)
    try:
        tracker = {"tensorboard": TensorBoard, "wandb": WandB}[backend](settings, cell, run_id, log)
        for row in history:
            tracker.write(row)
    except Exception as err:  # whatever the package raises: the job stops before its first step
        raise RethinkError(
            f"config key tracking.backend: {backend} cannot track cell {cell['cell']} "
            f"({type(err).__name__}: {err}); fix that, or set tracking.backend: none"
        ) from None
    return tracker


class Tracker:
    """Backend none; the base of the others: a failure of `write` or `end` is logged once, then
    the tracker is dropped."""

    def __init__(self, backend, log):
        from rethink.train.outputs import HISTORY_COLUMNS  # the trainer's module (h5py): not at parse time

        self.backend, self.train_log, self.failed = backend, log, False
        self.columns = [c for c in HISTORY_COLUMNS if c not in ("step", "elapsed_s")]

    def log(self, row):
        self._guarded(self.write, row)

    def close(self, exit_code):
        """The end of the process's run: 0 when the cell finished, 128 + the signal when a signal
        stopped it (it resumes later), 1 after an error."""
        self._guarded(self.end, exit_code)
        self.failed = True  # closed: nothing more to log

    def write(self, row):
        pass

    def end(self, exit_code):
        pass

    def _guarded(self, method, argument):
        if self.failed:
            return
        try:
            method(argument)
        except Exception as err:  # a view of the run failing must not fail the run
            self.failed = True
            self.train_log(
                f"tracking: {self.backend} failed ({type(err).__name__}: {err}); training goes on without it"
            )


class TensorBoard(Tracker):
    """Event files in results/tracking/tensorboard/<cell id>/: `tensorboard --logdir
    results/tracking/tensorboard` shows every cell by its id."""

    def __init__(self, settings, cell, run_id, log):
        super().__init__("tensorboard", log)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step 0: TensorBoard hides every event of earlier runs of this cell; the history replaces them
        self.writer = SummaryWriter(paths.tracking_dir("tensorboard", cell["cell"]), purge_step=0)

    def write(self, row):
        for column in self.columns:
            if row[column] is not None:
                self.writer.add_scalar(column, row[column], row["step"])
        self.writer.flush()  # an epoch's row at once, not after the writer's two minutes

    def end(self, exit_code):
        self.writer.close()


class WandB(Tracker):
    """A W&B run per cell: named by the cell id, its config the cell's JSON (cell.json), grouped
    by the cell's first experiment and tagged with all of them; offline by default, its folder
    in results/tracking/wandb/<cell id>/wandb/ (`wandb sync` it later). W&B's own environment
    variable WANDB_MODE, where set, wins over tracking.wandb.mode."""

    def __init__(self, settings, cell, run_id, log):
        super().__init__("wandb", log)
        import wandb

        options, experiments = settings["wandb"], experiments_of(cell, settings["experiments"])
        # absolute: W&B's service process, shared by the runs of a process, has a working folder of its own
        directory = paths.tracking_dir("wandb", cell["cell"]).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE", options["mode"])
        self.run = wandb.init(
            project=options["project"], entity=options["entity"], mode=mode, dir=directory,
            id=run_id, resume="allow", name=cell["cell"], group=experiments[0] if experiments else None,
            tags=experiments, config=cell, reinit="create_new",
            # W&B's lines would bury the one-line cause of a failed job in its log
            settings=wandb.Settings(console="off", silent=True),
        )  # fmt: skip

    def write(self, row):
        if row["step"] < self.run.step:  # a resumed online run has its steps so far (W&B would drop these)
            return
        self.run.log({column: row[column] for column in self.columns if row[column] is not None}, step=row["step"])

    def end(self, exit_code):
        self.run.finish(exit_code=exit_code)
