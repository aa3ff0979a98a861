"""The data rules through the real snakemake CLI, in a temporary copy of the workflow."""

import hashlib
import json
import re
import subprocess

import h5py
import numpy as np
import pytest

from rethink.data import shards

import realformat as rf
from conftest import FASHION_MNIST_ROOT, flip_byte_in_chunk, needs_fashion_mnist, tiny_config

pytestmark = pytest.mark.workflow

TINY = tiny_config(
    {
        "fig1a": {
            "dataset": "synth",
            "grid": [
                {
                    "architectures": ["mlp"],
                    "noises": ["true_labels", "random_labels", "shuffled_pixels", "random_pixels", "gaussian"],
                }
            ],
        },
        "fig1bc": {"dataset": "synth", "grid": [{"architectures": ["mlp"], "corruption_levels": [0.0, 0.5, 1.0]}]},
    },
    n_train=120,
    n_test=40,
    shard_size=50,
)
TINY["datasets"]["synth"]["synthetic"]["shape"] = [3, 32, 32]


def shard_digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "results" / "data").rglob("*"))
        if p.is_file()
    }


def test_builds_every_shard_then_has_nothing_to_do_and_rebuilds_byte_identically(workflow):
    config = workflow.write_config(TINY)
    workflow.run("--configfile", config, "-c2", "data_shards")
    data = workflow.root / "results" / "data" / "synth"
    expected = {
        "clean/train-00000.h5",
        "clean/train-00001.h5",
        "clean/train-00002.h5",
        "clean/test-00000.h5",
        "clean/train-stats.json",
        *(
            f"{noise}/s0/train-0000{i}.h5"
            for noise in ("random_labels", "corrupt_p0.5", "shuffled_pixels", "random_pixels", "gaussian")
            for i in range(3)
        ),
        "shuffled_pixels/s0/test-00000.h5",
    }
    assert {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()} == expected
    for noise in ("random_labels", "shuffled_pixels", "gaussian"):
        paths = sorted((data / noise / "s0").glob("train-*.h5"))
        arrays, attrs = shards.read_split(paths)
        assert len(arrays["labels"]) == 120 and attrs["noise"] == noise
    assert (
        (workflow.root / "results/logs/data/synth/gaussian/s0/train-00001.log")
        .read_text()
        .startswith("randomize: wrote")
    )

    again = workflow.run("--configfile", config, "-c2", "data_shards")
    assert "Nothing to be done" in again.stdout + again.stderr

    before = shard_digests(workflow.root)
    for path in (workflow.root / "results" / "data").rglob("*.h5"):
        path.unlink()
    workflow.run("--configfile", config, "-c2", "data_shards")
    assert shard_digests(workflow.root) == before


def test_editing_the_dataset_rebuilds_its_shards(workflow):
    config = workflow.write_config(TINY)
    workflow.run("--configfile", config, "-c2", "data_shards")
    edited = {
        **TINY,
        "datasets": {
            "synth": {"source": "synthetic", "synthetic": {**TINY["datasets"]["synth"]["synthetic"], "seed": 1}}
        },
    }
    dry = workflow.run("--configfile", workflow.write_config(edited), "-n", "data_shards")
    assert "data_clean" in dry.stdout and "data_randomize" in dry.stdout


def test_corrupted_test_labels_rebuild_only_the_label_noises_and_add_their_test_shards(workflow):
    workflow.run("--configfile", workflow.write_config(TINY), "-c2", "data_shards")
    before = shard_digests(workflow.root)
    corrupted = {**TINY, "randomization": {"test_labels": "corrupted"}}
    proc = workflow.run("--configfile", workflow.write_config(corrupted), "-c2", "data_shards")
    after = shard_digests(workflow.root)
    data = "results/data/synth"
    label_shards = {
        f"{data}/{noise}/s0/{split}-0000{i}.h5"
        for noise in ("random_labels", "corrupt_p0.5")
        for split, i in (("train", 0), ("train", 1), ("train", 2), ("test", 0))
    }
    assert {path for path in after if before.get(path) != after[path]} == label_shards
    assert proc.stderr.count("rule data_randomize:") == len(label_shards)  # the pixel noises were not rebuilt
    arrays, attrs = shards.read_split([workflow.root / data / "random_labels/s0/test-00000.h5"])
    clean, _ = shards.read_split([workflow.root / data / "clean/test-00000.h5"])
    assert (attrs["split"], attrs["noise"], json.loads(attrs["randomization"])) == (
        "test",
        "random_labels",
        {"test_labels": "corrupted"},
    )
    np.testing.assert_array_equal(arrays["true_labels"], clean["labels"])
    assert 0.7 < (arrays["labels"] != clean["labels"]).mean() < 1.0  # ~0.9 of 40 change
    _, train_attrs = shards.read_split(sorted((workflow.root / data / "corrupt_p0.5/s0").glob("train-*.h5")))
    assert json.loads(train_attrs["randomization"]) == {"test_labels": "corrupted"}


