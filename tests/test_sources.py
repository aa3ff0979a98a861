"""Raw dataset sources against files in the real on-disk formats (see tests/realformat.py).

CIFAR-10 and MNIST are written small by the helpers and cross-checked with torchvision's
own readers; Fashion-MNIST is the Debian package's real files when they are installed.
"""

import gzip
import hashlib
import json
import pathlib
import pickle
import shutil
from fractions import Fraction

import numpy as np
import pytest

from rethink.data import sources
from rethink.errors import RethinkError

import realformat as rf
from conftest import FASHION_MNIST_ROOT, synthetic_spec

CIFAR_PER_BATCH = 20  # -> 100 train, 20 test
MNIST_TRAIN, MNIST_TEST = 60, 30


def spec_for(source, root, subset=None, **extra):
    """A dataset spec for the helpers' files; they are not the released files, so verify is off
    unless a test turns it on."""
    spec = {"name": f"test_{source}", "source": source, "root": str(root), "download": False, "verify": False}
    if subset is not None:
        spec["subset"] = subset
    spec.update(extra)
    return spec


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, rf.write_cifar10(root, CIFAR_PER_BATCH, seed=1)


@pytest.fixture(scope="module")
def mnist_tv(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist_tv")
    return root, rf.write_mnist(root, MNIST_TRAIN, MNIST_TEST, seed=2, layout="torchvision")


@pytest.fixture
def small_full_sizes(monkeypatch):
    """Declare the helpers' small files to be the complete datasets (no subset needed)."""
    monkeypatch.setitem(sources.FULL_SIZES, "cifar10", {"train": 5 * CIFAR_PER_BATCH, "test": CIFAR_PER_BATCH})
    for name in ("mnist", "fashion_mnist"):
        monkeypatch.setitem(sources.FULL_SIZES, name, {"train": MNIST_TRAIN, "test": MNIST_TEST})


@pytest.fixture
def tv_cifar(monkeypatch):
    """torchvision's CIFAR10 with its md5 checks reduced to 'the file exists'.

    Generated files cannot match the real archive's md5s; everything else (the pickle
    reading, reshaping, HWC transpose) is torchvision's own code.
    """
    from rethink.torchvision_guard import torchvision

    cifar_module = torchvision.datasets.cifar
    monkeypatch.setattr(cifar_module.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda fpath, md5=None: pathlib.Path(fpath).is_file())
    return cifar_module.CIFAR10


def assert_loaded(images, labels, expected_images, expected_labels, chw):
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert images.shape == (len(expected_labels), *chw)
    assert images.flags.c_contiguous
    np.testing.assert_array_equal(images, expected_images.reshape(images.shape))
    np.testing.assert_array_equal(labels, expected_labels)


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("split", sources.SPLITS)
def test_cifar10_loads_what_was_written(cifar, small_full_sizes, split):
    root, written = cifar
    images, labels, provenance = sources.load_split(spec_for("cifar10", root), split)
    assert_loaded(images, labels, *written[split], (3, 32, 32))
    files = json.loads(provenance["source_files"])
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    assert files == [str(root / "cifar-10-batches-py" / name) for name in names]


def test_cifar10_channel_and_row_order(tmp_path):
    """Build rows by the format's definition (index = c*1024 + row*32 + col), independently
    of the helper, and check each marker lands at [c, row, col]."""
    rf.write_cifar10(tmp_path, 10, seed=5)
    markers = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 31, 2), (2, 2, 31), (2, 31, 31)]
    rows = np.zeros((len(markers), 3072), dtype=np.uint8)
    for i, (c, r, col) in enumerate(markers):
        rows[i, c * 1024 + r * 32 + col] = 200 + i
    batch = {
        "batch_label": "testing batch 1 of 1",
        "labels": list(range(len(markers))),
        "data": rows,
        "filenames": [b"x.png"] * len(markers),
    }
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    images, labels, _ = sources.load_split(spec_for("cifar10", tmp_path, {"test": len(markers)}), "test")
    for i, (c, r, col) in enumerate(markers):
        assert images[i, c, r, col] == 200 + i
        assert int(images[i].sum()) == 200 + i  # nothing else set
    np.testing.assert_array_equal(labels, np.arange(len(markers)))


