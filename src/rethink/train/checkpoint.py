"""Checkpoints that survive preemption: what they hold, atomic writes, a tie to the inputs,
signal-driven saves.

A signal handler only records the signal; the loop saves at the next step boundary, where
the model, optimizer and RNG states agree with each other.

A checkpoint is either resumable (`resumable`: a member's model, optimizer, generators and
progress, mid-epoch too) or *finished* (`finished`: the cell's history and summary, written
before its outputs and kept after them). A rerun of a job whose outputs Snakemake threw away (a
kill after training, SIGINT to snakemake, a pack rerun because a pack-mate changed) re-emits a
finished cell instead of training it again.
"""

import dataclasses
import os
import pathlib
import signal
import uuid

import torch

from rethink.errors import RethinkError
from rethink.fileio import atomic_path

FORMAT = 2  # 2: the progress holds its run_id


@dataclasses.dataclass
class Progress:
    """Where a member is; a resumable checkpoint stores it beside the model, optimizer and RNGs."""

    # names this training run, from its fresh start to its finish, in tracking tools (rethink.tracking)
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:16])
    epoch: int = 0
    pos: int = 0  # steps taken in the current epoch
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    plan: dict = None  # the current epoch's randomness; None between epochs
    online: torch.Tensor = None  # the epoch's [sum of loss x batch size, number correct], on the device


def resumable(member, online, elapsed_s):
    """A resumable checkpoint of a member (rethink.train.loop.Member): its model, optimizer, every
    RNG, and its progress with the epoch's online sums `online`."""
    p, dev = member.p, member.dev
    return dict(
        inputs_sha256=member.key, device_type=dev.type, model=member.model.state_dict(),
        optimizer=member.opt.state_dict(), generator=member.gen.get_state(),
        dropout_generator=member.dropout_gen.get_state(), torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
        run_id=p.run_id, epoch=p.epoch, pos=p.pos, step=p.step, history=p.history, plan=p.plan, online=online,
        elapsed_s=elapsed_s,
    )  # fmt: skip


def restore(member, state):
    """A resumable checkpoint's states put back into a freshly built member; returns its Progress.
    With several processes every rank loads the checkpoint; rank 0 carries the saved online sums,
    the others start theirs from zero."""
    dev = member.dev
    member.model.load_state_dict(state["model"])
    member.opt.load_state_dict(state["optimizer"])
    for group in member.opt.param_groups:  # load_state_dict put a copy there: point it back
        group["lr"] = member.lr
    member.gen.set_state(state["generator"])
    member.dropout_gen.set_state(state["dropout_generator"])
    torch.set_rng_state(state["torch_rng"])
    if dev.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], dev)
    online = state["online"] if member.world.main else torch.zeros_like(state["online"])
    return Progress(
        run_id=state["run_id"],
        epoch=state["epoch"],
        pos=state["pos"],
        step=state["step"],
        history=state["history"],
        elapsed_s=state["elapsed_s"],
        online=online.to(dev),
        plan=state["plan"] and {k: v.to(dev) for k, v in state["plan"].items()},
    )


def finished(key, device_type, history, summary):
    """A finished checkpoint: what the cell's outputs are written from (and re-emitted from)."""
    return dict(inputs_sha256=key, device_type=device_type, finished=True, history=history, summary=summary)


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
