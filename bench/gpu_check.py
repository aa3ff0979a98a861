"""The GPU proof's stages, in order, as scripts/gpu-check.sh runs them (README "GPU"): the GPU
tests, the GPU benchmark, a paper-settings mini-grid and the pack benchmark (the least needed
last: the budget may stop the proof before it).

    python bench/gpu_check.py OUT        (scripts/gpu-check.sh sets PYTHONPATH and the interpreter)

- With a CUDA GPU every stage runs at its proof size; without one every stage runs at smoke
  size on the CPU (the GPU tests skip themselves) and says so: that shows its scripts work,
  its numbers are no measurement.
- What each stage needs is checked before any runs: one message names everything missing and
  how to install it without network; a stage that misses something is skipped with a line
  saying so, the others run.
- One time budget for all stages (GPU_CHECK_BUDGET_S seconds, default 540): each stage runs
  within what is left of it, is stopped when it runs out, and the stages after it are skipped.
- Each stage writes OUT/stage-<stage>.json (status, seconds, its result files) and OUT/stage-<stage>.log
  as it ends, so a proof stopped midway keeps what it measured.

Exit status: 0 every stage passed; 1 a stage failed or ran out of time; 3 a stage was skipped;
2 the proof could not start (no usable torch, a bad budget).
"""

import dataclasses
import importlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[1]
OLDEST_TORCH = (2, 11)  # README "GPU"; the Makefile's TORCH_OLDEST, whose tests run under it
BUDGET_S = 540
KILL_GRACE_S = 10  # between SIGTERM and SIGKILL of a stage that ran out of time
# distribution -> module; torch (checked first) is every stage's
MODULES = {
    "numpy": "numpy",
    "h5py": "h5py",
    "pytest": "pytest",
    "pyyaml": "yaml",
    "jsonschema": "jsonschema",
    "scipy": "scipy",
    "pillow": "PIL",
    "tqdm": "tqdm",
    "torchvision": "rethink.torchvision_guard",  # imports torchvision, also where its C++ ops do not load
}
DATASET = "the Fashion-MNIST files"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple  # keys of MODULES, and DATASET
    command: tuple  # after the interpreter; {out} is OUT
    proof: tuple  # then these with a CUDA GPU (the proof's sizes)
    smoke: tuple  # or these without (the CPU smoke run's sizes)
    results: tuple  # the files in OUT it writes


STAGES = (
    Stage(
        "tests",
        ("numpy", "h5py", "pytest", "pyyaml", "jsonschema", "pillow", "scipy", "torchvision", "tqdm"),
        ("-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "tests/test_imagenet.py", "-q", "-p", "no:cacheprovider",
         "--junitxml={out}/gpu-tests.xml"),
        (),
        (),
        ("gpu-tests.xml",),
    ),
    Stage(
        "bench_gpu",
        ("numpy", "h5py", "pyyaml", "jsonschema", "pillow", "torchvision", "tqdm"),
        ("bench/bench_gpu.py", "--out", "{out}"),
        ("--device", "cuda", "--repeats", "3"),
        ("--device", "cpu", "--width", "0.125", "--batch-size", "8", "--epoch-batches", "2", "--n-test", "8",
         "--steps", "1", "--repeats", "1", "--pack", "2", "--naive-workers", "1", "--compile", "off"),
        ("bench_gpu.json", "bench_gpu.md"),
    ),
    Stage(
        "minigrid",
        ("numpy", "h5py", "pyyaml", "jsonschema", "tqdm", DATASET),
        ("bench/gpu_minigrid.py", "--out", "{out}"),
        ("--device", "cuda"),
        ("--device", "cpu", "--epochs", "1", "--subset", "96", "32", "--width", "0.125"),
        ("minigrid.json", "minigrid.md"),
    ),
    Stage(
        "bench_pack",
        ("numpy", "h5py", "pyyaml", "jsonschema", "tqdm"),
        ("bench/bench_pack.py", "--out", "{out}"),
        ("--device", "cuda", "--k", "8"),
        ("--device", "cpu", "--k", "2", "--steps", "1", "--repeats", "1"),
        ("bench_pack.json", "bench_pack.md"),
    ),
)  # fmt: skip


