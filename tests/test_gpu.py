"""The CUDA path: fitting, resume, packs, compiled (CUDA-graph) steps, no host sync in a step,
nvJPEG decoding, SyncBatchNorm. Skipped without a CUDA GPU; `make gpu-check OUT=dir` runs them
with the GPU benchmark. Their CPU halves: test_compile.py, test_distributed.py, test_stream.py.

Tolerances: bf16 autocast and cuDNN's autotuned kernels are not bit-reproducible, so CUDA runs are
compared with each other within 0.02 absolute on losses and 0.03 on accuracies after a few epochs,
and must agree on the stop reason."""

import io
import json

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from rethink.train import checkpoint, distributed, loop, stream
from rethink.train.loop import Job, train

from conftest import PATIENCE_S, freeze, log_match, sigterm_pending, wait_until
from test_train import make_cell, read_history, write_split

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
LOSS_TOL, ACC_TOL = 0.02, 0.03


@pytest.fixture
def data(tmp_path):
    return [write_split(tmp_path / "train.h5", 512, (3, 28, 28), "train", 1)], [
        write_split(tmp_path / "test.h5", 128, (3, 28, 28), "test", 2)
    ]


def cuda_cell(arch="mlp_1x512", **hp):
    return make_cell(arch, **dict(dict(device="cuda", batch_size=64, max_epochs=4), **hp))


