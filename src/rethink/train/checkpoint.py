"""Checkpoints that survive preemption: atomic writes, a tie to the inputs, signal-driven saves.

A signal handler only records the signal; the loop saves at the next step boundary, where
the model, optimizer and RNG states agree with each other.

A checkpoint is either resumable (model, optimizer, generators, progress) or *finished*: the
cell's history and summary, written before its outputs and kept after them. A rerun of a job
whose outputs Snakemake threw away (a kill after training, SIGINT to snakemake, a pack rerun
because a pack-mate changed) re-emits a finished cell instead of training it again.
"""

import os
import pathlib
import signal

import torch

from rethink.errors import RethinkError
from rethink.fileio import atomic_path

FORMAT = 1


def save(path, state):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(state, format=FORMAT), f)
        f.flush()
        os.fsync(f.fileno())  # a node that dies after the rename must not leave a torn file


def load(path, inputs_sha256, device_type):
    """The checkpoint's state, or None when there is none; refuses one made for other inputs."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    hint = "delete it to start this cell from scratch, or pass another --checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise RethinkError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); {hint}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RethinkError(f"{path}: not a checkpoint of this trainer (format {FORMAT}); {hint}")
    if state.get("inputs_sha256") != inputs_sha256:
        raise RethinkError(
            f"{path}: checkpoint belongs to a different cell or different shards (inputs "
            f"{str(state.get('inputs_sha256'))[:12]}, this run {inputs_sha256[:12]}); {hint}"
        )
    if state.get("device_type") != device_type:
        raise RethinkError(
            f"{path}: checkpoint was written on {state.get('device_type')}, this run uses {device_type} "
            f"(RNG states do not transfer); rerun with --device {state.get('device_type')}, or {hint}"
        )
    return state


def is_finished(state):
    return bool(state) and state.get("finished", False)


class Signals:
    """Handled at step boundaries: SIGTERM (Slurm's preemption and time limit), SIGINT (Ctrl-C)
    and SIGHUP (a closed terminal) save, then stop; SIGUSR1 saves and goes on. A trainer whose
    parent died (snakemake killed with SIGKILL) is orphaned: `orphaned()` says so, and the loop
    treats it as a SIGTERM, so the work is saved instead of running on unwatched. Under torchrun
    (`launcher=True`) the parent is torchrun's agent, which does not watch its own parent: then
    the trainer is orphaned when either of them is gone."""

    STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    WATCHED = (*STOP, signal.SIGUSR1)

    def __init__(self, launcher=False):
        self.pending, self._previous = None, {}
        self._parent = os.getppid()
        self._grandparent = parent_of(self._parent) if launcher else None

    def orphaned(self):
        if os.getppid() != self._parent:
            return True
        if self._grandparent is None:
            return False
        now = parent_of(self._parent)
        return now is not None and now != self._grandparent

    def __enter__(self):
        for sig in self.WATCHED:
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum, frame):
        # a stopping signal wins over a pending SIGUSR1: both save, only one of them stops the run
        if self.pending not in self.STOP:
            self.pending = signal.Signals(signum)


def parent_of(pid):
    """The parent's pid of process `pid` (Linux /proc); None where that cannot be read."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid


class Interrupted(Exception):
    """Raised after the checkpoints were saved because a signal (or the parent's death) asked the run
    to stop; `paths` is empty when the signal came after the last cell had finished."""

    def __init__(self, signum, paths):
        name, paths = signal.Signals(signum).name, [str(p) for p in paths]
        if not paths:
            message = f"stopped by {name} after every cell had finished (outputs written); a rerun re-emits them"
        else:
            where = paths[0] if len(paths) == 1 else f"{len(paths)} checkpoints ({paths[0]}, ...)"
            message = f"stopped by {name}; saved to {where}; rerun to resume"
        super().__init__(message)
        self.signum = signum