def say(message):
    print(f"gpu-check: {message}", flush=True)


def write_json(path, record):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def requirement(name, torch_version):
    """The pip requirement of a distribution: pyproject.toml's, but torchvision's is the release
    that pairs with the installed torch (2.N -> 0.(N + 15))."""
    if name == "torchvision":
        return f"torchvision==0.{torch_version[1] + 15}.*"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["test"]
    return next((s for s in specs if re.match(r"[\w.-]+", s)[0].lower() == name), name)


def fashion_mnist_root():
    """Where the mini-grid reads Fashion-MNIST: FASHION_MNIST_ROOT, else the project's default."""
    from rethink.data import sources

    return os.environ.get("FASHION_MNIST_ROOT") or str(sources.root_of({"source": "fashion_mnist"}))


def missing_pieces(stages):
    """{piece: why} of what the stages need and this Python lacks."""
    missing = {}
    for name in sorted({n for s in stages for n in s.needs if n != DATASET}):
        try:
            importlib.import_module(MODULES[name])
        except Exception as err:  # a broken install counts as missing, with its error
            missing[name] = f"{type(err).__name__}: {err}"
    if "numpy" in missing:
        missing[DATASET] = "not checked without numpy"
        return missing
    from rethink.data import sources
    from rethink.errors import RethinkError

    try:
        sources.check_available({"name": "fashion_mnist", "source": "fashion_mnist", "root": fashion_mnist_root()})
    except RethinkError as err:
        missing[DATASET] = str(err)
    return missing


def report_missing(missing, stages, torch_version):
    packages = [requirement(name, torch_version) for name in missing if name != DATASET]
    lines = ["missing what some stages need (those stages are skipped, the others run):"]
    for piece, why in missing.items():
        users = ", ".join(s.name for s in stages if piece in s.needs)
        lines.append(f"  {piece} (for {users}): {why}")
    if packages:
        quoted = " ".join(f"'{p}'" for p in packages)
        lines += [
            "to install them without network: on a machine with network and the same Python "
            f"({sys.version_info.major}.{sys.version_info.minor}) and platform, run",
            f"  python -m pip download --dest wheels {quoted}",
            "bring wheels/ here, then",
            f"  {sys.executable} -m pip install --no-index --find-links wheels {quoted}",
        ]
    if DATASET in missing:
        lines.append(
            "  Fashion-MNIST: the four idx .gz files (Debian: apt-get install dataset-fashion-mnist); "
            "FASHION_MNIST_ROOT=folder says where they are"
        )
    say("\n  ".join(lines))