def test_cifar10_helper_writes_the_real_batch_layout(cifar):
    root, written = cifar
    folder = root / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as fh:
        batch = pickle.load(fh, encoding="latin1")
    assert set(batch) == {"batch_label", "labels", "data", "filenames"}
    assert batch["batch_label"] == "training batch 2 of 5"
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (CIFAR_PER_BATCH, 3072)
    assert all(isinstance(label, int) for label in batch["labels"])
    assert all(isinstance(name, bytes) for name in batch["filenames"])
    images = written["train"][0][CIFAR_PER_BATCH : 2 * CIFAR_PER_BATCH]
    for c, r, col in [(0, 0, 1), (1, 3, 0), (2, 31, 30)]:
        np.testing.assert_array_equal(batch["data"][:, c * 1024 + r * 32 + col], images[:, c, r, col])
    assert (folder / "data_batch_2").read_bytes()[:2] == b"\x80\x02"  # pickle protocol 2
    with open(folder / "batches.meta", "rb") as fh:
        meta = pickle.load(fh, encoding="latin1")
    assert meta["label_names"][0] == "airplane" and len(meta["label_names"]) == 10
    assert meta["num_cases_per_batch"] == CIFAR_PER_BATCH and meta["num_vis"] == 3072


@pytest.mark.parametrize("split", sources.SPLITS)
def test_cifar10_matches_torchvision(cifar, small_full_sizes, tv_cifar, split):
    root, written = cifar
    reference = tv_cifar(str(root), train=split == "train", download=False)
    assert reference.data.shape == (len(written[split][1]), 32, 32, 3)
    assert reference.classes[:2] == ["airplane", "automobile"]
    images, labels, _ = sources.load_split(spec_for("cifar10", root), split)
    np.testing.assert_array_equal(images, reference.data.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, np.asarray(reference.targets))


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("layout,gz", [("torchvision", False), ("torchvision", True), ("flat", True), ("flat", False)])
def test_mnist_layouts_load_what_was_written(tmp_path, small_full_sizes, layout, gz):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=3, layout=layout, gz=gz)
    spec = spec_for("mnist", tmp_path)
    sources.check_available(spec)
    for split in sources.SPLITS:
        images, labels, provenance = sources.load_split(spec, split)
        assert_loaded(images, labels, *written[split], (1, 28, 28))
        assert json.loads(provenance["source_files"]) == [str(p) for p in written["files"][split]]


def test_mnist_helper_writes_real_idx_headers(mnist_tv):
    root, written = mnist_tv
    raw = root / "MNIST" / "raw"
    images = (raw / "train-images-idx3-ubyte").read_bytes()
    labels = (raw / "train-labels-idx1-ubyte").read_bytes()
    assert images[:16] == bytes.fromhex("00000803") + b"".join(n.to_bytes(4, "big") for n in (MNIST_TRAIN, 28, 28))
    assert labels[:8] == bytes.fromhex("00000801") + MNIST_TRAIN.to_bytes(4, "big")
    assert len(images) == 16 + MNIST_TRAIN * 28 * 28 and len(labels) == 8 + MNIST_TRAIN
    assert set(written["train"][1].tolist()) == set(range(10))  # every class present
    gz_path = rf.write_idx(root / "extra.gz", written["test"][0])
    assert gzip.decompress(gz_path.read_bytes()) == (raw / "t10k-images-idx3-ubyte").read_bytes()


@pytest.mark.parametrize("split", sources.SPLITS)
def test_mnist_matches_torchvision(mnist_tv, small_full_sizes, split):
    from rethink.torchvision_guard import torchvision

    root, _ = mnist_tv
    reference = torchvision.datasets.MNIST(str(root), train=split == "train", download=False)
    images, labels, _ = sources.load_split(spec_for("mnist", root), split)
    assert images.shape == (len(reference.data), 1, 28, 28)
    np.testing.assert_array_equal(images[:, 0], reference.data.numpy())
    np.testing.assert_array_equal(labels, reference.targets.numpy())


