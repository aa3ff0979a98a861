"""Train a pack of cells in one process on one device. `train()` is the entry point.

A pack is one or more cells (the workflow packs `compute.pack` cells of one architecture into a
job; a pack of one is the per-cell case, not another code path). Its members step in lockstep,
one SGD step of each in turn, and share nothing but the process: each has its own model,
optimizer, generators, checkpoint and outputs, so a member's results do not depend on its
pack-mates (bit-identical on CPU).

One member's story: the whole split on the device (or, for ImageNet, streamed from JPEG shards
by a background thread: `rethink.train.data`, `rethink.train.stream`); each epoch's randomness
drawn up front (`preprocess.epoch_plan`; for a streamed split, the seed of its order and
augmentation); SGD with a per-epoch lr decay (the lr is a device tensor, so a captured or
compiled step sees the new value); the online (training-mode, minibatch) loss and accuracy
accumulated on the device and read once per epoch; evaluation on the whole training and test
sets in eval mode every `eval_every_epochs`; each epoch's row appended to history.csv
(`rethink.train.outputs`) and logged to a tracker (`rethink.tracking`); a checkpoint every
`checkpoint_minutes` and on signals (`rethink.train.checkpoint`); at the stop, a *finished*
checkpoint, then history.csv and summary.json.

The process trains in a world (`rethink.train.distributed`): a world of one, or under torchrun
several processes that train one cell together (a pack of one), each on its part of every global
batch, with the one-process update. Rank 0 evaluates and writes; one process is rank 0.
"""

import dataclasses
import hashlib
import math
import pathlib
import platform
import signal
import time

import torch
import torch.nn.functional as F

from rethink import tracking
from rethink.config import COMPILE_MODES
from rethink.errors import RethinkError
from rethink.models import build_model, count_parameters
from rethink.train import cell as cells
from rethink.train import checkpoint, distributed, outputs
from rethink.train.data import SplitCache


@dataclasses.dataclass
class Job:
    """One cell of a pack as the caller names it: what to train, on which shards, where to write."""

    cell: dict
    train_paths: list
    test_paths: list
    out_dir: pathlib.Path
    checkpoint: pathlib.Path


# ----------------------------------------------------------------------------- the pack


def train(jobs, device=None, echo=True, compile_mode="off", tracking_settings=None):
    """Train a pack: `jobs` is a list of Job (or one Job). Writes each cell's history.csv,
    summary.json and train.log into its out_dir; returns the summaries in the jobs' order.
    `tracking_settings`: rethink.tracking's (None: no tracking). Under torchrun (WORLD_SIZE > 1)
    the processes train one cell together; rank 0 writes and returns its summary, the others None."""
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
    if distributed.world_size() > 1 and len(jobs) != 1:
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
        summaries = _train_pack(jobs, keys, states, dev, world, echo, compile_mode, tracking_settings)
        world.barrier()  # rank 0 has written everything
        return summaries
    finally:
        torch.use_deterministic_algorithms(deterministic)
        world.close()


def _train_pack(jobs, keys, states, dev, world, echo, compile_mode, tracking_settings):
    summaries, members = [None] * len(jobs), {}
    for i, (job, state) in enumerate(zip(jobs, states)):
        pathlib.Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        if checkpoint.is_finished(state) and world.main:  # trained before; its outputs were thrown away since
            outputs.write(job.out_dir, state["history"], state["summary"])
            outputs.Log(job.out_dir, echo)(f"finished earlier: history and summary re-emitted from {job.checkpoint}")
            summaries[i] = state["summary"]
    cache = SplitCache(dev)
    exit_code = 1  # what the trackers of unfinished members end with, unless a signal stops the run
    try:
        for i, (job, key, state) in enumerate(zip(jobs, keys, states)):
            if not checkpoint.is_finished(state):
                members[i] = Member(
                    job, key, state, cache.splits(job), dev, compile_mode, echo, world, tracking_settings
                )
        with checkpoint.Signals(launcher=world.size > 1) as signals:
            while members:
                for i, member in list(members.items()):  # lockstep: one step of each member in turn
                    if member.reason is None:
                        member.train_step()
                    if member.reason is not None:
                        summaries[i] = members.pop(i).finish()
                _checkpoint_boundary(list(members.values()), signals, world)
    except checkpoint.Interrupted as stop:
        exit_code = 128 + stop.signum
        raise
    finally:
        for member in members.values():
            member.tracker.close(exit_code)
    return summaries


