"""HDF5 shards: round trip, links instead of copies, checksums, atomic writes, a full disk, the
disk bound."""

import json
import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from rethink.data import prepare, shards
from rethink.data.shards import ShardError
from rethink.errors import RethinkError
from rethink.fileio import canonical_json

from conftest import SHARDS, flip_byte_in_chunk, synthetic_spec


def build(tmp_path, spec, noise="corrupt_p0.5", seed=0, shards_cfg=SHARDS):
    """A clean train shard and one randomized shard, through the rule CLIs' own functions."""
    clean = tmp_path / "clean" / "train-00000.h5"
    prepare.make_clean(spec, shards_cfg, "train", 0, clean)
    stats = None
    if noise == "gaussian":
        stats = tmp_path / "clean" / "train-stats.json"
        prepare.make_stats([clean], stats)
    noisy = tmp_path / noise / f"s{seed}" / "train-00000.h5"
    prepare.make_randomized(spec, shards_cfg, noise, seed, "train", 0, clean, stats, noisy)
    return clean, noisy


def test_round_trip_and_label_noise_links_instead_of_copying(tmp_path):
    spec = synthetic_spec(n_train=300)
    clean, noisy = build(tmp_path, spec)
    arrays, attrs = shards.read_split([noisy])
    clean_arrays, _ = shards.read_split([clean])
    np.testing.assert_array_equal(arrays["images"], clean_arrays["images"])
    np.testing.assert_array_equal(arrays["true_labels"], clean_arrays["labels"])
    assert (arrays["labels"] != arrays["true_labels"]).mean() > 0.3
    assert attrs["noise"] == "corrupt_p0.5" and attrs["seed"] == 0 and attrs["dataset"] == "synth"
    with h5py.File(noisy) as f:  # plain h5py sees the images through the relative link
        assert isinstance(f.get("images", getlink=True), h5py.ExternalLink)
        assert f.get("images", getlink=True).filename == "../../clean/train-00000.h5"
        assert f["images"].shape == (300, 3, 32, 32)
    assert noisy.stat().st_size < clean.stat().st_size / 20


def test_corrupted_test_labels_are_a_test_shard_that_records_the_choice(tmp_path):
    spec, corrupted = synthetic_spec(n_test=400), {"test_labels": "corrupted"}
    clean = tmp_path / "clean" / "test-00000.h5"
    prepare.make_clean(spec, SHARDS, "test", 0, clean)
    noisy = tmp_path / "random_labels" / "s0" / "test-00000.h5"
    prepare.make_randomized(spec, SHARDS, "random_labels", 0, "test", 0, clean, None, noisy, corrupted)
    arrays, attrs = shards.read_split([noisy])
    clean_arrays, clean_attrs = shards.read_split([clean])
    np.testing.assert_array_equal(arrays["true_labels"], clean_arrays["labels"])
    assert 0.8 < (arrays["labels"] != clean_arrays["labels"]).mean() < 0.98  # ~0.9 of them change
    assert (attrs["split"], attrs["noise"], attrs["level"]) == ("test", "random_labels", 1.0)
    assert json.loads(attrs["randomization"]) == corrupted and clean_attrs["noise"] == "clean"
    # the training shard of the same noise records the choice too; a pixel noise's does not
    for noise, recorded in (("random_labels", corrupted), ("random_pixels", {"permute": "positions"})):
        clean_train, train = build(tmp_path / noise, spec, noise=noise)
        prepare.make_randomized(spec, SHARDS, noise, 0, "train", 0, clean_train, None, train, corrupted)
        assert json.loads(shards.read_split([train])[1]["randomization"]) == recorded
    with pytest.raises(RethinkError, match=r"random_labels leaves the test split clean \(test_labels=clean\)"):
        prepare.make_randomized(spec, SHARDS, "random_labels", 0, "test", 0, clean, None, tmp_path / "x.h5")


def test_image_noise_stores_images_and_links_labels(tmp_path):
    clean, noisy = build(tmp_path, synthetic_spec(n_train=100), noise="gaussian")
    with h5py.File(noisy) as f:
        assert isinstance(f.get("labels", getlink=True), h5py.ExternalLink)
        assert f["images"].dtype == np.float32
    arrays, _ = shards.read_split([noisy])
    np.testing.assert_array_equal(arrays["labels"], shards.read_split([clean])[0]["labels"])