def test_fashion_mnist_torchvision_layout_uses_its_own_folder(tmp_path, small_full_sizes):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=4, folder="FashionMNIST")
    images, labels, _ = sources.load_split(spec_for("fashion_mnist", tmp_path), "test")
    assert_loaded(images, labels, *written["test"], (1, 28, 28))
    with pytest.raises(RethinkError, match="were not found"):  # MNIST/ is not FashionMNIST/
        sources.load_split(spec_for("mnist", tmp_path), "test")


def test_provenance_follows_file_content(tmp_path, small_full_sizes):
    rf.write_mnist(tmp_path / "a", MNIST_TRAIN, MNIST_TEST, seed=3, layout="flat", gz=True)
    rf.write_mnist(tmp_path / "b", MNIST_TRAIN, MNIST_TEST, seed=3, layout="flat", gz=False)
    rf.write_mnist(tmp_path / "c", MNIST_TRAIN, MNIST_TEST, seed=9, layout="flat", gz=False)
    sha = {k: sources.load_split(spec_for("mnist", tmp_path / k), "test")[2]["source_sha256"] for k in "abc"}
    assert sha["b"] == sources.load_split(spec_for("mnist", tmp_path / "b"), "test")[2]["source_sha256"]
    assert all(len(s) == 64 and int(s, 16) >= 0 for s in sha.values())
    assert sha["b"] != sha["c"]  # different content
    assert sha["a"] != sha["b"]  # same samples, different files (the hash is of what is on disk)
    train_sha = sources.load_split(spec_for("mnist", tmp_path / "b"), "train")[2]["source_sha256"]
    assert train_sha != sha["b"]


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    if not all((FASHION_MNIST_ROOT / f"{name}.gz").is_file() for pair in rf.IDX_FILES.values() for name in pair):
        pytest.skip(
            f"{FASHION_MNIST_ROOT} with the four idx .gz files is absent (apt-get install dataset-fashion-mnist)"
        )
    spec = {"name": "fashion_mnist", "source": "fashion_mnist", "download": False}  # default root
    return spec, {split: sources.load_split(spec, split) for split in sources.SPLITS}


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_debian_files(fashion, split, n):
    spec, loaded = fashion
    images, labels, provenance = loaded[split]
    assert images.shape == (n, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
    assert 0 < images.mean() < 255 and images.max() == 255 and images.min() == 0
    assert sources.split_size(spec, split) == n and sources.shape(spec) == images.shape[1:]
    files = json.loads(provenance["source_files"])
    assert files == [str(FASHION_MNIST_ROOT / f"{name}.gz") for name in rf.IDX_FILES[split]]
    assert len(provenance["source_sha256"]) == 64


def test_fashion_mnist_provenance_is_stable(fashion):
    spec, loaded = fashion
    again = sources.load_split(spec, "test")
    assert again[2] == loaded["test"][2]
    np.testing.assert_array_equal(again[1], loaded["test"][1])
    assert loaded["train"][2]["source_sha256"] != loaded["test"][2]["source_sha256"]


def test_fashion_mnist_matches_torchvision_reader(fashion, tmp_path):
    from rethink.torchvision_guard import torchvision

    _, loaded = fashion
    read = {}
    for name in rf.IDX_FILES["test"]:
        with gzip.open(FASHION_MNIST_ROOT / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    mnist_module = torchvision.datasets.mnist
    read["images"] = mnist_module.read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")).numpy()
    read["labels"] = mnist_module.read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).numpy()
    np.testing.assert_array_equal(loaded["test"][0][:, 0], read["images"])
    np.testing.assert_array_equal(loaded["test"][1], read["labels"])


def test_fashion_mnist_stratified_subset(fashion):
    spec, loaded = fashion
    subset_spec = dict(spec, subset={"train": 600, "test": 100, "how": "stratified", "seed": 0})
    images, labels, _ = sources.load_split(subset_spec, "test")
    assert len(labels) == sources.split_size(subset_spec, "test") == 100
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [10] * 10)
    index = sources.subset_indices(loaded["test"][1], subset_spec["subset"], "test")
    np.testing.assert_array_equal(images, loaded["test"][0][index])


