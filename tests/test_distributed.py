"""The parts of the multi-GPU path that run on CPU: how DistributedDataParallel is built (every torch
from 2.11 on), and the CUDA SyncBatchNorm's logic, run by two gloo processes with reference CPU
kernels standing in for torch's CUDA-only batch-norm kernels. tests/test_ddp.py trains whole cells."""

import pytest
import torch
import torch.distributed as dist

from rethink.train import distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# torch 2.11's DistributedDataParallel.__init__ keywords (torch/nn/parallel/distributed.py), the
# oldest torch this project runs on; 2.13 added forward_sync_buffers.
DDP_KEYWORDS_2_11 = {
    "module", "device_ids", "output_device", "dim", "broadcast_buffers", "init_sync", "process_group",
    "bucket_cap_mb", "find_unused_parameters", "check_reduction", "gradient_as_bucket_view", "static_graph",
    "delay_all_reduce_named_params", "param_to_hook_all_reduce", "mixed_precision", "device_mesh",
    "skip_all_reduce_unused_params", "bucket_cap_mb_list",
}  # fmt: skip
PROCESS_DEADLINE_S = 300  # two processes that import torch and run a few ops, on a loaded machine


def run_ranks(tmp_path, target, size=2):
    """target(world) in `size` processes of one gloo group -> each rank's returned dict."""
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(rank, size, str(tmp_path / "store"), target, str(tmp_path / f"{rank}.pt")))
        for rank in range(size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(PROCESS_DEADLINE_S)
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0] * size, "a rank failed (its traceback is above)"
    return [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(size)]


def _rank_main(rank, size, store, target, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        torch.save(target(distributed.World(rank, size, rank, dist.group.WORLD)), out)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- DDP


def test_ddp_is_built_with_keywords_torch_2_11_accepts(monkeypatch):
    seen = {}

    class Recorder:
        def __init__(self, module, **kwargs):
            seen.update(kwargs, module=module)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", Recorder)
    distributed.wrap(torch.nn.Linear(2, 2), None, torch.device("cpu"))
    assert set(seen) <= DDP_KEYWORDS_2_11, set(seen) - DDP_KEYWORDS_2_11


def _buffers_once(world):
    torch.manual_seed(world.rank)  # the ranks' models start different
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    model[1].running_mean.fill_(world.rank + 1.0)
    ddp = distributed.wrap(model, world, torch.device("cpu"))
    built = {k: v.clone() for k, v in model.state_dict().items()}
    model[1].running_mean.fill_(10.0 + world.rank)  # a broadcast before the forward would undo this
    model.eval()
    with torch.no_grad():
        ddp(torch.randn(2, 1, 5, 5))
    return dict(built=built, after_forward=model[1].running_mean.clone())


def test_ddp_broadcasts_parameters_and_buffers_once_then_never_before_a_forward(tmp_path):
    ranks = run_ranks(tmp_path, _buffers_once)
    for name, value in ranks[0]["built"].items():
        assert torch.equal(ranks[1]["built"][name], value), name  # rank 0's, on both
    assert torch.equal(ranks[0]["built"]["1.running_mean"], torch.ones(2))
    assert [r["after_forward"].tolist() for r in ranks] == [[10.0, 10.0], [11.0, 11.0]]


# ----------------------------------------------------------------------------- SyncBatchNorm


def _per_channel(t, x):
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def _dims(x):
    return [d for d in range(x.dim()) if d != 1]


def register_reference_kernels():
    """CPU kernels for the CUDA-only ops torch's SyncBatchNorm function calls, with the CUDA
    kernels' meaning (per-channel statistics; invstd = 1 / sqrt(biased var + eps); running
    variance unbiased). For this process only: the test's child processes call it."""
    lib = torch.library.Library("aten", "IMPL")

    def stats(x, eps):
        var, mean = torch.var_mean(x.float(), _dims(x), correction=0)
        return mean, torch.rsqrt(var + eps)

    def gather_stats_with_counts(x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts):
        n = counts.sum()
        mean = (mean_all * counts[:, None]).sum(0) / n
        var = ((invstd_all.pow(-2) - eps + (mean_all - mean).square()) * counts[:, None]).sum(0) / n
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * n / (n - 1), alpha=momentum)
        return mean, torch.rsqrt(var + eps)

    def elemt(x, weight, bias, mean, invstd, eps):
        y = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        if weight is not None:
            y = y * _per_channel(weight, x) + _per_channel(bias, x)
        return y.to(x.dtype)

    def backward_reduce(dy, x, mean, invstd, weight, input_g, weight_g, bias_g):
        sum_dy, sum_dy_xmu = dy.sum(_dims(x)), (dy * (x - _per_channel(mean, x))).sum(_dims(x))
        return sum_dy, sum_dy_xmu, sum_dy_xmu * invstd, sum_dy

    def backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
        n = count.sum()
        centred = x - _per_channel(mean, x)
        dx = dy - _per_channel(sum_dy / n, x) - centred * _per_channel(invstd.square() * sum_dy_xmu / n, x)
        dx = dx * _per_channel(invstd, x)
        return dx if weight is None else dx * _per_channel(weight, x)

    for name, kernel in (
        ("batch_norm_stats", stats),
        ("batch_norm_gather_stats_with_counts", gather_stats_with_counts),
        ("batch_norm_elemt", elemt),
        ("batch_norm_backward_reduce", backward_reduce),
        ("batch_norm_backward_elemt", backward_elemt),
    ):
        lib.impl(name, kernel, "CPU")
    return lib


class HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the ops that make the host wait for a CUDA device: a value read back (item), a
    result whose shape depends on values (nonzero, boolean-mask indexing, masked_select)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        masked = name == "aten.index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        )
        if masked or name in ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select"):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


GLOBAL_BATCH = 7  # split 4 + 3 over two ranks


def _sync_batchnorm(world):
    lib = register_reference_kernels()  # noqa: F841  (the registration lives as long as lib)
    results = {}
    for affine, channels_last in ((True, False), (False, True)):
        torch.manual_seed(0)  # the same global batch, weights and output gradient on every rank
        x = torch.randn(GLOBAL_BATCH, 3, 5, 5) * 3 + 1
        grad = torch.randn_like(x)
        reference = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=affine)
        if affine:
            with torch.no_grad():
                reference.weight.uniform_(0.5, 2)
                reference.bias.uniform_(-1, 1)
        ours = distributed.sync_batchnorm(torch.nn.Sequential(reference), "cuda")[0]
        reference = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=affine)
        reference.load_state_dict(ours.state_dict())
        whole = x.clone().requires_grad_()
        expected = reference(whole)
        expected.backward(grad)

        lo, hi = world.part(GLOBAL_BATCH)
        part = x[lo:hi].clone()
        if channels_last:
            part = part.contiguous(memory_format=torch.channels_last)
        part.requires_grad_()
        with HostSyncs() as syncs:
            out = ours(part)
            out.backward(grad[lo:hi])
        tag = f"affine={affine} channels_last={channels_last}"
        results[tag] = dict(
            out=out.detach(), expected_out=expected[lo:hi].detach(), syncs=syncs.seen,
            grad=part.grad, expected_grad=whole.grad[lo:hi],
            weight_grad=ours.weight.grad if affine else torch.zeros(0),
            expected_weight_grad=reference.weight.grad if affine else torch.zeros(0),
            running=torch.stack([ours.running_mean, ours.running_var]),
            expected_running=torch.stack([reference.running_mean, reference.running_var]),
            tracked=ours.num_batches_tracked.clone(),
        )  # fmt: skip

    # torch's own function on the same input: the detector sees its empty-input mask
    x = torch.randn(4, 3, 5, 5)
    with HostSyncs() as syncs:
        torch.nn.modules._functions.SyncBatchNorm.apply(
            x, None, None, torch.zeros(3), torch.ones(3), 1e-5, 0.1, world.control, world.size
        )
    results["torch"] = dict(syncs=syncs.seen)
    return results


def test_cuda_sync_batchnorm_is_global_batch_norm_without_a_host_sync(tmp_path):
    """Each rank's output and input gradient are the whole batch's BatchNorm2d's rows, the weight
    gradients add up to its, the running statistics are its on both ranks, and no op in forward or
    backward makes the host wait (torch's own function does: its mask)."""
    ranks = run_ranks(tmp_path, _sync_batchnorm)
    for rank in ranks:
        assert "aten.index" in rank.pop("torch")["syncs"]  # the detector works
        for tag, r in rank.items():
            assert r["syncs"] == [], tag
            assert torch.allclose(r["out"], r["expected_out"], atol=1e-5), tag
            assert torch.allclose(r["grad"], r["expected_grad"], atol=1e-5), tag
            assert torch.allclose(r["running"], r["expected_running"], atol=1e-6), tag
            assert r["tracked"].item() == 1, tag
    for tag in ranks[0]:
        summed = ranks[0][tag]["weight_grad"] + ranks[1][tag]["weight_grad"]
        assert torch.allclose(summed, ranks[0][tag]["expected_weight_grad"], atol=1e-4), tag