def _checkpoint_boundary(members, signals, world):
    """Between steps, where every state agrees: save members that are due, or all on a signal.
    The ranks agree first (one process, with itself): a signal any rank got, a save due on rank 0."""
    sig, orphaned, due = _agree(world, signals, members)
    why = sig and sig.name
    if sig is None and orphaned:
        sig, why = signal.SIGTERM, "parent process gone"  # save and stop rather than run unwatched
    for member, member_due in zip(members, due):
        if sig is not None or member_due:
            member.save(why)
    if sig in checkpoint.Signals.STOP:
        raise checkpoint.Interrupted(sig, [m.job.checkpoint for m in members])


def _agree(world, signals, members):
    """(signal, orphaned, saves due) as all ranks see them together: a stopping signal any rank
    got wins over a SIGUSR1; the clock that makes a save due is rank 0's."""
    sig, signals.pending = signals.pending, None
    stop = int(sig) if sig in checkpoint.Signals.STOP else 0
    due = [int(world.main and m.save_due()) for m in members]
    stop, usr1, orphaned, *due = world.agree([stop, int(sig == signal.SIGUSR1), int(signals.orphaned()), *due])
    sig = signal.Signals(stop) if stop else (signal.SIGUSR1 if usr1 else None)
    return sig, bool(orphaned), [bool(d) for d in due]


# ----------------------------------------------------------------------------- a member