# ----------------------------------------------------------------------------- split_size / shape


SUBSETS = [
    None,
    {"train": 37, "test": 11, "how": "stratified", "seed": 0},
    {"train": 7, "test": 3, "how": "first"},
    {"train": 10**6, "test": 10**6, "how": "stratified", "seed": 0},  # larger than the split
]


@pytest.mark.parametrize("subset", SUBSETS, ids=["none", "stratified", "first", "oversized"])
@pytest.mark.parametrize("source", ["cifar10", "mnist", "synthetic"])
def test_split_size_and_shape_match_loading(cifar, mnist_tv, small_full_sizes, source, subset):
    if source == "synthetic":
        spec = synthetic_spec(n_train=90, n_test=40, shape=(1, 20, 24), subset=subset)
        expected_shape = (1, 20, 24)
    else:
        root = cifar[0] if source == "cifar10" else mnist_tv[0]
        spec = spec_for(source, root, subset)
        expected_shape = (3, 32, 32) if source == "cifar10" else (1, 28, 28)
    full = {"train": 90, "test": 40} if source == "synthetic" else sources.FULL_SIZES[source]
    assert sources.shape(spec) == expected_shape
    for split in sources.SPLITS:
        images, labels, _ = sources.load_split(spec, split)
        assert images.shape == (sources.split_size(spec, split), *expected_shape)
        assert len(labels) == len(images)
        assert len(labels) == (full[split] if subset is None else min(subset[split], full[split]))


def test_split_size_without_reading_files(tmp_path):
    nowhere = tmp_path / "nothing-here"
    assert sources.split_size(spec_for("cifar10", nowhere), "train") == 50000
    assert sources.split_size(spec_for("cifar10", nowhere), "test") == 10000
    assert sources.split_size(spec_for("mnist", nowhere, {"train": 4000}), "train") == 4000
    assert sources.split_size(spec_for("mnist", nowhere, {"train": 4000}), "test") == 10000
    assert sources.split_size(spec_for("fashion_mnist", nowhere, {"test": 10**6}), "test") == 10000
    assert sources.shape(spec_for("fashion_mnist", nowhere)) == (1, 28, 28)
    assert sources.num_classes(synthetic_spec(classes=4)) == 4


# ----------------------------------------------------------------------------- subsetting


