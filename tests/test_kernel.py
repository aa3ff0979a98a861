"""Section 5 (kernel interpolation, Table 3) and Appendix C (Theorem 1): the solver, the
featurisers and the construction on small n, their config errors, and the kernel stage through
the real snakemake CLI on the session's finished tiny run (its clean synthetic shards)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rethink import config as rconfig
from rethink import plan
from rethink.errors import ConfigError, RethinkError
from rethink.kernel import features, solve, theorem1

from conftest import CONFIG, SCHEMA, Workflow

CPU = torch.device("cpu")


def points(n, dim=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return x, torch.nn.functional.one_hot(labels, 10).double()


def dense_kernel(x, gamma):
    return torch.exp(-gamma * torch.cdist(x, x).square())


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_the_solve_factorises_in_its_buffer_and_solves_the_system(l2):
    x, y = points(300)
    buffer = torch.empty(300, 300, dtype=torch.float64)
    solution = solve.solve(x, y, 0.5, l2, buffer)
    k = dense_kernel(x, 0.5)
    factor = buffer.mT.tril()  # the Cholesky factor, written over K in the one n x n buffer
    torch.testing.assert_close(factor @ factor.T, k + l2 * torch.eye(300, dtype=torch.float64))
    torch.testing.assert_close((k + l2 * torch.eye(300, dtype=torch.float64)) @ solution.alpha, y)
    # the reported norm is sqrt(trace(alpha^T K alpha)) of K without the ridge
    assert solution.rkhs_norm == pytest.approx(float(torch.trace(solution.alpha.T @ k @ solution.alpha)) ** 0.5)
    fitted = solve.predict(x, x, solution, batch=64)  # block by block, as for the test set
    if l2 == 0:
        assert float((fitted - y).abs().max()) < 1e-8  # exact interpolation
    else:
        torch.testing.assert_close(fitted, y - l2 * solution.alpha)


def largest_allocation(fn):
    """The largest single CPU allocation (bytes) torch makes while fn runs (the profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events()), default=0)


def test_the_solve_makes_no_n_by_n_copy_and_matches_cholesky_solve():
    n = 400
    x, y = points(n)
    buffer = torch.empty(n, n, dtype=torch.float64)
    allocated = largest_allocation(lambda: solve.solve(x, y, 0.5, 0.0, buffer))
    assert allocated < n * n * 8 / 4  # n x classes and n-vectors only; K lives in the given buffer
    solution = solve.solve(x, y, 0.5, 0.0, buffer)
    # the previous solver, on the same factor: one copy of it is what the in-place solve avoids
    assert largest_allocation(lambda: torch.cholesky_solve(y, buffer.mT)) >= n * n * 8
    # both are backward-stable solves on one factor: they differ by at most ~cond(K) eps |alpha|
    bound = torch.linalg.cond(dense_kernel(x, 0.5)) * torch.finfo(torch.float64).eps * solution.alpha.abs().max()
    torch.testing.assert_close(solution.alpha, torch.cholesky_solve(y, buffer.mT), rtol=0, atol=float(bound))


def test_identical_points_with_different_labels_are_a_clear_error_without_a_ridge():
    x, y = points(3)  # the first two identical: K's second pivot is exactly 0
    x[1] = x[0]
    buffer = torch.empty(3, 3, dtype=torch.float64)
    with pytest.raises(RethinkError, match="not positive definite.*use l2 > 0"):
        solve.solve(x, y, 0.5, 0.0, buffer)
    solve.solve(x, y, 0.5, 0.01, buffer)  # the ridge makes it solvable


def test_a_system_that_does_not_fit_in_memory_is_refused_naming_n_and_bytes():
    with pytest.raises(RethinkError) as err:
        solve.check_memory(10_000_000, 1000, 784, 1024, CPU)
    message = str(err.value)
    assert "n = 10000000" in message and f"{solve.bytes_needed(10_000_000, 1000, 784, 1024):,} bytes" in message
    assert "available" in message
    needed, available = solve.check_memory(1000, 100, 784, 1024, CPU)
    assert needed == 8 * (1000**2 + 1100 * 784 + 1024 * 1000 + 1000 * 1000) and available > needed


