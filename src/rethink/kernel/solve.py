"""Exact Gaussian-kernel interpolation: solve (K + lambda I) alpha = Y, predict argmax K_test alpha.

K = exp(-gamma ||x - x'||^2) is built in float64 in one n x n buffer from the Gram matrix
(||x||^2 + ||x'||^2 - 2 x.x'), the ridge added to its diagonal, and Cholesky-factorised in that
same buffer: the buffer is handed to LAPACK/cuSOLVER as its column-major view (K is symmetric, so
K.mT is K), which is what lets `cholesky_ex(out=...)` work in place instead of copying to
column-major first (measured: a C-ordered `out` costs one extra n x n copy). The system is then
solved by two triangular solves on that factor, in place on the n x classes right-hand side
(`torch.cholesky_solve` clones the factor: measured on CPU, and the same on CUDA). So the
n = 60,000 MNIST system needs its 28.8 GB once, not twice. The memory a system needs is checked
before anything n x n is allocated.
"""

import dataclasses
import pathlib

import torch

from rethink.errors import RethinkError
from rethink.progress import Progress, Step

BYTES = 8  # float64


def pick_device(device):
    """`auto`: CUDA when present, else CPU; `cuda` without a GPU is an error, not a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RethinkError("kernel device 'cuda' was asked for but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(device)


def features_bytes(n_train, n_test, dim):
    """The train and test features (float64), held from featurisation to the end."""
    return BYTES * (n_train + n_test) * dim


def bytes_needed(n_train, n_test, dim, batch, featurise=0):
    """Peak bytes of a row: the features, and besides them the larger of featurisation's
    transient bytes (`featurise`, features.batching) and the solve's float64 K (n x n), one block
    of kernel rows for prediction and the n x classes right-hand side (counted as n x 1000)."""
    solve_part = BYTES * (n_train * n_train + batch * n_train + n_train * 1000)
    return features_bytes(n_train, n_test, dim) + max(featurise, solve_part)


def bytes_available(device):
    """Free GPU memory; on CPU the node's available memory, or less where this process's memory
    cgroup allows less (Slurm confines a job to its mem_mb so: beyond it the job is killed)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    node = int(psutil.virtual_memory().available)
    confined = cgroup_memory_left()
    return node if confined is None else min(node, confined)


# cgroup v2 and v1: (folder under the mount, limit file, usage file, memory.stat's reclaimable key)
CGROUP_FILES = {"v2": ("", "memory.max", "memory.current", "inactive_file"),
                "v1": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}  # fmt: skip
NO_LIMIT = 2**62  # v1 says "no limit" with a page-aligned number near 2^63, v2 with "max"