def largest_remainder_ok(labels, index, n):
    """The chosen counts per class are a largest-remainder rounding of n * class share."""
    classes, counts = np.unique(labels, return_counts=True)
    chosen = np.array([np.sum(labels[index] == k) for k in classes])
    exact = [Fraction(int(c) * n, len(labels)) for c in counts]
    floors = [q.numerator // q.denominator for q in exact]
    assert chosen.sum() == n
    rounded_up = []
    for got, q, lo in zip(chosen, exact, floors):
        assert got in (lo, lo + 1) and (got == lo or q != lo), (got, q)
        rounded_up.append(got == lo + 1)
    remainders = [q - lo for q, lo in zip(exact, floors)]
    up = [r for r, u in zip(remainders, rounded_up) if u]
    down = [r for r, u in zip(remainders, rounded_up) if not u]
    assert not up or not down or min(up) >= max(down)


def test_subset_first_returns_the_first_n(cifar, small_full_sizes):
    root, written = cifar
    spec = spec_for("cifar10", root, {"train": 13, "how": "first"})
    images, labels, _ = sources.load_split(spec, "train")
    np.testing.assert_array_equal(images, written["train"][0][:13])
    np.testing.assert_array_equal(labels, written["train"][1][:13])
    np.testing.assert_array_equal(
        sources.subset_indices(np.arange(50) % 10, {"train": 4, "how": "first"}, "train"), [0, 1, 2, 3]
    )


@pytest.mark.parametrize(
    "counts,n,expected",
    [([5, 3, 2], 4, [2, 1, 1]), ([13, 5, 2], 7, [4, 2, 1]), ([50, 30, 20], 10, [5, 3, 2]), ([1, 1, 98], 3, [0, 0, 3])],
)
def test_stratified_largest_remainder_exact(counts, n, expected):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    index = sources.subset_indices(labels, {"train": n, "how": "stratified", "seed": 3}, "train")
    np.testing.assert_array_equal(np.bincount(labels[index], minlength=len(counts)), expected)
    largest_remainder_ok(labels, index, n)


def test_stratified_subset_properties(cifar, small_full_sizes):
    root, written = cifar
    full_images, full_labels = written["train"]
    assert len(np.unique(np.bincount(full_labels))) > 1  # uneven classes: proportions matter
    subset = {"train": 37, "test": 11, "how": "stratified", "seed": 0}
    images, labels, _ = sources.load_split(spec_for("cifar10", root, subset), "train")
    index = sources.subset_indices(full_labels, subset, "train")
    assert len(index) == 37 and len(np.unique(index)) == 37
    assert np.all(np.diff(index) > 0) and index.min() >= 0 and index.max() < len(full_labels)
    np.testing.assert_array_equal(images, full_images[index])
    np.testing.assert_array_equal(labels, full_labels[index])
    largest_remainder_ok(full_labels, index, 37)
    # deterministic for a seed (through loading too), different for another seed
    again, again_labels, _ = sources.load_split(spec_for("cifar10", root, dict(subset)), "train")
    np.testing.assert_array_equal(again, images)
    other = sources.subset_indices(full_labels, dict(subset, seed=1), "train")
    assert not np.array_equal(other, index)
    largest_remainder_ok(full_labels, other, 37)
    np.testing.assert_array_equal(
        np.bincount(full_labels[other], minlength=10), np.bincount(labels, minlength=10)
    )  # same quotas, other samples


def test_stratified_is_the_default_and_whole_split_when_large(cifar, small_full_sizes):
    labels = cifar[1]["train"][1]
    default = sources.subset_indices(labels, {"train": 20, "seed": 4}, "train")
    explicit = sources.subset_indices(labels, {"train": 20, "seed": 4, "how": "stratified"}, "train")
    np.testing.assert_array_equal(default, explicit)
    assert sources.subset_indices(labels, {"train": len(labels)}, "train") is None
    assert sources.subset_indices(labels, {"test": 5}, "train") is None
    assert sources.subset_indices(labels, None, "train") is None


# ----------------------------------------------------------------------------- missing files


HOW_TO = {
    "cifar10": ["cifar-10-batches-py", "download: true"],
    "mnist": ["download: true"],
    "fashion_mnist": ["apt-get install dataset-fashion-mnist", "download: true"],
}


@pytest.mark.parametrize("source", ["cifar10", "mnist", "fashion_mnist"])
def test_missing_files_name_where_and_how(tmp_path, source):
    root = tmp_path / "wrong-root"
    spec = spec_for(source, root)
    if source == "cifar10":
        looked = [str(root / "cifar-10-batches-py")]
    else:
        folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[source]
        looked = [str(root), str(root / folder / "raw")]
    for call in (lambda: sources.check_available(spec), lambda: sources.load_split(spec, "test")):
        with pytest.raises(RethinkError) as info:
            call()
        message = str(info.value)
        for text in looked + HOW_TO[source]:
            assert text in message, (text, message)
        assert "not found" in message and spec["name"] in message
    sources.check_available(dict(spec, download=True))  # a download would fetch them: no error


def test_missing_test_split_only(tmp_path, small_full_sizes):
    rf.write_cifar10(tmp_path, CIFAR_PER_BATCH, seed=0)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    spec = spec_for("cifar10", tmp_path)
    with pytest.raises(RethinkError, match="test files \\['test_batch'\\] were not found"):
        sources.check_available(spec)
    assert len(sources.load_split(spec, "train")[1]) == 5 * CIFAR_PER_BATCH


# ----------------------------------------------------------------------------- truncated / corrupt


@pytest.mark.parametrize("source", ["cifar10", "mnist"])
def test_truncated_archive(cifar, mnist_tv, source):
    root, written = cifar if source == "cifar10" else mnist_tv
    n_train, n_test = len(written["train"][1]), len(written["test"][1])
    with pytest.raises(RethinkError, match="look truncated") as info:
        sources.load_split(spec_for(source, root), "train")
    assert f"holds {n_train} samples, expected {sources.FULL_SIZES[source]['train']}" in str(info.value)
    assert "subset" in str(info.value)
    subset = {"train": n_train, "test": n_test - 1, "how": "stratified", "seed": 0}
    spec = spec_for(source, root, subset)
    assert len(sources.load_split(spec, "train")[1]) == n_train
    assert len(sources.load_split(spec, "test")[1]) == n_test - 1
    with pytest.raises(RethinkError, match="look truncated"):  # a subset only for train
        sources.load_split(spec_for(source, root, {"train": 5}), "test")
    with pytest.raises(RethinkError, match="look truncated"):  # asks for more than is there
        sources.load_split(spec_for(source, root, {"train": n_train + 1}), "train")


def test_more_samples_than_the_real_dataset_rejected(tmp_path, small_full_sizes):
    rf.write_mnist(tmp_path, MNIST_TRAIN + 1, MNIST_TEST, seed=0, layout="flat")
    message = f"holds {MNIST_TRAIN + 1} samples, more than the real dataset's {MNIST_TRAIN}"
    with pytest.raises(RethinkError, match=message):
        sources.load_split(spec_for("mnist", tmp_path), "train")
    subset = {"train": MNIST_TRAIN, "how": "first"}  # not the real dataset, subset or not
    with pytest.raises(RethinkError, match=message):
        sources.load_split(spec_for("mnist", tmp_path, subset), "train")


def test_idx_data_shorter_than_header(tmp_path, small_full_sizes):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=0, layout="flat")
    path = written["files"]["train"][0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RethinkError, match="header says") as info:
        sources.load_split(spec_for("mnist", tmp_path), "train")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a pickle", "half"], ids=["garbage", "cut-short"])
