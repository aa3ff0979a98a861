"""The GPU proof (`make gpu-check`, bench/gpu_check.py) on this machine: without a GPU every stage
runs at smoke size on the CPU, so none of its scripts can break unseen; and its parts: what each
stage needs, the one message about what is missing, the time budget, a stage that overruns it."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib

import pytest
import torch

from conftest import REPO, needs_fashion_mnist

STAGES = ("tests", "bench_gpu", "minigrid", "bench_pack")


def driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_check(command, **env):
    """The proof with this environment's Python (`make gpu-check` leaves .venv off PATH)."""
    return subprocess.run(
        command,
        cwd=REPO,
        env=dict(os.environ, PYTHON=sys.executable, **env),
        capture_output=True,
        text=True,
        timeout=1200,
    )


@needs_fashion_mnist
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; with a GPU, run `make gpu-check` itself")
def test_make_gpu_check_runs_every_stage_at_smoke_size_on_the_cpu(tmp_path):
    out = tmp_path / "proof"
    proc = gpu_check(["make", "gpu-check", f"OUT={out}"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no CUDA GPU: every stage runs at smoke size on the CPU" in proc.stdout
    for name in STAGES:
        assert re.search(rf"gpu-check: stage {name} passed in \d+ s", proc.stdout)
        stage = json.loads((out / f"stage-{name}.json").read_text())
        assert stage["status"] == "passed" and stage["mode"] == "cpu-smoke" and all(stage["results"].values()), stage
    assert json.loads((out / "device.json").read_text())["mode"] == "cpu-smoke"

    counts = json.loads((out / "stage-tests.json").read_text())["tests"]
    assert counts["tests"] >= 7 and counts["skipped"] == counts["tests"]  # every GPU test, collected and skipped

    bench = json.loads((out / "bench_gpu.json").read_text())
    assert set(bench["results"]) == {"inception", "alexnet", "mlp_1x512", "mlp_3x512"}
    for row in bench["results"].values():
        rates = ("naive", "per_cell_eager", "per_cell_augmented", "pack", "eval")
        assert all(row[k] > 0 for k in rates) and row["pack_over_cell"] == row["pack"] / row["per_cell_eager"]
        assert row["cell_over_naive"] == row["per_cell"] / row["naive"]  # one model over one model
    assert bench["meta"]["n_train"] % bench["meta"]["batch_size"] == 0  # whole batches: no recompile
    assert bench["grid"]["cells"] == 55 and bench["grid"]["hours"] > 0 and bench["grid"]["compile"] == "off"

    pack = json.loads((out / "bench_pack.json").read_text())
    assert pack["k"] == 2 and all(r["lockstep_s"] > 0 and r["vmap_s"] > 0 for r in pack["results"].values())

    grid = json.loads((out / "minigrid.json").read_text())
    assert [c["cell"] for c in grid["cells"]] == driver_cells()
    assert all(c["epochs"] == 1 and c["stop_reason"] == "max_epochs" for c in grid["cells"])
    assert "| fashion_mnist/inception/none/shuffled_pixels/s0 | 1 |" in (out / "minigrid.md").read_text()


def driver_cells():
    spec = importlib.util.spec_from_file_location("gpu_minigrid", REPO / "bench" / "gpu_minigrid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CELLS


def test_what_is_missing_is_one_message_and_skips_only_the_stages_that_need_it(tmp_path):
    """Pillow and scipy made unimportable, no Fashion-MNIST, and a budget of 0 s: every stage
    is skipped, each with its reason, after one message that lists all and how to install them."""
    shim = tmp_path / "shim"
    for module in ("PIL", "scipy"):  # Pillow's module: torchvision, which imports it, is missing too
        (shim / module).mkdir(parents=True)
        (shim / module / "__init__.py").write_text("raise ImportError('not installed (test shim)')\n")
    (tmp_path / "no-data").mkdir()
    (tmp_path / "proof").mkdir()
    (tmp_path / "proof" / "bench_pack.json").write_text("{}")  # an earlier run's: not this one's result
    proc = gpu_check(
        ["scripts/gpu-check.sh", tmp_path / "proof"],
        PYTHONPATH=str(shim),
        FASHION_MNIST_ROOT=str(tmp_path / "no-data"),
        GPU_CHECK_BUDGET_S="0",
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # not failed: skipped
    assert proc.stdout.count("missing what some stages need") == 1
    message = proc.stdout.split("missing what some stages need", 1)[1]
    assert "pillow (for tests, bench_gpu): ImportError: not installed (test shim)" in message
    assert "scipy (for tests): ImportError" in message
    assert "torchvision (for tests, bench_gpu): ImportError" in message
    assert "the Fashion-MNIST files (for minigrid): dataset 'fashion_mnist'" in message
    assert str(tmp_path / "no-data") in message
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = " ".join(f"'{d}'" for d in sorted(project) if d.startswith(("pillow", "scipy", "torchvision")))
    assert f"python -m pip download --dest wheels {wanted}" in message
    assert f"{sys.executable} -m pip install --no-index --find-links wheels {wanted}" in message
    reasons = {
        "tests": "missing pillow, scipy, torchvision",
        "bench_gpu": "missing pillow, torchvision",
        "bench_pack": "GPU_CHECK_BUDGET_S=0 s is spent",
        "minigrid": "missing the Fashion-MNIST files",
    }
    for name, reason in reasons.items():
        assert f"gpu-check: stage {name} skipped in 0 s ({reason})" in proc.stdout
        stage = json.loads((tmp_path / "proof" / f"stage-{name}.json").read_text())
        assert stage["reason"] == reason and not any(stage["results"].values())
    assert not (tmp_path / "proof" / "bench_pack.json").exists()


def test_a_stage_that_outruns_the_budget_is_stopped_with_its_children(tmp_path):
    proof = driver()
    child = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen(['sleep', '120']); open({str(child)!r}, 'w').write(str(p.pid)); "
        "print('started', flush=True); time.sleep(120)"
    )
    start = time.monotonic()
    code, expired = proof.run_stage([sys.executable, "-c", script], tmp_path / "stage.log", seconds=10)
    assert expired and code != 0 and time.monotonic() - start < 60
    assert (tmp_path / "stage.log").read_text() == "started\n"  # what it printed is kept
    pid = int(child.read_text())
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]:
        assert time.monotonic() < deadline, "the stage's child outlived it"
        time.sleep(0.05)


def test_each_stage_declares_every_project_dependency_it_imports():
    """Each stage's modules, imported in a fresh interpreter: every project dependency among what
    they import is in the stage's needs (torch: every stage's, checked first)."""
    proof = driver()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[\w.-]+", d)[0].lower() for d in project["dependencies"] + ["pytest"]]
    module_of = {n: proof.MODULES.get(n, n.replace("-", "_")).split(".")[0] for n in names}
    module_of["torchvision"] = "torchvision"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / d) for d in ("src", "tests", "bench")))
    probes = {}
    for stage in proof.STAGES:  # pytest: the test modules it names; else the script
        imports = "; ".join(f"import {stem(a)}" for a in stage.command if a.endswith(".py"))
        code = f"import sys; {imports}; print(*{{m.split('.')[0] for m in sys.modules}})"
        probes[stage] = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
    for stage, probe in probes.items():  # in parallel: each is mostly torch's import
        loaded = set(probe.communicate(timeout=600)[0].split())
        assert probe.returncode == 0 and "torch" in loaded, stage.name
        undeclared = {n for n, m in module_of.items() if m in loaded} - set(stage.needs) - {"torch"}
        assert not undeclared, (stage.name, undeclared)


def stem(path):
    return path.rsplit("/", 1)[-1].removesuffix(".py")


def test_the_oldest_torch_is_one_number_for_the_proof_the_makefile_and_the_readme():
    oldest = ".".join(map(str, driver().OLDEST_TORCH))
    assert re.search(rf"^TORCH_OLDEST := {re.escape(oldest)}$", (REPO / "Makefile").read_text(), re.M)
    assert f"torch {oldest}" in (REPO / "README.md").read_text()
