"""Data-parallel training of one cell by several processes (one per GPU), launched by torchrun.

The trainer always runs in a world: `from_environment` gives the one-process run a world of one
(`OneProcess`: rank 0, the main process, every batch whole, agreement with itself; the model as
it is), and the processes torchrun starts a `World` of several. The loop takes the same steps in
both. The workflow launches `torchrun --standalone --nproc_per_node=N -m rethink.train --pack ...`
for an architecture whose `gpus` is N > 1 (a pack of one cell); torchrun sets WORLD_SIZE, RANK
and LOCAL_RANK. What the ranks do, and why it is the one-process run of the same cell:

- the global batch is the cell's `batch_size`; rank r trains on its contiguous part of every
  global batch (`World.part`; the last, partial batch is split as evenly as it goes). Every rank
  draws the whole epoch's randomness (order, crops, flips, angles; a streamed split's per-batch
  draws) from the same seeded generators as the one-process run and takes its part of it; the
  dropout masks are drawn for the global batch and sliced (loop.GeneratorDropout);
- each rank's loss is its samples' summed cross-entropy times world / global batch
  (`World.objective`), so DistributedDataParallel's gradient average is the gradient of the
  global batch's mean loss, even for an uneven last batch; the SGD update is then the
  one-process update (up to the order of float additions);
- BatchNorm normalises with the global batch's statistics (on CUDA `SyncBatchNorm`, torch's
  without its host sync; on CPU, where torch's refuses to run, `GlobalBatchNorm`), so the running
  statistics, too, are those of the one-process run and identical on every rank;
- rank 0 evaluates, logs and writes (history, summary, checkpoints); the other ranks wait at a
  barrier of a CPU (gloo) control group whose timeout (CONTROL_TIMEOUT) covers a whole-split
  evaluation;
- signals: every rank records its own (torchrun passes SIGTERM on to all of them); at each step
  boundary the ranks agree over the control group (a signal seen by any rank, a save that is due
  on rank 0), so they save and stop at the same step. One small CPU all-reduce per step; it
  does not wait for the GPU.

The backend is nccl on CUDA (each rank on cuda:LOCAL_RANK) and gloo on the CPU (tests).
"""

import datetime
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rethink.errors import RethinkError

# The other ranks wait this long for rank 0's evaluation of a whole split (ImageNet's 1.28M
# training images on one GPU take minutes; decoded on CPUs, hours). A job's time limit ends a
# truly stuck run long before.
CONTROL_TIMEOUT = datetime.timedelta(hours=12)


class OneProcess:
    """The one-process run as a world of one (as nanoGPT's `master_process = True; ddp_world_size
    = 1`): the main process, every batch whole, every agreement its own values, the model as it
    is (no DistributedDataParallel, torch's BatchNorm). A `World` answers the same questions for
    several processes."""

    rank, size, local_rank, main = 0, 1, 0, True

    def part(self, n):
        return 0, n

    def objective(self, logits, y, total):
        """(what to differentiate, the batch's summed loss, detached): the batch's mean cross-entropy."""
        loss = F.cross_entropy(logits, y)
        return loss, loss.detach() * len(y)

    def agree(self, values):
        return values

    def from_main(self, value):
        return value

    def total(self, tensor):
        return tensor

    def global_batchnorm(self, model, device_type):
        return model

    def wrap(self, model, dev):
        return model

    def barrier(self):
        pass

    def close(self):
        pass


ONE = OneProcess()