def junit_counts(path):
    suites = ET.parse(path).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def stop(proc):
    """SIGTERM to the stage's process group, SIGKILL after KILL_GRACE_S."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_stage(argv, log, seconds):
    """Run argv in its own process group, its output to the terminal and `log`, for at most
    `seconds`; -> (return code, whether it ran out of time). The group is stopped on the way
    out whatever happens (a signal to the proof included): no stage outlives the proof."""
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    expired = threading.Event()

    def expire():
        expired.set()
        stop(proc)

    timer = threading.Timer(seconds, expire)
    timer.start()
    try:
        with open(log, "w") as fh:
            for line in proc.stdout:
                sys.stdout.write(line)
                fh.write(line)
        return proc.wait(), expired.is_set()
    finally:
        timer.cancel()
        if proc.poll() is None:
            stop(proc)


def torch_state():
    """-> (torch version (major, minor), CUDA usable, device line) or exits 2 with why not."""
    try:
        import torch
    except Exception as err:
        say(
            f"{sys.executable} cannot import torch ({type(err).__name__}: {err}); set PYTHON=/path/to/python of "
            f"an environment with torch >= {OLDEST_TORCH[0]}.{OLDEST_TORCH[1]} (a GPU machine's CUDA build; "
            "here, after make install: PYTHON=.venv/bin/python)"
        )
        sys.exit(2)
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < OLDEST_TORCH:
        say(f"torch {torch.__version__} is older than the oldest supported, {OLDEST_TORCH[0]}.{OLDEST_TORCH[1]}")
        sys.exit(2)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    return version, cuda, f"{device}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def budget_from_env():
    text = os.environ.get("GPU_CHECK_BUDGET_S", str(BUDGET_S))
    try:
        budget = float(text)
    except ValueError:
        budget = -1.0
    if not budget >= 0:
        say(f"GPU_CHECK_BUDGET_S={text!r} is not a number of seconds >= 0")
        sys.exit(2)
    return budget


def main(argv):
    if len(argv) != 1:
        say("usage: python bench/gpu_check.py OUT_DIR")
        return 2
    out = pathlib.Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget, started = budget_from_env(), time.monotonic()
    version, cuda, device = torch_state()
    mode = "cuda" if cuda else "cpu-smoke"
    say(f"{device}; budget {budget:.0f} s; results in {out}")
    if not cuda:
        say(
            "no CUDA GPU: every stage runs at smoke size on the CPU (the GPU tests skip themselves); this "
            "shows the proof's scripts work, its numbers are no measurement"
        )
        if shutil.which("nvidia-smi"):
            say("WARNING: nvidia-smi is here but this torch sees no GPU (a CPU build of torch?)")
    for stage in STAGES:  # what an earlier run left in OUT must not pass for this run's
        for name in (*stage.results, f"stage-{stage.name}.json", f"stage-{stage.name}.log"):
            (out / name).unlink(missing_ok=True)
    write_json(out / "device.json", {"device": device, "mode": mode, "budget_s": budget, "python": sys.executable})
    missing = missing_pieces(STAGES)
    if missing:
        report_missing(missing, STAGES, version)

    statuses = {}
    for stage in STAGES:
        record = {"stage": stage.name, "mode": mode, "seconds": 0.0}
        left = budget - (time.monotonic() - started)
        lacking = [n for n in stage.needs if n in missing]
        if lacking:
            record.update(status="skipped", reason=f"missing {', '.join(lacking)}")
        elif left <= 0:
            record.update(status="skipped", reason=f"GPU_CHECK_BUDGET_S={budget:g} s is spent")
        else:
            command = [sys.executable, *(a.format(out=out) for a in stage.command)]
            command += list(stage.proof if cuda else stage.smoke)
            if DATASET in stage.needs:
                command += ["--root", fashion_mnist_root()]
            say(f"stage {stage.name}: {' '.join(command[1:])} (at most {left:.0f} s)")
            start = time.monotonic()
            code, expired = run_stage(command, out / f"stage-{stage.name}.log", left)
            record.update(
                seconds=round(time.monotonic() - start, 1),
                returncode=code,
                command=command,
                status="timed_out" if expired else "passed" if code == 0 else "failed",
                log=f"stage-{stage.name}.log",
            )
            if expired:
                record["reason"] = f"stopped: GPU_CHECK_BUDGET_S={budget:g} s ran out"
        record["results"] = {name: (out / name).exists() for name in stage.results}
        if stage.name == "tests" and record["results"]["gpu-tests.xml"]:
            record["tests"] = junit_counts(out / "gpu-tests.xml")
        write_json(out / f"stage-{stage.name}.json", record)
        statuses[stage.name] = record["status"]
        why = f" ({record['reason']})" if "reason" in record else ""
        say(f"stage {stage.name} {record['status']} in {record['seconds']:.0f} s{why}")

    total = time.monotonic() - started
    say(f"all took {total:.0f} s ({mode}): " + ", ".join(f"{n} {s}" for n, s in statuses.items()))
    if any(s in ("failed", "timed_out") for s in statuses.values()):
        return 1
    return 3 if "skipped" in statuses.values() else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run_stage's finally stops the stage
    sys.exit(main(sys.argv[1:]))
