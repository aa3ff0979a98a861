"""Train a pack of cells in one process on one device. `train()` is the entry point.

A pack is one or more cells (the workflow packs `compute.pack` cells of one architecture into a
job; a pack of one is the per-cell case, not another code path). Its members step in lockstep,
one SGD step of each in turn, and share nothing but the process: each has its own model,
optimizer, generators, checkpoint and outputs, so a member's results do not depend on its
pack-mates (bit-identical on CPU).

One member's story: the whole split on the device (or, for ImageNet, streamed from JPEG shards
by a background thread: `rethink.train.stream`); each epoch's randomness drawn up front
(`preprocess.epoch_plan`; for a streamed split, the seed of its order and augmentation); SGD
with a per-epoch lr decay (the lr is a device tensor, so a captured or compiled step sees the
new value); the online (training-mode, minibatch) loss and
accuracy accumulated on the device and read once per epoch; evaluation on the whole training and
test sets in eval mode every `eval_every_epochs`; a checkpoint every `checkpoint_minutes` and on
signals; at the stop, a *finished* checkpoint, then history.csv and summary.json.

A cell may also be trained by several processes, one per GPU, launched by torchrun: each takes
its part of every global batch, and the update is the one-process update
(`rethink.train.distributed`). A pack is then one cell; without torchrun nothing of that path runs.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
import pathlib
import platform
import signal
import time

import torch
import torch.nn.functional as F

from rethink import paths
from rethink.config import COMPILE_MODES
from rethink.data.imagenet import SHARD_FORMAT
from rethink.data.shards import read_shard, read_split_tensors
from rethink.errors import RethinkError
from rethink.fileio import write_text_atomic
from rethink.models import build_model, count_parameters
from rethink.train import cell as cells
from rethink.train import checkpoint, distributed, stream

HISTORY_COLUMNS = (
    "step",
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "train_top5",
    "test_top5",
    "train_avg_loss",
    "train_avg_acc",
    "elapsed_s",
)
# empty where not evaluated; top-5: the label is among the five largest logits (Table 2)
EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc", "train_top5", "test_top5")
# Evaluation batch: bounds memory. On CPU the results do not depend on it; on CUDA, cuDNN picks
# kernels per shape, so another batch size can move a logit in its last bits. Fixed, so that a
# cell's numbers do not depend on anything but the cell.
EVAL_BATCH = stream.EVAL_BATCH


@dataclasses.dataclass
class Job:
    """One cell of a pack as the caller names it: what to train, on which shards, where to write."""

    cell: dict
    train_paths: list
    test_paths: list
    out_dir: pathlib.Path
    checkpoint: pathlib.Path


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RethinkError("device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return name


def stream_seed(seed, stream):
    """Independent seeds per use: the same integer would give two uses one stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------- data


def check_split(arrays, attrs, paths, split, cell):
    """A split on the device (InMemorySplit), once its shards are known to be the cell's and fit
    its crop."""
    cells.check_shards(cell, split, attrs, paths[0])
    crop_size = cell["hparams"]["crop_size"]
    shape = tuple(arrays["images"].shape[1:])
    if len(shape) != 3 or min(shape[1:]) < crop_size:
        raise RethinkError(f"{paths[0]}: images of shape {shape} are smaller than hparams.crop_size={crop_size}")
    if not len(arrays["labels"]):
        raise RethinkError(f"{paths[0]}: the {split} split is empty")
    # The dataset's class count, not the largest label seen: a small subset may miss a class.
    num_classes = int(attrs["num_classes"])
    if arrays["labels"].max() >= num_classes:
        raise RethinkError(f"{paths[0]}: labels exceed the {num_classes} classes the shards declare")
    return stream.InMemorySplit(arrays["images"], arrays["labels"], num_classes)