def close(a, b):
    """Histories of two CUDA runs agree within the stated tolerances, row by row."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for key, tol in (
            ("train_loss", LOSS_TOL),
            ("test_loss", LOSS_TOL),
            ("train_acc", ACC_TOL),
            ("test_acc", ACC_TOL),
            ("train_avg_loss", LOSS_TOL),
            ("train_avg_acc", ACC_TOL),
        ):
            if ra[key] != "" or rb[key] != "":
                assert abs(float(ra[key]) - float(rb[key])) <= tol, (key, ra, rb)


def run(tmp_path, data, cells, tag, **kwargs):
    jobs = [Job(c, *data, tmp_path / tag / str(i), tmp_path / tag / f"{i}.pt") for i, c in enumerate(cells)]
    summaries = train(jobs, echo=False, **kwargs)
    return summaries, [read_history(j.out_dir / "history.csv") for j in jobs]


def test_a_cuda_cell_fits_random_labels(tmp_path, data):
    for arch, width, lr in (("mlp_1x512", 1.0, 0.01), ("inception", 0.25, 0.1)):
        (summary,), _ = run(tmp_path, data, [cuda_cell(arch, width=width, lr=lr, max_epochs=60)], arch)
        assert summary["stop_reason"] == "fit_threshold" and summary["device"] == "cuda", summary


def test_sigterm_and_resume_on_cuda_match_an_uninterrupted_run(tmp_path, data):
    import os
    import signal
    import subprocess
    import sys

    cell = cuda_cell("alexnet", width=0.25, max_epochs=6)

    def entry(tag):
        return [{"cell": cell, "train": data[0], "test": data[1], "out_dir": str(tmp_path / tag),
                 "checkpoint": str(tmp_path / f"{tag}.pt")}]  # fmt: skip

    proc = subprocess.Popen(
        [sys.executable, "-m", "rethink.train", "--pack", json.dumps(entry("resumed"))],
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "resumed" / "train.log"
    wait_until(lambda: log_match(log, r"epoch +2 step"), "epoch 2 in train.log", proc)
    # frozen before the signal, so a fast GPU cannot finish the last epochs first
    freeze([proc.pid], proc)
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: sigterm_pending(proc.pid) is not False, "the SIGTERM to be pending", proc)
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=PATIENCE_S) == 128 + signal.SIGTERM
    assert not checkpoint.is_finished(torch.load(tmp_path / "resumed.pt", weights_only=True))
    resumed = [sys.executable, "-m", "rethink.train", "--pack", json.dumps(entry("resumed"))]
    assert subprocess.run(resumed, timeout=PATIENCE_S).returncode == 0
    _, (straight,) = run(tmp_path, data, [cell], "straight")
    close(read_history(tmp_path / "resumed" / "history.csv"), straight)


def test_a_pack_on_cuda_equals_its_cells_alone(tmp_path, data):
    cells = [cuda_cell(seed=s, dropout=0.3 * (s % 2), random_crop=bool(s % 2)) for s in range(3)]
    _, packed = run(tmp_path, data, cells, "pack")
    for i, cell in enumerate(cells):
        _, (alone,) = run(tmp_path, data, [cell], f"alone{i}")
        close(packed[i], alone)


def graphs_used():
    """What was compiled since the counters were cleared ran as CUDA graphs: inductor skips a graph it
    cannot capture (or re-records too often) silently, counting it in cudagraph_skips (torch 2.11
    and 2.13)."""
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_step_equals_the_eager_one(tmp_path, data, mode, dropout):
    """With dropout, the step's graphs stop at the draw from the cell's generator (made eagerly,
    test_compile.py); the graphs around it are captured all the same."""
    cell = cuda_cell("alexnet", width=0.25, dropout=dropout)
    (eager,), (eager_h,) = run(tmp_path, data, [cell], "eager")
    torch._dynamo.reset()
    counters.clear()
    (compiled,), (compiled_h,) = run(tmp_path, data, [cell], mode, compile_mode=mode)
    if mode == "reduce-overhead":
        graphs_used()
    close(eager_h, compiled_h)
    assert eager["stop_reason"] == compiled["stop_reason"]


def test_an_lr_change_takes_effect_inside_a_graphed_step():
    dev = torch.device("cuda")
    cell = cuda_cell()
    model, opt, lr, _, amp, fmt = loop.setup(cell, (3, 28, 28), 10, dev)
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(loop.sgd_step, mode="reduce-overhead")
    x, y = torch.randn(64, 3, 28, 28, device=dev), torch.randint(0, 10, (64,), device=dev)
    for _ in range(3):  # warm-up and capture
        step(model, opt, x, y, amp, fmt)
    weight = next(model.parameters())
    before = weight.detach().clone()
    lr.fill_(0.0)
    step(model, opt, x, y, amp, fmt)
    assert torch.equal(weight.detach(), before)  # lr 0: the replayed graph read the new value
    lr.fill_(0.5)
    step(model, opt, x, y, amp, fmt)
    assert not torch.equal(weight.detach(), before)
    graphs_used()


def test_no_host_sync_inside_a_training_step(tmp_path, data):
    jobs = [
        Job(
            cuda_cell("alexnet", width=0.25, random_crop=True, augment=True, dropout=0.3),
            *data,
            tmp_path / "o",
            tmp_path / "c.pt",
        )
    ]
    cache = loop.SplitCache(torch.device("cuda"))
    member = loop.Member(
        jobs[0],
        "key",
        None,
        (cache.get(data[0], "train", jobs[0].cell), cache.get(data[1], "test", jobs[0].cell)),
        torch.device("cuda"),
    )
    member.train_step()  # the epoch's draw and the warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(member.steps_per_epoch - 2):  # every step but the epoch's last (one sync there)
            member.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def smooth_jpeg(rng, height, width, subsampling):
    """A JPEG of a smooth colour field (bilinear blend of random corner colours in 64..192, at least
    128 pixels apart: at most one level per pixel), so that decoders differ only by rounding."""
    from PIL import Image

    corners = rng.uniform(64, 192, (2, 2, 3))
    v, u = np.linspace(0, 1, height)[:, None, None], np.linspace(0, 1, width)[None, :, None]
    top, bottom = corners[0, 0] * (1 - u) + corners[0, 1] * u, corners[1, 0] * (1 - u) + corners[1, 1] * u
    pixels = np.round(top * (1 - v) + bottom * v).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, subsampling=subsampling)
    return np.frombuffer(out.getvalue(), dtype=np.uint8)


# JPEG decoders may round the inverse DCT and the YCbCr -> RGB conversion differently (libjpeg-turbo,
# which Pillow uses, in integer arithmetic; nvJPEG its own), about one level each; 4:2:0 chroma may be
# interpolated differently too, which at one level per pixel moves a colour by about two levels more.
# Stated bounds, not measured ones: no GPU has run this yet.
DECODE_TOL = {0: (0.5, 3), 2: (1.0, 6)}  # subsampling (Pillow: 0 = 4:4:4, 2 = 4:2:0) -> (mean, max) levels


@pytest.mark.parametrize("subsampling", sorted(DECODE_TOL))
def test_nvjpeg_decodes_smooth_images_as_pillow_does(subsampling):
    rng = np.random.default_rng(subsampling)
    blobs = [smooth_jpeg(rng, int(h), int(w), subsampling) for h, w in rng.integers(128, 480, (16, 2))]
    on_gpu = stream.decode(blobs, torch.device("cuda"))
    on_cpu = stream.decode(blobs, torch.device("cpu"))
    mean_tol, max_tol = DECODE_TOL[subsampling]
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype == torch.uint8
        diff = (gpu.cpu().int() - cpu.int()).abs()
        assert diff.float().mean() <= mean_tol and diff.max() <= max_tol, (diff.float().mean(), diff.max())


def test_cuda_sync_batchnorm_has_no_host_sync_and_is_batch_norm(tmp_path):
    """One NCCL process: the forward and backward of distributed.SyncBatchNorm (torch's kernels,
    without the empty-input mask) under sync debug mode "error", equal to BatchNorm2d's."""
    import torch.distributed as dist

    dev = torch.device("cuda")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        reference = torch.nn.BatchNorm2d(8).to(dev)
        ours = distributed.sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(8)), "cuda")[0].to(dev)
        x = (torch.randn(16, 8, 12, 12, device=dev) * 3 + 1).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(x)
        mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours(mine)  # warm-up: NCCL's communicator and the allocator
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = ours(mine)
            out.backward(grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        expected = reference(theirs)
        expected.backward(grad)
        reference(theirs)  # the same two updates of the running statistics
        assert torch.allclose(out, expected, atol=1e-4) and torch.allclose(mine.grad, theirs.grad, atol=1e-4)
        assert torch.allclose(ours.running_mean, reference.running_mean, atol=1e-5)
        assert torch.allclose(ours.running_var, reference.running_var, atol=1e-4)
    finally:
        dist.destroy_process_group()


def test_the_kernel_solve_on_cuda_holds_one_n_by_n_buffer_and_matches_the_cpu():
    """Section 5's solve on CUDA: K built and factorised in its one n x n buffer (nothing else of
    that size: cuSOLVER's workspace and the n x classes right-hand side are small), and the same
    solution as on the CPU up to float64 rounding amplified by K's condition number."""
    from rethink.kernel import solve

    n, gamma = 3000, 0.02
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 784, generator=generator, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=generator), 10).double()
    on_cpu = solve.solve(x, y, gamma, 0.0, torch.empty(n, n, dtype=torch.float64))
    dev = torch.device("cuda")
    xg, yg, buffer = x.to(dev), y.to(dev), torch.empty(n, n, dtype=torch.float64, device=dev)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    on_cuda = solve.solve(xg, yg, gamma, 0.0, buffer)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < n * n * 8 / 4, f"the solve allocated {extra:,} bytes beside its {n * n * 8:,}-byte buffer"
    scale = float(on_cpu.alpha.abs().max())
    assert float((on_cuda.alpha.cpu() - on_cpu.alpha).abs().max()) <= 1e-6 * scale
    fitted = solve.predict(xg, xg, on_cuda, batch=512)
    assert float((fitted - yg).abs().max()) < 1e-6  # exact interpolation on CUDA too