class World:
    """This process's place among the ranks that train one cell."""

    def __init__(self, rank, size, local_rank, control):
        self.rank, self.size, self.local_rank, self.control = rank, size, local_rank, control
        self.main = rank == 0

    def part(self, n):
        """This rank's contiguous [lo, hi) of a global batch of n samples, split as evenly as it goes."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def objective(self, logits, y, total):
        """(what to differentiate, the part's summed loss, detached) of this rank's part of a global
        batch of `total` samples: the summed loss times world / total, whose gradient DDP's average
        over the ranks turns into the gradient of the global batch's mean loss."""
        loss = F.cross_entropy(logits, y, reduction="sum")
        return loss * (self.size / total), loss.detach()

    def agree(self, values):
        """Element-wise maximum of small non-negative integers over all ranks (CPU, control group)."""
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return t.tolist()

    def from_main(self, value):
        """Rank 0's value of a picklable object, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def total(self, tensor):
        """The sum over ranks of a device tensor (a copy)."""
        t = tensor.clone()
        dist.all_reduce(t)
        return t

    def global_batchnorm(self, model, device_type):
        return sync_batchnorm(model, device_type)

    def wrap(self, model, dev):
        return wrap(model, self, dev)

    def barrier(self):
        dist.barrier(group=self.control)

    def close(self):
        dist.destroy_process_group()


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def from_environment(device_type):
    """The World torchrun describes (WORLD_SIZE > 1), with the process group started; else ONE."""
    size = world_size()
    if size <= 1:
        return ONE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RethinkError(
                f"rank {rank} needs GPU {local_rank}, but this job sees {torch.cuda.device_count()}; "
                f"ask the scheduler for {size} GPUs (architectures.<name>.gpus)"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=CONTROL_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT) if device_type == "cuda" else dist.group.WORLD
    return World(rank, size, local_rank, control)


def check_batches(world, n, batch_size, where):
    """The global batch must split evenly over the ranks, and the last one give each a sample."""
    if batch_size % world.size:
        raise RethinkError(
            f"{where}: hparams.batch_size={batch_size} (the global batch) does not split evenly over "
            f"{world.size} processes; make it a multiple of {world.size} or change architectures.<name>.gpus"
        )
    last = n % batch_size
    if 0 < last < world.size:
        raise RethinkError(
            f"{where}: the epoch's last batch has {last} samples, fewer than the {world.size} processes; "
            f"change hparams.batch_size or architectures.<name>.gpus"
        )


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with autograd: the gradient of a sum over ranks is the sum of the ranks'
    gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are the global batch's, over all ranks, with
    autograd through the all-reduces: SyncBatchNorm for the CPU (gloo), where torch's refuses to
    run. Two passes (mean, then the mean squared deviation), as one process computes them; eval
    mode and the state dict are BatchNorm2d's."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        dims = (0, 2, 3)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.square().sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class _SyncBatchNormStats(torch.nn.modules._functions.SyncBatchNorm):
    """torch's SyncBatchNorm autograd function (its backward, the same in torch 2.11 and 2.13) with
    a forward that never waits for the GPU. torch's forward drops the statistics of ranks whose
    input is empty by indexing with a boolean mask, a host sync once per BatchNorm layer per step;
    here every rank has samples (check_batches), so the mask is left out. Otherwise it is torch's
    forward, with all_gather (one call that gloo and NCCL, 2.11 and 2.13 all take)."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum, process_group, world_size):
        if not input.is_contiguous(memory_format=torch.channels_last):
            input = input.contiguous()
        if weight is not None:
            weight = weight.contiguous()
        channels = input.shape[1]
        mean, invstd = torch.batch_norm_stats(input, eps)
        count = torch.full((1,), input.numel() // channels, dtype=mean.dtype, device=mean.device)
        gathered = [torch.empty(2 * channels + 1, dtype=mean.dtype, device=mean.device) for _ in range(world_size)]
        dist.all_gather(gathered, torch.cat([mean, invstd, count]), process_group)
        mean_all, invstd_all, count_all = torch.stack(gathered).split(channels, dim=1)
        counts = count_all.view(-1)
        if running_mean is not None:
            counts = counts.to(running_mean.dtype)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            input, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts
        )
        ctx.save_for_backward(input, weight, mean, invstd, count_all.to(torch.int32))
        ctx.process_group = process_group
        return torch.batch_norm_elemt(input, weight, bias, mean, invstd, eps)


class SyncBatchNorm(torch.nn.SyncBatchNorm):
    """torch's SyncBatchNorm (CUDA) whose training forward is `_SyncBatchNormStats`; eval mode is
    torch's (plain BatchNorm with the running statistics)."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        group = self.process_group or dist.group.WORLD
        return _SyncBatchNormStats.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, self.momentum,
            group, dist.get_world_size(group),
        )  # fmt: skip


def sync_batchnorm(model, device_type):
    """The model with every BatchNorm normalising over the global batch."""
    global_norm = SyncBatchNorm if device_type == "cuda" else GlobalBatchNorm
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.BatchNorm2d:
                if child.momentum is None:
                    raise RethinkError("BatchNorm with a cumulative average (momentum None) is not supported here")
                replacement = global_norm(
                    child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
                ).to(next(iter(child.buffers())).device)
                replacement.load_state_dict(child.state_dict())
                setattr(parent, name, replacement)
            elif isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, global_norm):
                raise RethinkError(f"{type(child).__name__} has no global-batch version here (BatchNorm2d has)")
    return model


def wrap(model, world, dev):
    """DistributedDataParallel around `model`: rank 0's parameters and buffers are broadcast once,
    at construction; the buffers (BatchNorm's running statistics, updated from the global batch's
    statistics: the same on every rank) are not broadcast again before every forward."""
    ids = [dev.index] if dev.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # Set after construction, as every torch from 2.11 on reads it at each forward: the keyword
    # broadcast_buffers=False would also skip the broadcast at construction (2.11 and 2.13), and
    # forward_sync_buffers (2.13) does not exist in 2.11.
    ddp.broadcast_buffers = False
    return ddp