class SplitCache:
    """Pack-mates that read the same shards share one copy on the device (checked for each); a
    streamed split (JPEG shards) is never loaded: each member gets a reader of its own."""

    def __init__(self, device):
        self.device, self._loaded = device, {}

    def get(self, paths, split, cell):
        _, attrs = read_shard(paths[0], ["labels"])
        if attrs.get("format") == SHARD_FORMAT:
            cells.check_shards(cell, split, attrs, paths[0])
            return stream.StreamedSplit(paths, attrs, cell["stream"]["window_shards"], self.device)
        key = tuple(map(str, paths))
        if key not in self._loaded:
            arrays, attrs = read_split_tensors(paths, ("images", "labels"))
            self._loaded[key] = {name: a.to(self.device) for name, a in arrays.items()}, attrs
        return check_split(*self._loaded[key], paths, split, cell)


# ----------------------------------------------------------------------------- model and step


def run_in_fp32(module):
    """Under autocast, run `module` in float32: its input cast up, autocast off inside. For the
    classifier (logits rounded to bf16 would decide argmax and loss at fit_threshold 1.0) and
    AlexNet's LRN (1 + 0.001 * mean(x^2) rounds to 1 in bf16: a no-op)."""
    forward = module.forward

    def fp32_forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())

    module.forward = fp32_forward  # an instance attribute: state_dict keys stay as they are


class GeneratorDropout(torch.nn.Dropout):
    """nn.Dropout drawing its masks from the cell's own generator, not the process-global RNG, so
    pack-mates do not take each other's draws."""

    def __init__(self, p, generator):
        super().__init__(p)
        self.generator = generator
        # several processes: (global batch size, this rank's first sample). The mask is drawn
        # for the global batch, as one process draws it, and this rank's rows taken
        self.part = None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * self.keep(x) / (1 - self.p)

    # A compiled step runs the draw eagerly, between its graphs: a CUDA graph replaying a draw from a
    # generator it was not told of (torch.cuda.graph's register_generator_state) would repeat it.
    @torch.compiler.disable
    def keep(self, x):
        if self.part is not None:
            total, lo = self.part
            mask = torch.rand((total, *x.shape[1:]), generator=self.generator, device=x.device)
            return mask[lo : lo + len(x)] >= self.p
        return torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p


def setup(cell, input_shape, num_classes, dev, amp_dtype=None, world=None):
    """Model, optimizer, lr tensor and device wrappers, as the loop (and bench/) trains them.
    `amp_dtype`: autocast dtype; default bfloat16 on CUDA, none on CPU. With a `world` (several
    processes), BatchNorm normalises over the global batch."""
    hp, cuda = cell["hparams"], dev.type == "cuda"
    amp_dtype = amp_dtype if amp_dtype is not None else (torch.bfloat16 if cuda else None)
    torch.manual_seed(cell["seed"])  # the global RNG: weight init only
    model = build_model(cell["arch"], input_shape, num_classes, cell["width"], hp["dropout"], init=hp["init"])
    model = model.to(dev)
    if world is not None:
        model = distributed.sync_batchnorm(model, dev.type)
    dropout_gen = torch.Generator(dev).manual_seed(stream_seed(cell["seed"], "dropout"))
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, GeneratorDropout(child.p, dropout_gen))
            elif isinstance(child, torch.nn.LocalResponseNorm):
                run_in_fp32(child)
    run_in_fp32([m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1])  # the classifier
    convs = cuda and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if convs:  # channels_last helps convolutions only; an MLP would just pay for the copy
        model = model.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes all run long; the last batch tunes once
    lr = torch.tensor(float(hp["lr"]), device=dev)  # updated in place: a captured step reads it
    opt = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
        fused=True if cuda else None,
    )

    def amp():
        return torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def fmt(x):
        return x.contiguous(memory_format=torch.channels_last) if convs else x

    return model, opt, lr, dropout_gen, amp, fmt