def test_corrupt_cifar_pickle_names_the_file(tmp_path, content):
    rf.write_cifar10(tmp_path, 10, seed=0)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000] if content == "half" else content)
    with pytest.raises(RethinkError, match="not a CIFAR-10 python batch") as info:
        sources.load_split(spec_for("cifar10", tmp_path, {"train": 50}), "train")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("magic", ["00000d03", "00000903", "01000803", "08030000"])
@pytest.mark.parametrize("gz", [False, True])
def test_bad_idx_magic_names_the_file(tmp_path, small_full_sizes, magic, gz):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=0, layout="flat", gz=gz)
    path = written["files"]["test"][0]
    raw = rf.idx_bytes(written["test"][0])
    bad = bytes.fromhex(magic) + raw[4:]
    path.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(RethinkError, match="bad magic") as info:
        sources.load_split(spec_for("mnist", tmp_path), "test")
    assert str(path) in str(info.value)


def test_wrong_image_size_or_labels_rejected(tmp_path, small_full_sizes):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=0, layout="flat")
    image_path, label_path = written["files"]["test"]
    rf.write_idx(image_path, np.zeros((MNIST_TEST, 32, 32), np.uint8))
    with pytest.raises(RethinkError, match="do not match the expected"):
        sources.load_split(spec_for("mnist", tmp_path), "test")
    rf.write_idx(image_path, written["test"][0])
    rf.write_idx(label_path, np.full(MNIST_TEST, 10, np.uint8))
    with pytest.raises(RethinkError, match="labels outside 0..9"):
        sources.load_split(spec_for("mnist", tmp_path), "test")
    rf.write_idx(label_path, written["test"][1][:-1].astype(np.uint8))
    with pytest.raises(RethinkError, match="do not match"):
        sources.load_split(spec_for("mnist", tmp_path), "test")


def test_unknown_split_rejected(cifar):
    with pytest.raises(RethinkError, match="'valid' is not one of"):
        sources.load_split(spec_for("cifar10", cifar[0]), "valid")


# Damaged raw files: whatever is wrong inside them, the error is a RethinkError naming the file.