def test_a_bad_config_stops_before_any_job_naming_the_key(workflow):
    bad = {
        **TINY,
        "experiments": {
            "fig1bc": {"dataset": "synth", "grid": [{"architectures": ["mlp"], "corruption_levels": [0.5, 1.5]}]}
        },
    }
    proc = workflow.run("--configfile", workflow.write_config(bad), "-c2", check=False)
    assert proc.returncode != 0
    assert "experiments.fig1bc.grid[0].corruption_levels[1]: 1.5 is greater than the maximum of 1" in proc.stderr
    assert not (workflow.root / "results").exists()


def test_a_missing_dataset_stops_before_any_job_saying_where_it_looked(workflow, tmp_path):
    config = tiny_config(
        {
            "a": {"dataset": "cifar10", "grid": [{"architectures": ["mlp"]}]},
            "b": {"dataset": "synth", "grid": [{"architectures": ["mlp"]}]},
        }
    )
    config["datasets"]["cifar10"] = {"source": "cifar10", "root": str(tmp_path / "nothing-here")}
    proc = workflow.run("--configfile", workflow.write_config(config), "-c2", check=False)
    assert proc.returncode != 0
    assert f"were not found in {tmp_path / 'nothing-here'}/cifar-10-batches-py" in proc.stderr
    assert "set datasets.cifar10.root to" in proc.stderr and "datasets.cifar10.download: true" in proc.stderr
    assert not (workflow.root / "results" / "data").exists()  # not even the synthetic shards
    # a dry run still shows the plan
    dry = workflow.run("--configfile", workflow.write_config(config), "-n")
    assert "data_clean" in dry.stdout


@needs_fashion_mnist
def test_default_config_builds_real_fashion_mnist_shards(workflow):
    workflow.run("-c2", "data_shards")  # no --configfile: the embedded default
    data = workflow.root / "results" / "data" / "fashion_mnist"
    clean, attrs = shards.read_split([data / "clean" / "train-00000.h5"])
    assert clean["images"].shape == (500, 1, 28, 28)
    assert np.bincount(clean["labels"]).tolist() == [50] * 10  # stratified subset
    assert str(FASHION_MNIST_ROOT) in attrs["source_files"]
    random, _ = shards.read_split([data / "random_labels" / "s0" / "train-00000.h5"])
    assert 0.85 < random["changed"].mean() < 0.95
    test_shuffled, _ = shards.read_split([data / "shuffled_pixels" / "s0" / "test-00000.h5"])
    assert test_shuffled["images"].shape == (500, 1, 28, 28)


def test_a_crafted_dataset_file_runs_no_code_during_data_shards(workflow, tmp_path):
    marker = tmp_path / "code-ran"
    batch = rf.write_crafted_cifar10(tmp_path / "cifar", marker)
    config = tiny_config({"a": {"dataset": "cifar10", "grid": [{"architectures": ["mlp"]}]}})
    config["datasets"]["cifar10"] = {
        "source": "cifar10",
        "root": str(tmp_path / "cifar"),
        "subset": {"train": 50, "test": 10},
    }
    proc = workflow.run(
        "--configfile", workflow.write_config(config), "-c1", "--keep-going", "data_shards", check=False
    )
    assert proc.returncode != 0 and not marker.exists()
    log = (workflow.root / "results/logs/data/cifar10/clean/train-00000.log").read_text()
    assert log.startswith(f"error: {batch}: md5 ") and "is not the released cifar10 file's" in log


def repair_command(error):
    """The command a shard error names, with this test's config added as the message says."""
    command = re.search(r"`([^`]+)`", str(error)).group(1)
    return f"{command} --configfile config/test.yaml -c1"


def test_a_damaged_shard_names_the_command_that_rebuilds_it_and_only_it(workflow, monkeypatch):
    config = workflow.write_config(TINY)
    workflow.run("--configfile", config, "-c2", "data_shards")
    intact = shard_digests(workflow.root)
    monkeypatch.chdir(workflow.root)  # where jobs run
    clean, noisy = "results/data/synth/clean/train-00001.h5", "results/data/synth/random_labels/s0/train-00002.h5"
    flip_byte_in_chunk(clean, "images")
    with h5py.File(noisy, "r+") as f:
        f["labels"][0] = (f["labels"][0] + 1) % 10
    for damaged, read_through, rule in (
        (clean, "results/data/synth/random_labels/s0/train-00001.h5", "data_clean"),
        (noisy, noisy, "data_randomize"),
    ):
        with pytest.raises(shards.ShardError) as info:
            shards.read_shard(read_through)  # a damaged clean shard is found through the links to it
        assert f"rebuild it with `snakemake --force {damaged}`" in str(info.value)
        proc = subprocess.run(
            repair_command(info.value), shell=True, cwd=workflow.root, env=workflow.env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert re.search(rf"\n{rule} +1\ntotal +1\n", proc.stderr), proc.stderr  # that one job only
    assert shard_digests(workflow.root) == intact  # rebuilt byte-identically, nothing else touched
    shards.read_shard(noisy)