class Member:
    """One cell of the pack: its model and optimizer, generators, progress and files. Rank 0 (the
    one process) evaluates, logs and writes."""

    def __init__(
        self, job, key, state, data, dev, compile_mode="off", echo=True, world=distributed.ONE, tracking_settings=None
    ):
        self.job, self.cell, self.hp, self.key, self.dev = job, job.cell, job.cell["hparams"], key, dev
        self.world, self.main = world, world.main
        pathlib.Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        self.log = outputs.Log(job.out_dir, echo) if self.main else lambda message: None
        self.train_split, self.test_split = data
        self.num_classes, train_shape = self.train_split.num_classes, self.train_split.image_shape
        crop = self.hp["crop_size"]
        self.input_shape = (train_shape[0], crop, crop)
        self.model, self.opt, self.lr, self.dropout_gen, self.amp, self.fmt = setup(
            self.cell, self.input_shape, self.num_classes, dev, world=world
        )
        self.dropouts = [m for m in self.model.modules() if isinstance(m, GeneratorDropout)]
        self.step_fn = sgd_step if compile_mode == "off" else torch.compile(sgd_step, mode=compile_mode)
        self.gen = torch.Generator(dev).manual_seed(stream_seed(self.cell["seed"], "data"))  # order, crops, flips
        self.n, self.bs = self.train_split.n, self.hp["batch_size"]
        distributed.check_batches(world, self.n, self.bs, self.cell["cell"])
        self.batches = None  # the current epoch's batch iterator, from the step it (re)started at
        self.steps_per_epoch = math.ceil(self.n / self.bs)
        if state:
            self.p = checkpoint.restore(self, state)
            if self.p.pos:  # mid-epoch: the rest of the epoch trains in training mode at its lr
                self.lr.fill_(self.lr_at(self.p.epoch))
                self.model.train()
        else:
            self.p = checkpoint.Progress(online=torch.zeros(2, dtype=torch.float64, device=dev))
        self.net = world.wrap(self.model, dev)  # after a restore: every rank loaded it
        self.t0 = time.monotonic() - self.p.elapsed_s
        self.next_save = time.monotonic() + 60 * self.hp["checkpoint_minutes"]
        if self.main:  # the checkpoint's rows (none at a fresh start): cut back to where it resumes
            self.history = outputs.History(job.out_dir)
            self.history.rewrite(self.p.history)
        self.tracker = tracking.start(
            tracking_settings if self.main else None, self.cell, self.p.run_id, self.p.history, self.log
        )
        if state:
            self.log(f"resume from {job.checkpoint} at epoch {self.p.epoch} step {self.p.step}")
        else:
            self.log(
                f"start cell={self.cell['cell']} arch={self.cell['arch']} width={self.cell['width']} "
                f"seed={self.cell['seed']} device={dev.type} processes={world.size} "
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
        """One SGD step on this process's part of the next global batch (one process: all of it)."""
        p = self.p
        if p.pos == 0:
            self.start_epoch()
        if self.batches is None:  # a new epoch, or a resumed one: continue at this step
            self.batches = self.train_split.train_batches(p.plan, p.pos, self.hp, self.world)
        total = min(self.bs, self.n - p.pos * self.bs)  # the global batch (the last may be short)
        lo, _ = self.world.part(total)
        for dropout in self.dropouts:  # masks drawn for the global batch, this process's rows used
            dropout.part = (total, lo)
        x, y = next(self.batches)
        x, y = x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
        loss_sum, correct = self.step_fn(self.net, self.opt, x, y, self.amp, self.fmt, self.world, total)
        p.online[0] += loss_sum  # this process's share; the epoch's end sums the ranks'
        p.online[1] += correct
        p.pos += 1
        p.step += 1
        if p.pos == self.steps_per_epoch:
            self.end_epoch()

    def end_epoch(self):
        loss_sum, correct = self.world.total(self.p.online).tolist()  # the epoch's one host sync of the step path
        self.p.epoch, self.p.pos, self.p.plan, self.batches = self.p.epoch + 1, 0, None, None
        self.record(online=(loss_sum / self.n, correct / self.n))
        self.reason = self.decide()

    def record(self, online):
        """The epoch's history row, online numbers always, eval-mode numbers when due; appended to
        history.csv, tracked and logged."""
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
            row.update(dict.fromkeys(outputs.EVAL_COLUMNS))
        row["elapsed_s"] = time.monotonic() - self.t0
        p.history.append(row)
        if self.main:
            self.history.append(row)
            self.tracker.log(row)
        self.log(outputs.epoch_line(row))

    def decide(self):
        """The stop reason: rank 0's (it alone evaluates), which the others wait for."""
        return self.world.from_main(self.stop_reason())

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
        """Every rank calls it at the same step: the online sums are added up over the ranks, and
        rank 0 writes."""
        online = self.world.total(self.p.online)
        if self.main:
            checkpoint.save(self.job.checkpoint, checkpoint.resumable(self, online, time.monotonic() - self.t0))
        self.next_save = time.monotonic() + 60 * self.hp["checkpoint_minutes"]
        if why:
            self.log(f"{why}: checkpoint saved at epoch {self.p.epoch} step {self.p.step}")

    def finish(self):
        """The finished checkpoint first, then the outputs: a kill in between loses nothing. Rank 0
        writes and returns the summary; the others return None."""
        self.train_split.close()
        self.test_split.close()
        if not self.main:
            return None
        summary = outputs.summary(
            self.cell, self.p.history, self.reason, steps=self.p.step, epochs=self.p.epoch,
            n_params=count_parameters(self.model), param_norm=parameter_norm(self.model),
            num_classes=self.num_classes, n_train=self.n, n_test=self.test_split.n,
            input_shape=list(self.input_shape), inputs_sha256=self.key, device=self.dev.type,
            device_name=device_name(self.dev), torch_version=str(torch.__version__),
            python_version=platform.python_version(),
        )  # fmt: skip
        checkpoint.save(self.job.checkpoint, checkpoint.finished(self.key, self.dev.type, self.p.history, summary))
        outputs.write(self.job.out_dir, self.p.history, summary)
        self.tracker.close(0)
        self.log(
            f"stop: {self.reason} at epoch {self.p.epoch} step {self.p.step} final train acc "
            f"{summary['final_train_acc']:.4f} test acc {summary['final_test_acc']:.4f} "
            f"wall {summary['wall_s']:.1f}s"
        )
        return summary


# ----------------------------------------------------------------------------- model and step


def setup(cell, input_shape, num_classes, dev, amp_dtype=None, world=distributed.ONE):
    """Model, optimizer, lr tensor and device wrappers, as the loop (and bench/) trains them.
    `amp_dtype`: autocast dtype; default bfloat16 on CUDA, none on CPU. BatchNorm normalises over
    the world's global batch (one process: torch's BatchNorm)."""
    hp, cuda = cell["hparams"], dev.type == "cuda"
    amp_dtype = amp_dtype if amp_dtype is not None else (torch.bfloat16 if cuda else None)
    torch.manual_seed(cell["seed"])  # the global RNG: weight init only
    model = build_model(cell["arch"], input_shape, num_classes, cell["width"], hp["dropout"], init=hp["init"])
    model = world.global_batchnorm(model.to(dev), dev.type)
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


def sgd_step(model, opt, x, y, amp, fmt, world=distributed.ONE, total=None):
    """One SGD step -> (the batch's summed loss, number correct), both left on the device: no host
    sync. With several processes, x and y are this rank's part of a global batch of `total`
    samples and `model` is wrapped in DDP; the world decides the loss (distributed.World.objective)."""
    with amp():
        logits = model(fmt(x))
    loss, loss_sum = world.objective(logits, y, total)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss_sum, (logits.argmax(1) == y).sum()


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
        # (global batch size, this rank's first sample), set by the loop before each step: the
        # mask is drawn for the global batch, as one process draws it, and this rank's rows taken.
        # None (a model used outside the loop): the mask of the batch at hand.
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


def parameter_norm(model):
    """The L2 norm of all parameters, summed in float64."""
    with torch.no_grad():
        return math.sqrt(sum(p.detach().double().square().sum().item() for p in model.parameters()))


# ----------------------------------------------------------------------------- the device and seeds


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RethinkError("device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return name


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


def stream_seed(seed, stream):
    """Independent seeds per use: the same integer would give two uses one stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1