def test_truncated_gzip_download_names_the_file(tmp_path, small_full_sizes):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=0, layout="flat", gz=True)
    path = written["files"]["train"][0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted download
    with pytest.raises(RethinkError) as info:
        sources.load_split(spec_for("mnist", tmp_path), "train")
    assert str(path) in str(info.value)


def test_idx_file_shorter_than_its_header_names_the_file(tmp_path, small_full_sizes):
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=0, layout="flat")
    path = written["files"]["test"][0]
    path.write_bytes(bytes.fromhex("00000803"))
    with pytest.raises(RethinkError) as info:
        sources.load_split(spec_for("mnist", tmp_path), "test")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [{"labels": [1]}, {"labels": [1], "data": np.zeros((1, 3000), np.uint8)}, [1, 2]],
    ids=["no-data-key", "wrong-row-length", "not-a-dict"],
)
def test_unpicklable_but_wrong_cifar_batch_names_the_file(tmp_path, content):
    rf.write_cifar10(tmp_path, 10, seed=0)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as fh:
        pickle.dump(content, fh, protocol=2)
    with pytest.raises(RethinkError) as info:
        sources.load_split(spec_for("cifar10", tmp_path, {"test": 1}), "test")
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- verified before parsed


def idx_content(path):
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def md5(data):
    return hashlib.md5(data).hexdigest()


@pytest.mark.parametrize(
    "verify, refusal",
    [
        (True, r"md5 [0-9a-f]{32} is not the released cifar10 file's c99cafc152244af753f735de768cd75f"),
        (False, r"refused to call (posix|nt|os)\.system, which no CIFAR-10 batch holds"),
    ],
)
def test_a_crafted_cifar_pickle_runs_no_code(tmp_path, verify, refusal):
    marker = tmp_path / "code-ran"
    path = rf.write_crafted_cifar10(tmp_path, marker)
    pickle.loads(path.read_bytes())  # what a plain pickle.load does with it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(RethinkError, match=refusal) as info:
        sources.load_split(spec_for("cifar10", tmp_path, {"train": 50}, verify=verify), "train")
    assert str(info.value).startswith(f"{path}: ") and not marker.exists()


def test_cifar10_batches_pickled_by_python2_still_load(tmp_path):
    """The released batches name numpy's array constructor numpy.core.multiarray._reconstruct."""
    written = rf.write_cifar10(tmp_path, 10, seed=3)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    images, labels, _ = sources.load_split(spec_for("cifar10", tmp_path, {"test": 10}), "test")
    np.testing.assert_array_equal(images, written["test"][0])
    np.testing.assert_array_equal(labels, written["test"][1])


@pytest.mark.parametrize("layout, gz", [("flat", False), ("flat", True), ("torchvision", False)])
def test_idx_files_are_checked_against_the_released_md5(tmp_path, small_full_sizes, monkeypatch, layout, gz):
    """The helpers' files registered as the released ones load; one flipped pixel, gzipped or
    not, is refused before parsing, and read as it is with verify off."""
    written = rf.write_mnist(tmp_path, MNIST_TRAIN, MNIST_TEST, seed=0, layout=layout, gz=gz)
    files = written["files"]["train"] + written["files"]["test"]
    released = {path.name.removesuffix(".gz"): md5(idx_content(path)) for path in files}
    monkeypatch.setitem(sources.RELEASED_MD5, "mnist", released)
    images, _, _ = sources.load_split(spec_for("mnist", tmp_path, verify=True), "test")
    np.testing.assert_array_equal(images[:, 0], written["test"][0])

    path = written["files"]["test"][0]
    flipped = bytearray(idx_content(path))
    flipped[16 + 100] ^= 0x01  # pixel 100 of image 0
    path.write_bytes(gzip.compress(bytes(flipped)) if gz else bytes(flipped))
    with pytest.raises(
        RethinkError,
        match=rf"{path}: md5 {md5(flipped)} is not the released mnist file's "
        rf"{released[path.name.removesuffix('.gz')]}; the file is corrupt",
    ):
        sources.load_split(spec_for("mnist", tmp_path, verify=True), "test")
    images, _, _ = sources.load_split(spec_for("mnist", tmp_path, verify=False), "test")
    assert images[0, 0].flat[100] == written["test"][0][0].flat[100] ^ 0x01