SETTINGS = {
    "scattering": {"J": 2, "L": 4, "max_order": 2},
    "random_conv": {"filters": 16, "size": 3, "pool": "avg", "pool_grid": 2, "seed": 0},
}


def cgroup(folder, limit, usage, stat):
    """A memory cgroup's files, v1's names where the folder is under a `memory` mount, else v2's."""
    names = (
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
        if "memory" in folder.parts
        else ("memory.max", "memory.current")
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip((*names, "memory.stat"), (limit, usage, stat)):
        (folder / name).write_text(f"{text}\n")


def test_the_memory_at_hand_on_cpu_is_what_the_jobs_memory_cgroup_still_allows(tmp_path):
    """Slurm confines a job to its mem_mb by a memory cgroup (v2 on current sites, v1 on older
    ones): the least that it and the cgroups above it allow, inactive page cache counted free."""
    proc = tmp_path / "cgroup"
    v2 = tmp_path / "v2"
    proc.write_text("0::/slurm/uid_0/job_7/step_0\n")
    cgroup(v2 / "slurm/uid_0/job_7", 6 * 2**30, 2 * 2**30, "anon 1\ninactive_file 1073741824")
    cgroup(v2 / "slurm/uid_0/job_7/step_0", "max", 2 * 2**30, "inactive_file 0")
    assert solve.cgroup_memory_left(proc, v2) == 5 * 2**30  # the job's limit, 1 GiB of it cache
    cgroup(v2 / "slurm", 3 * 2**30, 2 * 2**30, "inactive_file 0")  # a tighter one above it
    assert solve.cgroup_memory_left(proc, v2) == 2**30
    # v1 in a container: the process's own cgroup is the mount itself; the path is not below it
    v1 = tmp_path / "v1"
    proc.write_text("4:memory:/process_api/7dba1f\n3:cpuset:/\n0::/\n")
    cgroup(v1 / "memory", 4 * 2**30, 5 * 2**30, "total_inactive_file 1610612736")
    assert solve.cgroup_memory_left(proc, v1) == 2**29
    cgroup(v1 / "memory", 9223372036854771712, 5 * 2**30, "total_inactive_file 0")  # v1's no limit
    assert solve.cgroup_memory_left(proc, v1) is None
    cgroup(v1 / "memory", 4 * 2**30, 5 * 2**30, "total_inactive_file 0")  # over its limit: nothing
    assert solve.cgroup_memory_left(proc, v1) == 0
    proc.write_text("1:cpu:/\n")  # no memory controller
    assert solve.cgroup_memory_left(proc, v1) is None


@pytest.mark.parametrize("name", features.NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8)])
def test_each_featuriser_gives_its_declared_dimension_in_float64(name, shape):
    images = torch.randint(0, 256, (5, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    steps = features.batching(name, SETTINGS, shape, cap=2, available=10**9)
    out = features.featurise(name, SETTINGS, images, steps, device=CPU)
    assert out.dtype == torch.float64 and out.shape == (5, features.feature_dim(name, SETTINGS, shape))
    if name == "raw":
        assert float(out.max()) <= 1.0 and torch.equal(out[0], images[0].flatten().double() / 255)


PAPER_CONV = {"random_conv": {"filters": 32_000, "size": 5, "pool": "avg", "pool_grid": 1, "seed": 0}}
CIFAR = (3, 32, 32)


@pytest.mark.parametrize("gib", [80, 141, 1000])
def test_random_conv_batches_are_sized_from_the_memory_at_hand(gib):
    """The paper's 32,000 filters on CIFAR-10: 1,024 images' maps (kernel.batch) are 96 GiB."""
    available = gib * 2**30
    steps = features.batching("random_conv", PAPER_CONV, CIFAR, cap=1024, available=available)
    budget = available * features.FEATURISE_SHARE
    assert steps.filters == 32_000 and steps.bytes <= budget
    one_more = features.batching("random_conv", PAPER_CONV, CIFAR, cap=steps.images + 1, available=available)
    assert steps.images == 1024 or one_more.images == steps.images  # as many images as fit, up to the cap
    assert steps.bytes >= 32_000 * 28 * 28 * 4 * steps.images  # every image's maps are counted
    assert (steps.images < 1024) == (gib < 200)


def test_random_conv_takes_filters_in_chunks_when_one_image_does_not_fit():
    one_image = features.batching("random_conv", PAPER_CONV, CIFAR, cap=1024, available=2**40).bytes // 1024
    steps = features.batching("random_conv", PAPER_CONV, CIFAR, cap=1024, available=one_image)
    assert steps.images == 1 and 32_000 * features.FEATURISE_SHARE - 50 < steps.filters < 32_000 / 2
    assert steps.bytes <= one_image * features.FEATURISE_SHARE
    # not even one filter's map fits: the smallest step, which the memory check refuses with its bytes
    tiny = features.batching("random_conv", PAPER_CONV, CIFAR, cap=1024, available=1000)
    assert (tiny.images, tiny.filters) == (1, 1)
    with pytest.raises(RethinkError, match=r"featurisation steps of .* GiB.*only 1,000,000 bytes"):
        solve.check_memory(10, 10, 32_000, 16, CPU, featurise=tiny.bytes, available=10**6)


def test_the_memory_check_counts_featurisation_when_it_needs_more_than_the_solve():
    solve_part = solve.bytes_needed(1000, 100, 32_000, 64) - solve.features_bytes(1000, 100, 32_000)
    assert solve.bytes_needed(1000, 100, 32_000, 64, featurise=10 * solve_part) == (
        solve.features_bytes(1000, 100, 32_000) + 10 * solve_part
    )
    assert solve.bytes_needed(1000, 100, 32_000, 64, featurise=solve_part // 2) == solve.bytes_needed(
        1000, 100, 32_000, 64
    )


def peak_live_bytes(fn):
    """The most CPU memory torch held at once while fn ran (allocations less frees, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("available", [10**9, 2 * 10**6, 3 * 10**5], ids=["whole", "some-images", "filter-chunks"])
def test_a_featurisation_step_holds_no_more_than_its_counted_bytes(pool, available):
    settings = {"random_conv": dict(SETTINGS["random_conv"], filters=64, size=5, pool=pool)}
    images = torch.randint(0, 256, (20, *CIFAR), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    steps = features.batching("random_conv", settings, CIFAR, cap=8, available=available)
    if available == 3 * 10**5:
        assert steps.images == 1 and steps.filters < 64
    peak = peak_live_bytes(lambda: features.featurise("random_conv", settings, images, steps, CPU))
    # besides the step: the N x D float64 features, the filter bank (drawn, then normalised)
    held = images.shape[0] * features.feature_dim("random_conv", settings, CIFAR) * 8 + 2 * 64 * 3 * 5 * 5 * 4
    assert steps.bytes / 2 < peak - held <= steps.bytes  # measured on CPU: 0.96-0.99 of the count


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_chunked_random_conv_features_equal_whole_ones(pool):
    settings = {"random_conv": dict(SETTINGS["random_conv"], pool=pool)}  # 16 3x3x3 filters, 2 x 2 pooling
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    whole = features.featurise("random_conv", settings, images, features.Batching(5, 16, 0), CPU)
    # each filter's map is computed alone either way: filter chunks change nothing, bit for bit
    for chunk in (1, 5, 8):
        assert torch.equal(
            features.featurise("random_conv", settings, images, features.Batching(5, chunk, 0), CPU), whole
        )
    # another image batch may make oneDNN pick another convolution algorithm: float32 rounding of each
    # k = 27-term dot product of pixels in [0, 1] with a unit-norm filter, at most k * eps * sqrt(k)
    for batch, chunk in ((2, 16), (1, 1), (2, 5)):
        smaller = features.featurise("random_conv", settings, images, features.Batching(batch, chunk, 0), CPU)
        torch.testing.assert_close(smaller, whole, rtol=0, atol=27**1.5 * torch.finfo(torch.float32).eps)


def test_random_filters_come_from_their_seed():
    first = features.random_filters(SETTINGS["random_conv"], 3)
    assert torch.equal(first, features.random_filters(SETTINGS["random_conv"], 3))
    other = features.random_filters(dict(SETTINGS["random_conv"], seed=1), 3)
    assert not torch.equal(first, other)
    torch.testing.assert_close(first.flatten(1).norm(dim=1), torch.ones(16))


def test_theorem1_fits_random_labels_with_2n_plus_d_weights():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 5)), rng.standard_normal(300)
    network, matrix = theorem1.construct(x, y, seed=0)
    assert network.n_weights == 2 * 300 + 5
    assert np.array_equal(matrix, np.tril(matrix)) and (np.diag(matrix) > 0).all()
    np.testing.assert_allclose(network(x), y, atol=1e-6)
    row = theorem1.verify(x, y, seed=0)
    assert row["weights"] == 605 and row["max_residual"] < 1e-6 and row["lower_triangular"]
    assert row["condition_number"] >= np.linalg.cond(matrix, 1) / 10  # LAPACK's estimate is within a factor


def test_theorem1_refuses_points_that_are_not_distinct():
    x = np.random.default_rng(0).standard_normal((10, 3))
    x[7] = x[2]
    with pytest.raises(RethinkError, match="points (2 and 7|7 and 2).*distinct"):
        theorem1.construct(x, np.arange(10.0), seed=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["kernel"]["rows"]["r"].update(dataset="nope"),
            r"kernel.rows.r.dataset: 'nope' is not a configured",
        ),
        (lambda c: c["kernel"]["rows"]["r"].update(features="gabor"), r"kernel.rows.r.features: 'gabor' is not one of"),
        (lambda c: c["kernel"]["rows"]["r"].update(gamma=-1), r"kernel.rows.r.gamma"),
        (lambda c: c["kernel"]["rows"]["r"].update(l2=[-0.1]), r"kernel.rows.r.l2\[0\]: -0.1 is less than"),
        (lambda c: c["theorem1"].update(dataset_sizes=[10]), r"theorem1.dataset_sizes: \[10\] needs theorem1.dataset"),
    ],
)
def test_bad_kernel_config_is_an_error_naming_the_key(tmp_path, change, message):
    config = json.loads(json.dumps(CONFIG)) | {
        "kernel": {"rows": {"r": {"dataset": "synth", "features": "raw"}}},
        "theorem1": {"enabled": True},
    }
    plan.Plan(rconfig.validate(json.loads(json.dumps(config)), SCHEMA))  # the unchanged config is valid
    change(config)
    with pytest.raises(ConfigError, match=message):
        plan.Plan(rconfig.validate(config, SCHEMA))


# ----------------------------------------------------------------------------- the workflow

KERNEL = {
    "batch": 16,
    "median_samples": 32,
    "scattering": {"J": 1, "L": 4, "max_order": 2},
    "random_conv": {"filters": 32, "size": 3, "pool": "avg", "pool_grid": 2, "seed": 0},
    "rows": {
        "synth_raw": {"dataset": "synth", "features": "raw", "gamma": "median", "l2": [0.0, 0.01], "device": "cpu"},
        "synth_scattering": {"dataset": "synth", "features": "scattering", "gamma": "median", "device": "cpu"},
        "synth_random_conv": {"dataset": "synth", "features": "random_conv", "gamma": "median", "device": "cpu"},
    },
}
THEOREM1 = {"enabled": True, "sizes": [50, 200], "dim": 4, "dataset": "synth", "dataset_sizes": [64], "seed": 0}
KERNEL_JOBS = {"kernel_row": 3, "kernel_aggregate": 1, "kernel_theorem1": 1, "table": 1}


@pytest.fixture(scope="module")
def kernel_run(finished, tmp_path_factory):
    """The finished tiny run with kernel rows and Theorem 1 added to its config, run to completion."""
    source, _, _ = finished
    wf = Workflow(tmp_path_factory.mktemp("kernel") / "wf", source=source)
    config = wf.write_config(CONFIG | {"kernel": KERNEL, "theorem1": THEOREM1})  # same name: same provenance
    planned = wf.planned_jobs("--configfile", config)[0]
    wf.run("--configfile", config, "-c2")
    return wf, config, planned


@pytest.mark.workflow
def test_the_kernel_stage_runs_from_the_clean_shards_without_training(kernel_run):
    wf, _, planned = kernel_run
    # the new steps, the claims check (it now reads kernel.csv) and nothing else: no data job, no training
    assert planned == {**KERNEL_JOBS, "analysis_claims": 1, "all": 1}
    kernel = pd.read_csv(wf.root / "results/metrics/kernel.csv")
    assert sorted(zip(kernel["row"], kernel["l2"])) == [
        ("synth_random_conv", 0.0), ("synth_raw", 0.0), ("synth_raw", 0.01), ("synth_scattering", 0.0)
    ]  # fmt: skip
    exact = kernel[kernel["l2"] == 0]
    assert (exact["train_error"] == 0).all() and (exact["max_train_residual"] < 1e-6).all()
    assert (
        (kernel["n_train"] == 64).all() and (kernel["n_test"] == 32).all() and (kernel["source"] == "synthetic").all()
    )
    assert (kernel["test_error"] < 0.5).all()  # the synthetic classes are separable: far from chance (0.9)
    assert (kernel["rkhs_norm"] > 0).all() and (kernel["gamma"] > 0).all()
    ridge = kernel[kernel["l2"] > 0].iloc[0]
    assert ridge["max_train_residual"] > 1e-4  # a ridge solution does not interpolate

    table = pd.read_csv(wf.root / "results/tables/table3.csv")
    assert list(table["test error (paper)"].dropna()) == [1.2, 0.6, 46.0, 17.0, 15.0]  # the paper's rows stay
    assert set(table["dataset"]) >= {"synth", "mnist", "cifar10"}
    claim = next(
        c for c in json.loads((wf.root / "results/claims.json").read_text())["claims"] if c["id"].startswith("kernel")
    )
    assert claim["verdict"] == "pass" and "synth_raw" in claim["detail"]

    proof = pd.read_csv(wf.root / "results/theorem1.csv")
    assert list(zip(proof["data"], proof["n"], proof["d"])) == [
        ("random", 50, 4),
        ("random", 200, 4),
        ("synth", 64, 64),
    ]
    assert (proof["weights"] == 2 * proof["n"] + proof["d"]).all()
    assert (proof["relative_residual"] < 1e-6).all() and proof["lower_triangular"].all()


@pytest.mark.workflow
def test_a_finished_kernel_stage_is_up_to_date_and_reruns_when_its_code_changes(kernel_run, tmp_path):
    source, config, _ = kernel_run
    assert source.planned_jobs("--configfile", config) == ({}, set())
    wf = Workflow(tmp_path / "wf", source=source)
    solver = wf.root / "src/rethink/kernel/solve.py"
    solver.write_text(solver.read_text() + "\nEDITED = True  # an edit (a comment alone reruns nothing)\n")
    counts, cells = wf.planned_jobs("--configfile", wf.root / "config" / config.name)
    assert counts == {**KERNEL_JOBS, "analysis_claims": 1, "all": 1} and cells == set()
    shutil.rmtree(wf.root)


@pytest.mark.workflow
def test_a_kernel_rows_log_says_where_its_featurisers_solves_and_predictions_are(kernel_run):
    """The logs of the kernel_row jobs above (`> {log} 2>&1`): a line as each featuriser and
    prediction starts and ends (more only every LOG_SECONDS), and K and its Cholesky factorisation
    as steps with their sizes, once per l2."""
    wf, _, _ = kernel_run
    for row, settings in KERNEL["rows"].items():
        log = (wf.root / f"results/logs/kernel/{row}.log").read_text()
        lines, name, l2s = log.splitlines(), settings["features"], settings.get("l2", [0.0])
        assert "\r" not in log
        ends = [f"predict {split} {n}/{n} (100.0%) " for split, n in (("train", 64), ("test", 32))] * len(l2s)
        if name != "raw":  # raw pixels are one conversion, not batches
            assert f"{name} features train 0/64 (0.0%) ?images/s elapsed 00:00 eta ?" in lines
            ends += [f"{name} features {split} {n}/{n} (100.0%) " for split, n in (("train", 64), ("test", 32))]
        assert sorted(end for line in lines for end in set(ends) if line.startswith(end)) == sorted(ends), log
        build = f"K: 64 x 64 float64 (0.00 GB) from {features.feature_dim(name, KERNEL, (1, 8, 8))} features"
        assert lines.count(f"{build}: started") == len(l2s) and sum(f"{build}: done in " in x for x in lines) == len(
            l2s
        )
        for l2 in l2s:
            factor = f"Cholesky of K + {l2:g} I: n = 64, n^3 / 3 = 8.74e+04 flop"
            assert sum(line.startswith((f"{factor}: started, about ", f"{factor}: done in ")) for line in lines) == 2
