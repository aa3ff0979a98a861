"""Shared fixtures: the repository paths, dataset specs, and a real snakemake CLI runner."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
FASHION_MNIST_ROOT = pathlib.Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed (make test installs it)",
)


def synthetic_spec(name="synth", n_train=64, n_test=32, shape=(3, 32, 32), seed=0, classes=10):
    return {
        "name": name, "source": "synthetic", "root": None, "download": False, "subset": {},
        "synthetic": {"n_train": n_train, "n_test": n_test, "shape": list(shape),
                      "classes": classes, "noise_std": 40.0, "seed": seed},
    }


SHARDS = {"size": 50000, "compression": "lzf", "chunk_samples": 256}


class Workflow:
    """A copy of the workflow in a temporary directory, driven through the snakemake CLI."""

    def __init__(self, root):
        self.root = root
        for item in ("Snakefile", "workflow", "config", "profiles"):
            src = REPO / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)

    def write_config(self, config, name="test.yaml"):
        path = self.root / "config" / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def run(self, *args, check=True, timeout=600):
        env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", *args], cwd=self.root, env=env,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def workflow(tmp_path):
    return Workflow(tmp_path)