def test_fashion_mnist_uncompressed_files_are_verified_too(fashion, tmp_path):
    """torchvision's layout keeps the idx files uncompressed: they match the released md5s, and
    a flipped byte in one does not."""
    spec, loaded = fashion
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in rf.IDX_FILES["test"]:
        (raw / name).write_bytes(gzip.decompress((FASHION_MNIST_ROOT / f"{name}.gz").read_bytes()))
    local = dict(spec, root=str(tmp_path))
    images, labels, _ = sources.load_split(local, "test")
    np.testing.assert_array_equal(images, loaded["test"][0])
    labels_file = raw / rf.IDX_FILES["test"][1]
    content = bytearray(labels_file.read_bytes())
    content[8] = (content[8] + 1) % 10  # one edited label
    labels_file.write_bytes(bytes(content))
    with pytest.raises(
        RethinkError,
        match=rf"{labels_file}: md5 [0-9a-f]{{32}} is not the released fashion_mnist "
        r"file's 15d484375f8d13e6eb1aabb0c3f46965",
    ):
        sources.load_split(local, "test")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_seeded():
    a_images, a_labels, a_prov = sources.load_split(synthetic_spec(300, 200, seed=0), "train")
    b_images, b_labels, b_prov = sources.load_split(synthetic_spec(300, 200, seed=0), "train")
    c_images, c_labels, c_prov = sources.load_split(synthetic_spec(300, 200, seed=1), "train")
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert a_prov == b_prov and a_prov["source_sha256"] != c_prov["source_sha256"]
    assert not np.array_equal(a_images, c_images) and not np.array_equal(a_labels, c_labels)


@pytest.mark.parametrize("shape,classes", [((3, 32, 32), 10), ((1, 28, 28), 4), ((3, 30, 26), 7)])
def test_synthetic_shape_dtype_classes(shape, classes):
    spec = synthetic_spec(n_train=103, n_test=41, shape=shape, classes=classes)
    train_images, train_labels, _ = sources.load_split(spec, "train")
    test_images, test_labels, _ = sources.load_split(spec, "test")
    assert train_images.shape == (103, *shape) and test_images.shape == (41, *shape)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int64
    for labels, n in ((train_labels, 103), (test_labels, 41)):
        counts = np.bincount(labels, minlength=classes)
        assert len(counts) == classes and counts.min() >= n // classes and counts.max() <= -(-n // classes)
    assert train_images.std() > 20  # not constant
    assert not np.array_equal(train_images[:41], test_images)
    assert not np.array_equal(train_labels[:41], test_labels)


def test_synthetic_is_learnable():
    spec = synthetic_spec(seed=7, n_train=500, n_test=300)
    train_images, train_labels, _ = sources.load_split(spec, "train")
    test_images, test_labels, _ = sources.load_split(spec, "test")
    x_train = train_images.reshape(len(train_images), -1).astype(np.float64)
    x_test = test_images.reshape(len(test_images), -1).astype(np.float64)
    means = np.stack([x_train[train_labels == k].mean(axis=0) for k in range(10)])
    distances = ((x_test[:, None, :] - means[None]) ** 2).sum(axis=2)
    accuracy = np.mean(distances.argmin(axis=1) == test_labels)
    assert accuracy > 0.5, accuracy  # chance is 0.1
    # labels carry the signal: shuffled labels leave a nearest-mean classifier near chance
    shuffled = np.random.default_rng(0).permutation(train_labels)
    means = np.stack([x_train[shuffled == k].mean(axis=0) for k in range(10)])
    distances = ((x_test[:, None, :] - means[None]) ** 2).sum(axis=2)
    assert np.mean(distances.argmin(axis=1) == test_labels) < accuracy - 0.3


def test_synthetic_subset():
    spec = synthetic_spec(n_train=200, n_test=100, subset={"train": 50, "test": 20, "how": "stratified", "seed": 0})
    full_images, full_labels = sources.synthetic_split(spec["synthetic"], "train")
    images, labels, _ = sources.load_split(spec, "train")
    index = sources.subset_indices(full_labels, spec["subset"], "train")
    np.testing.assert_array_equal(images, full_images[index])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [5] * 10)
