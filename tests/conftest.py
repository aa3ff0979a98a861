"""Shared fixtures: the repository paths, dataset specs, and a real snakemake CLI runner."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
FASHION_MNIST_ROOT = pathlib.Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed (make test installs it)",
)


def pytest_configure(config):
    """Tests send SIGINT to the processes they start (Ctrl-C reaching snakemake, `--watch`). A
    process started in the background by a non-interactive shell (`make test &`, nohup, some CI
    runners) has SIGINT ignored, and every child inherits that, so Python installs no KeyboardInterrupt
    handler in them: SIGINT is restored for the children here."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """The Slurm tests run last. The Slurm executor plugin runs `scontrol show config` whenever
    snakemake starts (it imports every installed plugin); once a Slurm client is installed but
    no controller answers (the tests' cluster is stopped), that call waits out MessageTimeout,
    9 s per snakemake start. On a fresh machine the Slurm tests install that client, so every
    workflow test before them starts snakemake in about a second."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)  # stable: order kept otherwise


def is_training_rule(name):
    """The workflow trains cells with the rule `train` (compute.pack 1), or a pack of cells with a
    rule of its own, train_<dataset>_<arch>_pNNN."""
    return name == "train" or re.fullmatch(r"train_\w+_p\d{3}", name) is not None


def pack_rules(configfile):
    """{cell id: the rule that trains it} for a config file, as the workflow names them."""
    from rethink import plan

    return {cell_id: pack.rule for pack in plan.load(configfile, SCHEMA).packs for cell_id in pack.ids}


def synthetic_spec(n_train=64, n_test=32, shape=(3, 32, 32), seed=0, classes=10, subset=None):
    return {
        "name": "synth",
        "source": "synthetic",
        "root": None,
        "download": False,
        "subset": subset or {},
        "synthetic": {
            "n_train": n_train,
            "n_test": n_test,
            "shape": list(shape),
            "classes": classes,
            "noise_std": 40.0,
            "seed": seed,
        },
    }


SHARDS = {"size": 50000, "compression": "lzf", "chunk_samples": 256}


def flip_byte_in_chunk(path, dataset, chunk=0):
    """Damage one stored byte of a dataset, as a bad disk would (the HDF5 structure stays intact)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(chunk).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 100)
        byte = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([byte[0] ^ 0x01]))


def tiny_config(experiments, n_train=64, n_test=32, shard_size=50000):
    """A workflow config small enough to train for real in seconds: synthetic 1x8x8 images,
    a narrow MLP and a narrow AlexNet."""
    return {
        "datasets": {
            "synth": {
                "source": "synthetic",
                "synthetic": {"n_train": n_train, "n_test": n_test, "shape": [1, 8, 8], "noise_std": 40.0},
            }
        },
        "shards": {"size": shard_size},
        "training": {"batch_size": 16, "max_epochs": 2, "crop_size": 8, "device": "cpu"},
        "architectures": {
            "mlp": {"model": "mlp_1x512", "width": 0.05, "runtime_minutes": 5, "mem_mb": 500},
            "alexnet": {"width": 0.1, "runtime_minutes": 5, "mem_mb": 500},
        },
        "regularizers": {"none": {}, "wd": {"weight_decay": 0.0005}},
        "experiments": experiments,
    }


class Workflow:
    """A copy of the workflow and of the package sources in a temporary directory, driven
    through the snakemake CLI. The copied `src/` comes first on PYTHONPATH, so a test may edit
    the package's code there without touching the repository. With `source`, a copy of another
    Workflow instead (its results and metadata too, mtimes preserved)."""

    def __init__(self, root, source=None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copytree(source.root, root, symlinks=True, dirs_exist_ok=True)
        else:
            for item in ("Snakefile", "workflow", "config", "profiles", "src", "environment.yml"):
                src = REPO / item
                (shutil.copytree if src.is_dir() else shutil.copy)(
                    src, root / item, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {})
                )
        self.env = dict(
            os.environ,
            PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            PYTHONPATH=os.pathsep.join([str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )

    def user_env(self, home):
        """This environment as a user whose home is `home`: snakemake --profile NAME finds
        home/.config/snakemake/NAME there."""
        env = dict(self.env, HOME=str(home))
        env.pop("XDG_CONFIG_HOME", None)
        return env

    def write_config(self, config, name="test.yaml"):
        path = self.root / "config" / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def run(self, *args, check=True, timeout=600, env=None):
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", *args],
            cwd=self.root,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def planned_jobs(self, *args):
        """The dry run's job list: {rule: count}, pack rules (compute.pack > 1) counted as "train",
        plus the cells whose training job would run."""
        out = self.run("-n", *args).stdout
        counts, cells = {}, set()
        for line in out.splitlines():
            if line.startswith("rule ") and line.endswith(":"):
                rule = "train" if is_training_rule(line[5:-1]) else line[5:-1]
                counts[rule] = counts.get(rule, 0) + 1
            if line.strip().startswith("output:"):
                cells.update(re.findall(r"results/cells/(\S+?)/cell\.json", line))
        if "Nothing to be done" in out:
            assert not counts, out
        return counts, cells


@pytest.fixture
def one_torch_thread():
    """Trainer tests run alongside others on 2 cores: one thread avoids OpenMP spin contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workflow(tmp_path):
    return Workflow(tmp_path / "wf")


# ----------------------------------------------------------------------------- a finished tiny run
# Four real, tiny cells, trained once per session and shared by the rerun and pack tests.

EXPERIMENTS = {
    "fig2b": {"dataset": "synth", "grid": [{"architectures": ["mlp", "alexnet"], "noises": ["true_labels"]}]},
    "table4": {
        "dataset": "synth",
        "grid": [
            {"architectures": ["mlp"], "noises": ["random_labels"]},
            {"architectures": ["mlp"], "regularizers": ["wd"], "noises": ["random_labels"]},
        ],
    },
}
CONFIG = tiny_config(EXPERIMENTS)
# what follows the aggregation in this config: its figure (fig2b), its table (table4), the claims check
REPORTS = {"figure": 1, "table": 1, "analysis_claims": 1}
CELLS = {
    "synth/mlp/none/true_labels/s0",
    "synth/alexnet/none/true_labels/s0",
    "synth/mlp/none/random_labels/s0",
    "synth/mlp/wd/random_labels/s0",
}


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A workflow copy on which `snakemake -c2` ran CONFIG to completion (shared: copy before changing it)."""
    wf = Workflow(tmp_path_factory.mktemp("finished") / "wf")
    config = wf.write_config(CONFIG)
    proc = wf.run("--configfile", config, "-c2")
    return wf, config, proc


# ----------------------------------------------------------------------------- waiting for a state
# A test waits for a state (a log line, a file, a job's state), never for a time: it goes on the
# moment the state is there, and the deadline only bounds a hang. It is generous, so that a
# loaded machine several times slower than the one behind docs/BENCHMARKS.md still passes.
PATIENCE_S = 600


def wait_until(condition, what, proc=None, timeout=PATIENCE_S, interval=0.01, details=None):
    """condition()'s first truthy value, asked every `interval` s. Fails naming `what` when the
    process `proc` (a Popen) ends first or `timeout` s pass (then `proc` is killed), with the
    output `proc` left where it was captured and `details()` (e.g. a log's text)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        ended = proc is not None and proc.poll() is not None
        if ended or time.monotonic() > deadline:
            why = f"the process ended (exit {proc.returncode})" if ended else f"not within {timeout} s"
            more = f"\n{details()}" if details else ""
            raise AssertionError(f"waiting for {what}: {why}{_output_of(proc)}{more}")
        time.sleep(interval)
    return value


def _output_of(proc):
    if proc is None:
        return ""
    if proc.poll() is None:
        proc.kill()
    try:  # a child of the killed process may hold the pipes open: do not wait for it
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return "".join(f"\n{text}" for text in (out, err) if text)


def log_match(path, pattern):
    """The last match of `pattern` in the text file `path`; None while there is none (or no file)."""
    try:
        matches = list(re.finditer(pattern, path.read_text()))
    except FileNotFoundError:
        return None
    return matches[-1] if matches else None


def _status(pid):
    """Process `pid`'s /proc status fields; None once it has ended."""
    try:
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def freeze(pids, proc=None):
    """Stop the processes `pids` (SIGSTOP) and return once each has stopped (or ended). A signal
    sent to them from then on stays pending (sigterm_pending) until they are continued (SIGCONT);
    one that comes before a process has stopped may be taken first and never show as pending."""

    def stopped(pid):
        status = _status(pid)
        return status is None or status["State"].startswith("T")

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: all(map(stopped, pids)), f"processes {pids} to stop", proc, interval=0.001)


def sigterm_pending(pid):
    """Whether a SIGTERM waits on process `pid` (its /proc status masks); None once it has ended."""
    status = _status(pid)
    if status is None:
        return None
    return any(int(status[mask], 16) >> (signal.SIGTERM - 1) & 1 for mask in ("SigPnd", "ShdPnd"))