@pytest.mark.parametrize("compression", ["none", "lzf"])
def test_a_flipped_byte_in_the_images_is_caught_and_the_file_named(tmp_path, compression):
    shards_cfg = dict(SHARDS, compression=compression)
    clean, _ = build(tmp_path, synthetic_spec(n_train=300), shards_cfg=shards_cfg)
    flip_byte_in_chunk(clean, "images")
    shards.read_shard(clean, ["labels"])  # the labels are intact and still readable
    with pytest.raises(ShardError, match=str(clean)):
        shards.read_shard(clean)


def test_an_edited_label_is_caught_through_the_randomized_shard(tmp_path):
    clean, noisy = build(tmp_path, synthetic_spec(n_train=100))
    with h5py.File(noisy, "r+") as f:
        f["labels"][0] = (f["labels"][0] + 1) % 10
    with pytest.raises(ShardError, match=f"{noisy}: checksum mismatch"):
        shards.read_split([noisy])


def test_an_edited_attribute_is_caught(tmp_path):
    clean, _ = build(tmp_path, synthetic_spec(n_train=50))
    with h5py.File(clean, "r+") as f:
        f.attrs["seed"] = 99
    with pytest.raises(ShardError, match="checksum mismatch in attributes"):
        shards.read_shard(clean, ["labels"])


def test_a_clean_shard_rebuilt_under_a_randomized_one_is_a_mismatch(tmp_path):
    clean, noisy = build(tmp_path, synthetic_spec(n_train=100, seed=0))
    prepare.make_clean(synthetic_spec(n_train=100, seed=1), SHARDS, "train", 0, clean)
    with pytest.raises(ShardError, match="built from a different version"):
        shards.read_split([noisy])


def test_garbage_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "train-00000.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(
        ShardError,
        match=f"{bad}: not a readable HDF5 shard .*; rebuild it \\(it is outside a "
        "results/ directory, so Snakemake cannot\\)",
    ):
        shards.read_shard(bad)
    with pytest.raises(ShardError, match="shard not found"):
        shards.read_shard(tmp_path / "nope.h5")