def sgd_step(model, opt, x, y, amp, fmt):
    """One SGD step -> (loss, number correct), both left on the device: no host sync."""
    with amp():
        logits = model(fmt(x))
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(model, split, crop_size, amp, fmt, dev):
    """Mean loss, top-1 and top-5 accuracy over a whole split, from float32 logits; one host sync,
    at the end."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    correct, top5 = (torch.zeros((), dtype=torch.int64, device=dev) for _ in range(2))
    for x, y in split.eval_batches(crop_size):
        x, y = x.to(dev), y.to(dev)
        with amp():
            logits = model(fmt(x))
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        top5 += (logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1).sum()
    n = split.n
    return loss.item() / n, correct.item() / n, top5.item() / n


# ----------------------------------------------------------------------------- a member


@dataclasses.dataclass
class Progress:
    """Where a member is; a resumable checkpoint stores it beside the model, optimizer and RNGs."""

    epoch: int = 0
    pos: int = 0  # steps taken in the current epoch
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    plan: dict = None  # the current epoch's randomness; None between epochs
    online: torch.Tensor = None  # the epoch's [sum of loss x batch size, number correct], on the device


class Member:
    """One cell of the pack: its model and optimizer, generators, progress and files."""

    def __init__(self, job, key, state, data, dev, compile_mode="off", echo=True, world=None):
        self.job, self.cell, self.hp, self.key, self.dev = job, job.cell, job.cell["hparams"], key, dev
        self.world = world  # None: one process; else the ranks that train this cell together
        self.main = world is None or world.main  # evaluates, logs and writes
        pathlib.Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        self.log = Log(paths.cell_file(job.out_dir, "log"), echo) if self.main else lambda message: None
        self.train_split, self.test_split = data
        self.num_classes, test_classes = self.train_split.num_classes, self.test_split.num_classes
        if test_classes != self.num_classes:
            raise RethinkError(
                f"{job.test_paths[0]}: {test_classes} classes, but the training shards "
                f"declare {self.num_classes}; the train and test shards come from different datasets"
            )
        train_shape, test_shape = self.train_split.image_shape, self.test_split.image_shape
        if type(self.train_split) is stream.InMemorySplit and train_shape != test_shape:
            raise RethinkError(
                f"train images are {train_shape} but test images are "
                f"{test_shape}; the train and test shards come from different datasets"
            )
        crop = self.hp["crop_size"]
        self.input_shape = (train_shape[0], crop, crop)
        self.model, self.opt, self.lr, self.dropout_gen, self.amp, self.fmt = setup(
            self.cell, self.input_shape, self.num_classes, dev, world=world
        )
        step = sgd_step if world is None else distributed.ddp_step
        self.step_fn = step if compile_mode == "off" else torch.compile(step, mode=compile_mode)
        self.gen = torch.Generator(dev).manual_seed(stream_seed(self.cell["seed"], "data"))  # order, crops, flips
        self.n, self.bs = self.train_split.n, self.hp["batch_size"]
        self.batches = None  # the current epoch's batch iterator, from the step it (re)started at
        self.steps_per_epoch = math.ceil(self.n / self.bs)
        self.p = Progress(online=torch.zeros(2, dtype=torch.float64, device=dev))
        if state:
            self._restore(state)
        if world is not None:
            distributed.check_batches(world, self.n, self.bs, self.cell["cell"])
            self.dropouts = [m for m in self.model.modules() if isinstance(m, GeneratorDropout)]
            self.ddp = distributed.wrap(self.model, world, dev)  # after a restore: every rank loaded it
        self.t0 = time.monotonic() - self.p.elapsed_s
        self.next_save = time.monotonic() + 60 * self.hp["checkpoint_minutes"]
        if state:
            self.log(f"resume from {job.checkpoint} at epoch {self.p.epoch} step {self.p.step}")
        else:
            self.log(
                f"start cell={self.cell['cell']} arch={self.cell['arch']} width={self.cell['width']} "
                f"seed={self.cell['seed']} device={dev.type} processes={world.size if world else 1} "
                f"n_train={self.n} n_test={self.test_split.n} "
                f"input={train_shape} classes={self.num_classes} "
                f"params={count_parameters(self.model)} steps/epoch={self.steps_per_epoch}"
            )
            self.record(online=None)  # epoch 0: the untrained network
        self.reason = self.decide()

    def lr_at(self, epoch):
        return self.hp["lr"] * self.hp["lr_decay"] ** epoch  # no scheduler state to resume

    # --- the named steps of an epoch

    def start_epoch(self):
        self.p.plan = self.train_split.epoch_plan(self.hp, self.gen, self.dev)
        self.p.online.zero_()
        self.lr.fill_(self.lr_at(self.p.epoch))
        self.model.train()

    def train_step(self):
        if self.p.pos == 0:
            self.start_epoch()
        if self.world is not None:
            return self._train_step_part()
        if self.batches is None:  # a new epoch, or a resumed one: continue at this step
            self.batches = self.train_split.train_batches(self.p.plan, self.p.pos, self.hp)
        x, y = next(self.batches)
        x, y = x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
        loss, correct = self.step_fn(self.model, self.opt, x, y, self.amp, self.fmt)
        self.p.online[0] += loss * len(y)
        self.p.online[1] += correct
        self._advance()

    def _train_step_part(self):
        """train_step on this rank's part of the global batch (several processes)."""
        if self.batches is None:
            self.batches = self.train_split.train_batches(self.p.plan, self.p.pos, self.hp, world=self.world)
        total = min(self.bs, self.n - self.p.pos * self.bs)  # the global batch (the last may be short)
        lo, _ = self.world.part(total)
        for dropout in self.dropouts:
            dropout.part = (total, lo)
        x, y = next(self.batches)
        x, y = x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
        loss_sum, correct = self.step_fn(self.ddp, self.opt, x, y, self.amp, self.fmt, self.world.size / total)
        self.p.online[0] += loss_sum  # this rank's share; the epoch's end sums the ranks'
        self.p.online[1] += correct
        self._advance()

    def _advance(self):
        self.p.pos += 1
        self.p.step += 1
        if self.p.pos == self.steps_per_epoch:
            self.end_epoch()

    def end_epoch(self):
        online = self.p.online if self.world is None else self.world.total(self.p.online)
        loss_sum, correct = online.tolist()  # the epoch's one host sync of the step path
        self.p.epoch, self.p.pos, self.p.plan, self.batches = self.p.epoch + 1, 0, None, None
        self.record(online=(loss_sum / self.n, correct / self.n))
        self.reason = self.decide()

    def decide(self):
        """The stop reason; with several processes, rank 0's (it alone evaluates), which the others
        wait for."""
        return self.stop_reason() if self.world is None else self.world.from_main(self.stop_reason())

    def record(self, online):
        """Append the epoch's history row: online numbers always, eval-mode numbers when due."""
        p, hp = self.p, self.hp
        row = dict(
            step=p.step,
            epoch=p.epoch,
            lr=self.lr_at(max(p.epoch - 1, 0)),  # the lr it trained with
            train_avg_loss=online[0] if online else None,
            train_avg_acc=online[1] if online else None,
        )
        if self.main and (p.epoch % hp["eval_every_epochs"] == 0 or p.epoch == hp["max_epochs"]):
            crop, model, amp, fmt, dev = hp["crop_size"], self.model, self.amp, self.fmt, self.dev
            row["train_loss"], row["train_acc"], row["train_top5"] = evaluate(
                model, self.train_split, crop, amp, fmt, dev
            )
            row["test_loss"], row["test_acc"], row["test_top5"] = evaluate(model, self.test_split, crop, amp, fmt, dev)
        else:
            row.update(dict.fromkeys(EVAL_COLUMNS))
        row["elapsed_s"] = time.monotonic() - self.t0
        p.history.append(row)
        text = " ".join(
            f"{k.replace('_', ' ')} {row[k]:.4f}"
            for k in (*EVAL_COLUMNS, "train_avg_loss", "train_avg_acc")
            if row[k] is not None
        )
        self.log(f"epoch {p.epoch:4d} step {p.step:7d} lr {row['lr']:.4g} {text} elapsed {row['elapsed_s']:.1f}s")

    def stop_reason(self):
        last = self.p.history[-1]
        if last["train_acc"] is None:  # not evaluated: only an evaluation can stop a cell
            return None
        if not math.isfinite(last["train_loss"]):
            return "diverged"
        if last["train_acc"] >= self.hp["fit_threshold"]:
            return "fit_threshold"
        if self.p.epoch >= self.hp["max_epochs"]:
            return "max_epochs"
        return None

    # --- checkpoints and outputs

    def save_due(self):
        return time.monotonic() >= self.next_save

    def save(self, why=None):
        """Every rank calls it at the same step (several processes: the online sums are added up
        over the ranks; rank 0 writes)."""
        p, cuda, online = self.p, self.dev.type == "cuda", self.p.online
        if self.world is not None:
            online = self.world.total(online)
            if not self.main:
                self.next_save = time.monotonic() + 60 * self.hp["checkpoint_minutes"]
                return
        checkpoint.save(self.job.checkpoint, dict(
            inputs_sha256=self.key, device_type=self.dev.type, model=self.model.state_dict(),
            optimizer=self.opt.state_dict(), generator=self.gen.get_state(),
            dropout_generator=self.dropout_gen.get_state(), torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(self.dev) if cuda else None,
            epoch=p.epoch, pos=p.pos, step=p.step, history=p.history, plan=p.plan, online=online,
            elapsed_s=time.monotonic() - self.t0,
        ))  # fmt: skip
        self.next_save = time.monotonic() + 60 * self.hp["checkpoint_minutes"]
        if why:
            self.log(f"{why}: checkpoint saved at epoch {p.epoch} step {p.step}")

    def _restore(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for group in self.opt.param_groups:  # load_state_dict put a copy there: point it back
            group["lr"] = self.lr
        self.gen.set_state(state["generator"])
        self.dropout_gen.set_state(state["dropout_generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.dev.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.dev)
        self.p = Progress(
            epoch=state["epoch"],
            pos=state["pos"],
            step=state["step"],
            history=state["history"],
            elapsed_s=state["elapsed_s"],
            # several processes: rank 0 carries the saved sums, the others start theirs from zero
            online=state["online"].to(self.dev) if self.main else torch.zeros_like(state["online"]).to(self.dev),
            plan=state["plan"] and {k: v.to(self.dev) for k, v in state["plan"].items()},
        )
        if self.p.pos:  # mid-epoch: the rest of the epoch trains in training mode at its lr
            self.lr.fill_(self.lr_at(self.p.epoch))
            self.model.train()

    def finish(self):
        """The finished checkpoint first, then the outputs: a kill in between loses nothing. With
        several processes, rank 0 writes; the others return None."""
        if not self.main:
            self.train_split.close()
            self.test_split.close()
            return None
        summary = _summary(
            self.cell,
            self.p,
            self.reason,
            self.model,
            self.key,
            self.dev,
            self.num_classes,
            self.n,
            self.test_split.n,
            self.input_shape,
        )
        self.train_split.close()
        self.test_split.close()
        checkpoint.save(
            self.job.checkpoint,
            dict(
                inputs_sha256=self.key,
                device_type=self.dev.type,
                finished=True,
                history=self.p.history,
                summary=summary,
            ),
        )
        write_outputs(self.job, self.p.history, summary)
        self.log(
            f"stop: {self.reason} at epoch {self.p.epoch} step {self.p.step} final train acc "
            f"{summary['final_train_acc']:.4f} test acc {summary['final_test_acc']:.4f} "
            f"wall {summary['wall_s']:.1f}s"
        )
        return summary


def write_outputs(job, history, summary):
    _write_history(paths.cell_file(job.out_dir, "history"), history)
    write_text_atomic(paths.cell_file(job.out_dir, "summary"), json.dumps(summary, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- the pack


def train(jobs, device=None, echo=True, compile_mode="off"):
    """Train a pack: `jobs` is a list of Job (or one Job). Writes each cell's history.csv,
    summary.json and train.log into its out_dir; returns the summaries in the jobs' order.
    Under torchrun (WORLD_SIZE > 1) the processes train one cell together; rank 0 writes and
    returns its summary, the others None."""
    jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
    if compile_mode not in COMPILE_MODES:
        raise RethinkError(f"compile mode {compile_mode!r} is invalid; allowed: {', '.join(COMPILE_MODES)}")
    if compile_mode != "off" and len(jobs) > 1:
        # pack-mates would share one compiled step: torch's guards on each optimizer pass its
        # recompile limit at about 5 cells, and CUDA graphs would re-record at every switch
        raise RethinkError(
            f"compile mode {compile_mode!r} trains a pack of one cell, but this pack has {len(jobs)}; "
            "set compute.pack: 1 or compute.compile: off"
        )
    for job in jobs:
        cells.validate(job.cell, str(job.out_dir))
    devices = {resolve_device(device or job.cell["hparams"]["device"]) for job in jobs}
    if len(devices) > 1:
        raise RethinkError(f"a pack trains on one device, but its cells ask for {', '.join(sorted(devices))}")
    dev = torch.device(devices.pop())
    world = None
    if distributed.world_size() > 1:
        if len(jobs) != 1:
            raise RethinkError(
                f"{distributed.world_size()} processes train one cell together, but this pack has {len(jobs)} "
                "cells; a cell trained on several GPUs needs compute.pack: 1"
            )
        world = distributed.from_environment(dev.type)
        if dev.type == "cuda":
            dev = torch.device("cuda", world.local_rank)
    keys = [cells.inputs_sha256(job.cell, job.train_paths, job.test_paths) for job in jobs]
    # every checkpoint is checked before the slow data load: a stale one is refused at once
    states = [checkpoint.load(job.checkpoint, key, dev.type) for job, key in zip(jobs, keys)]
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)  # free on CPU; makes resume bit-identical
    try:
        if world is None:
            return _train_pack(jobs, keys, states, dev, echo, compile_mode)
        summaries = _train_pack(jobs, keys, states, dev, echo, compile_mode, world)
        world.barrier()  # rank 0 has written everything
        return summaries
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if world is not None:
            world.close()


def _train_pack(jobs, keys, states, dev, echo, compile_mode, world=None):
    summaries, finished = [None] * len(jobs), set()
    for i, (job, state) in enumerate(zip(jobs, states)):
        pathlib.Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        if checkpoint.is_finished(state):  # trained before; its outputs were thrown away since
            finished.add(i)
            if world is not None and not world.main:
                continue
            write_outputs(job, state["history"], state["summary"])
            Log(paths.cell_file(job.out_dir, "log"), echo)(
                f"finished earlier: history and summary re-emitted from {job.checkpoint}"
            )
            summaries[i] = state["summary"]
    cache = SplitCache(dev)
    members = {
        i: Member(job, key, state, (cache.get(job.train_paths, "train", job.cell),
                                    cache.get(job.test_paths, "test", job.cell)), dev, compile_mode, echo, world)
        for i, (job, key, state) in enumerate(zip(jobs, keys, states)) if i not in finished
    }  # fmt: skip
    with checkpoint.Signals(launcher=world is not None) as signals:
        while members:
            for i, member in list(members.items()):  # lockstep: one step of each member in turn
                if member.reason is None:
                    member.train_step()
                if member.reason is not None:
                    summaries[i] = members.pop(i).finish()
            _checkpoint_boundary(list(members.values()), signals, world)
    return summaries


def _checkpoint_boundary(members, signals, world=None):
    """Between steps, where every state agrees: save members that are due, or all on a signal.
    Several processes agree first: a signal any rank got, a save due on rank 0."""
    sig, signals.pending = signals.pending, None
    orphaned, due = None, None
    if world is not None:
        sig, orphaned, due = _agree(world, sig, signals.orphaned(), members)
    if sig is None and (signals.orphaned() if orphaned is None else orphaned):
        sig = signal.SIGTERM  # the parent died: save and stop rather than run unwatched
        why = "parent process gone"
    else:
        why = sig and sig.name
    for i, member in enumerate(members):
        if sig is not None or (member.save_due() if due is None else due[i]):
            member.save(why)
    if sig in checkpoint.Signals.STOP:
        raise checkpoint.Interrupted(sig, [m.job.checkpoint for m in members])


def _agree(world, sig, orphaned, members):
    """(signal, orphaned, saves due) as all ranks see them together: a stopping signal any rank
    got wins over a SIGUSR1; the clock that makes a save due is rank 0's."""
    stop = int(sig) if sig in checkpoint.Signals.STOP else 0
    due = [int(world.main and m.save_due()) for m in members]
    stop, usr1, orphaned, *due = world.agree([stop, int(sig == signal.SIGUSR1), int(orphaned), *due])
    sig = signal.Signals(stop) if stop else (signal.SIGUSR1 if usr1 else None)
    return sig, bool(orphaned), [bool(d) for d in due]


def _summary(cell, p, reason, model, key, dev, num_classes, n_train, n_test, input_shape):
    evaluated = [r for r in p.history if r["train_acc"] is not None]
    last, fitted, online = evaluated[-1], reason == "fit_threshold", p.history[-1]
    best = max(evaluated, key=lambda r: r["test_acc"])  # the first of equal maxima
    finite = lambda v: v if v is None or math.isfinite(v) else None  # noqa: E731  (JSON has no NaN)
    avg_accs = [r["train_avg_acc"] for r in p.history if r["train_avg_acc"] is not None]
    with torch.no_grad():
        norm = math.sqrt(sum(p.detach().double().square().sum().item() for p in model.parameters()))
    return cells.summary(
        cell,
        final_train_loss=finite(last["train_loss"]), final_train_acc=last["train_acc"],
        final_test_loss=finite(last["test_loss"]), final_test_acc=last["test_acc"],
        final_train_top5=last["train_top5"], final_test_top5=last["test_top5"],
        best_test_top5=max(r["test_top5"] for r in evaluated),
        final_train_avg_loss=finite(online["train_avg_loss"]), final_train_avg_acc=online["train_avg_acc"],
        train_avg_acc_global=sum(avg_accs) / len(avg_accs) if avg_accs else None,
        best_test_acc=best["test_acc"], best_test_step=best["step"], best_test_epoch=best["epoch"],
        steps_to_fit=last["step"] if fitted else None, epochs_to_fit=last["epoch"] if fitted else None,
        converged=fitted, stop_reason=reason, steps=p.step, epochs=p.epoch,
        n_params=count_parameters(model), param_norm=finite(norm), num_classes=num_classes,
        n_train=n_train, n_test=n_test, input_shape=list(input_shape), inputs_sha256=key,
        device=dev.type, device_name=device_name(dev), torch_version=str(torch.__version__),
        python_version=platform.python_version(), wall_s=online["elapsed_s"],
    )  # fmt: skip


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_history(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # floats as repr: exact, so histories compare bit for bit; None -> empty
    write_text_atomic(path, text.getvalue())


class Log:
    """train.log, appended to across resumes; each line also echoed to stdout."""

    def __init__(self, path, echo=True):
        self.path, self.echo = path, echo

    def __call__(self, message):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)