def cgroup_memory_left(proc_cgroup="/proc/self/cgroup", mount="/sys/fs/cgroup"):
    """The bytes this process's memory cgroup and those above it still allow (limit less usage,
    its inactive page cache counted as free, as the kernel reclaims it before killing), or None
    where none sets a limit. A cgroup namespace (a container) mounts the process's own cgroup at
    the mount point: then the folders above its path that exist are the ones read."""
    left = []
    for line in pathlib.Path(proc_cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        version = "v2" if controllers == "" else "v1" if "memory" in controllers.split(",") else None
        if version is None:
            continue
        sub, limit_file, usage_file, reclaimable = CGROUP_FILES[version]
        base = pathlib.Path(mount, sub)
        folder = base / path.lstrip("/")
        for d in (folder, *(base / above for above in folder.relative_to(base).parents)):
            try:
                limit, usage = (d / limit_file).read_text().strip(), int((d / usage_file).read_text())
                stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
            if limit != "max" and int(limit) < NO_LIMIT:
                left.append(max(0, int(limit) - usage + int(stat.get(reclaimable, 0))))
    return min(left) if left else None


def check_memory(n_train, n_test, dim, batch, device, featurise=0, available=None):
    """Refuse a row that does not fit, before allocating anything, naming n and both byte counts.
    `available`: the bytes_available(device) the caller sized featurisation from, if it did."""
    needed = bytes_needed(n_train, n_test, dim, batch, featurise)
    available = bytes_available(device) if available is None else available
    if needed > available:
        raise RethinkError(
            f"the kernel system with n = {n_train} training points ({n_test} test, {dim} features) needs "
            f"{needed:,} bytes ({needed / 2**30:.1f} GiB) of {device.type} memory (the features, and "
            f"featurisation steps of {featurise / 2**30:.1f} GiB, then K in float64), but only "
            f"{available:,} bytes ({available / 2**30:.1f} GiB) are available; use a subset "
            "(datasets.<name>.subset), a GPU or a node with more memory (kernel.rows.<row>.device, mem_mb)"
        )
    return needed, available


def sq_norms(x):
    return (x * x).sum(dim=1)


def gaussian_block(a, b, b_sq, gamma, out=None):
    """exp(-gamma ||a_i - b_j||^2) for rows a_i of `a` and b_j of `b`, written into `out`
    (allocated when None) with no temporary of its size."""
    out = torch.mm(a, b.T, out=out)
    out.mul_(2 * gamma).sub_(gamma * sq_norms(a)[:, None]).sub_(gamma * b_sq[None, :])
    return out.clamp_(max=0.0).exp_()  # a rounded-up distance below 0 must not give a value above 1


def median_gamma(x, samples):
    """1 / the median squared distance over all pairs of the first `samples` training points
    (the bandwidth heuristic of the featurised rows; deterministic, no random draw)."""
    head = x[:samples]
    d2 = torch.cdist(head, head).square()
    pairs = d2[torch.triu_indices(len(head), len(head), offset=1, device=head.device).unbind()]
    median = float(pairs.median())
    if not median > 0:
        raise RethinkError(f"the first {len(head)} training points are all identical: no bandwidth can be derived")
    return 1.0 / median


@dataclasses.dataclass
class Solution:
    alpha: torch.Tensor  # n x classes
    gamma: float
    l2: float
    rkhs_norm: float  # sqrt(trace(alpha^T K alpha)), K without the ridge
    alpha_norm: float  # Frobenius norm of alpha


def _wait(device):
    """Let the host wait for the device's queued work, so that a step's time and count are its work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def solve(x, y_onehot, gamma, l2, buffer):
    """Fit alpha for (K + l2 I) alpha = Y, building and factorising K inside `buffer` (n x n,
    float64, overwritten). x: n x p float64 on the buffer's device. K is one matrix product and
    the factorisation one LAPACK/cuSOLVER call: each is logged as a step, the factorisation with an
    estimate of its time from its n^3 / 3 flop at the rate the product of K's 2 n^2 p flop ran."""
    n, p = x.shape
    with Step(f"K: {n} x {n} float64 ({BYTES * n * n / 1e9:.2f} GB) from {p} features") as build:
        gaussian_block(x, x, sq_norms(x), gamma, out=buffer)
        buffer.diagonal().fill_(1.0 + l2)  # the exact diagonal, plus the ridge
        _wait(buffer.device)
    flop = n**3 / 3
    estimate = flop * build.seconds / (2 * n * n * p)
    column_major = buffer.mT
    info = torch.empty((), dtype=torch.int32, device=buffer.device)
    with Step(f"Cholesky of K + {l2:g} I: n = {n}, n^3 / 3 = {flop:.3g} flop", estimate):
        torch.linalg.cholesky_ex(column_major, out=(column_major, info))
        failed = int(info)  # waits for the device
    if failed != 0:
        raise RethinkError(
            f"the kernel matrix (n = {n}, gamma = {gamma:g}, l2 = {l2:g}) is not positive definite in float64 "
            f"(Cholesky failed at column {failed}): two training points are identical or nearly so at this "
            "bandwidth; use l2 > 0 or a larger gamma"
        )
    # L L^T alpha = Y: L z = Y, then L^T alpha = z, both written over one copy of Y. L is the
    # factor's column-major view and L^T its row-major one: solve_triangular borrows either as it is.
    alpha = y_onehot.clone()
    torch.linalg.solve_triangular(column_major, alpha, upper=False, out=alpha)
    torch.linalg.solve_triangular(column_major.mT, alpha, upper=True, out=alpha)
    # trace(alpha^T K alpha) = trace(alpha^T (Y - l2 alpha)), since (K + l2 I) alpha = Y: no K needed
    quad = float((alpha * y_onehot).sum() - l2 * (alpha * alpha).sum())
    return Solution(alpha, gamma, l2, max(quad, 0.0) ** 0.5, float(alpha.norm()))


def predict(x_new, x_train, solution, batch, what="points"):
    """K(x_new, x_train) alpha, block by block (`batch` rows at a time); `what` names x_new in the
    progress lines."""
    train_sq = sq_norms(x_train)
    block = torch.empty(min(batch, len(x_new)), len(x_train), dtype=x_train.dtype, device=x_train.device)
    parts = []
    with Progress(f"predict {what}", len(x_new), "rows") as bar:
        for start in range(0, len(x_new), batch):
            rows = x_new[start : start + batch]
            parts.append(
                gaussian_block(rows, x_train, train_sq, solution.gamma, out=block[: len(rows)]) @ solution.alpha
            )
            _wait(block.device)
            bar.update(len(rows))
    return torch.cat(parts)