def test_a_damaged_or_missing_shard_names_the_snakemake_command_that_rebuilds_it(tmp_path, monkeypatch):
    """Snakemake takes the target relative to its working directory (an absolute path matches no
    rule), and --force, since the damaged file exists (tests/test_workflow_data.py runs it)."""
    workdir = tmp_path / "wf"
    _, noisy = build(workdir / "results" / "data" / "synth", synthetic_spec(n_train=50))
    with h5py.File(noisy, "r+") as f:
        f["labels"][0] = (f["labels"][0] + 1) % 10
    target = "results/data/synth/corrupt_p0.5/s0/train-00000.h5"
    monkeypatch.chdir(workdir)
    with pytest.raises(ShardError) as info:
        shards.read_shard(target)
    assert str(info.value) == (
        f"{target}: checksum mismatch in labels (corrupted or edited); rebuild it with "
        f"`snakemake --force {target}` (plus the --configfile of your run, if it had one)"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ShardError, match=f"rebuild it with `cd {workdir} && snakemake --force {target}`"):
        shards.read_shard(noisy)
    with pytest.raises(
        ShardError,
        match=f"shard not found; build it with `cd {workdir} && snakemake --force "
        "results/data/synth/clean/test-00000.h5`",
    ):
        shards.read_shard(workdir / "results/data/synth/clean/test-00000.h5")


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "x.h5"

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as if the job were killed half-way through the write

    monkeypatch.setattr(h5py.Group, "create_dataset", explode)
    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(target, {"labels": np.arange(10)}, {"dataset": "d"})
    assert os.listdir(tmp_path) == []


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "train-00000.h5"
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import os, pathlib, signal, numpy as np
from rethink.data import shards
def killed(path, data):  # half-way through writing the file
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
pathlib.Path.write_bytes = killed
shards.write_shard({str(target)!r}, {{"labels": np.arange(10)}}, {{"dataset": "d"}})
""",
        ]
    )
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert os.listdir(tmp_path) == [f".{target.name}.tmp{killed.pid}"]
    other = tmp_path / ".train-00001.h5.tmp1"  # another file's temporary is not this write's business
    other.write_bytes(b"")
    shards.write_shard(target, {"labels": np.arange(10)}, {"dataset": "d"})
    assert sorted(os.listdir(tmp_path)) == [other.name, target.name]


def test_a_full_disk_is_one_line_naming_the_shard_and_the_free_space_and_leaves_no_file(tmp_path):
    """A real full file system: a 1 MiB tmpfs mounted in a private mount namespace (unshare; as
    an unprivileged user too where user namespaces are enabled), written by the rule's CLI. The
    shard (2,000 3x32x32 images, uncompressed) needs 6 MB. It used to end in h5py tracebacks
    and a segmentation fault."""
    unshare = ["unshare", "--user", "--map-root-user", "--mount"]
    if subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine allows no private mount namespace (unshare --user --mount) for a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "train-00000.h5"
    spec = {"dataset": synthetic_spec(n_train=2000, n_test=10), "shards": dict(SHARDS, compression="none")}
    writer = [sys.executable, "-m", "rethink.data.prepare", "clean", "--spec", canonical_json(spec)]
    writer += ["--split", "train", "--shard", "0", "--out", str(out)]
    # what the writer left is listed inside the namespace: the tmpfs goes with it
    script = f'mount -t tmpfs -o size=1m tmpfs {disk} && "$@"; status=$?; ls -A {disk}; exit $status'
    proc = subprocess.run([*unshare, "sh", "-c", script, "sh", *writer], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    found = re.fullmatch(
        rf"error: {re.escape(str(out))}: could not be written \(No space left on device; ([\d,]+) bytes free there "
        r"now, its partial copy removed\): free some space and run again\n",
        proc.stderr,
    )
    assert found, proc.stderr
    assert 0 < int(found[1].replace(",", "")) <= 1 << 20
    assert not disk.exists() or not any(disk.iterdir())


def test_split_over_several_shards_reads_back_in_order_and_checks_the_list(tmp_path):
    spec, shards_cfg = synthetic_spec(n_train=250), dict(SHARDS, size=100)
    paths = [tmp_path / f"train-{i:05d}.h5" for i in range(3)]
    for i, path in enumerate(paths):
        prepare.make_clean(spec, shards_cfg, "train", i, path)
    arrays, _ = shards.read_split(paths)
    from rethink.data import sources

    images, labels, _ = sources.load_split(spec, "train")
    np.testing.assert_array_equal(arrays["images"], images)
    np.testing.assert_array_equal(arrays["labels"], labels)
    assert [len(shards.read_shard(p, ["labels"])[0]["labels"]) for p in paths] == [100, 100, 50]
    with pytest.raises(ShardError, match="incomplete or mixes"):
        shards.read_split(paths[:2])
    with pytest.raises(ShardError, match="incomplete or mixes"):
        shards.read_split([paths[1], paths[0], paths[2]])


def test_the_same_inputs_give_byte_identical_files(tmp_path):
    spec = synthetic_spec(n_train=200)
    for noise in ("corrupt_p0.3", "random_pixels", "gaussian"):
        a = build(tmp_path / "a", spec, noise=noise, seed=3)
        b = build(tmp_path / "b", spec, noise=noise, seed=3)
        for x, y in zip(a, b):
            assert x.read_bytes() == y.read_bytes(), (noise, x)
        c = build(tmp_path / "c", spec, noise=noise, seed=4)
        assert a[1].read_bytes() != c[1].read_bytes()


def test_eleven_label_noise_levels_cost_little_more_than_one_clean_copy(tmp_path):
    """CIFAR-10-sized training data (50,000 x 3 x 32 x 32): p = 0, 0.1, ..., 1.0."""
    spec = synthetic_spec(n_train=50000, n_test=10)
    clean = tmp_path / "clean" / "train-00000.h5"
    prepare.make_clean(spec, SHARDS, "train", 0, clean)
    from rethink.data.randomize import label_corruption

    noisy_bytes, label_bytes = 0, 0
    for level in np.linspace(0, 1, 11):
        noise = label_corruption(level).name
        if noise == "true_labels":
            continue  # p = 0 reads the clean shard itself
        out = tmp_path / noise / "s0" / "train-00000.h5"
        prepare.make_randomized(spec, SHARDS, noise, 0, "train", 0, clean, None, out)
        noisy_bytes += out.stat().st_size
        label_bytes += 50000 * np.dtype(np.int64).itemsize
    clean_bytes = clean.stat().st_size
    assert clean_bytes > 50000 * 3 * 32 * 32 * 0.5  # the images are really in there
    total = clean_bytes + noisy_bytes
    bound = 1.2 * (clean_bytes + label_bytes)
    print(f"clean {clean_bytes / 1e6:.1f} MB, 10 noisy shards {noisy_bytes / 1e6:.2f} MB, bound {bound / 1e6:.1f} MB")
    assert total < bound
    arrays, _ = shards.read_split([tmp_path / "corrupt_p0.5" / "s0" / "train-00000.h5"])
    assert arrays["images"].shape == (50000, 3, 32, 32)
    assert json.loads(shards.read_shard(clean, ["labels"])[1]["dataset_sha256"]).keys() == {"images", "labels"}
