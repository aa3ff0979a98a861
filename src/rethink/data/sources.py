"""Raw datasets in their real on-disk formats -> (uint8 images N x C x H x W, int64 labels).

Supported sources:
- `fashion_mnist`, `mnist`: the idx files (gzipped or not), either flat in `root` (the Debian
  package `dataset-fashion-mnist` layout) or in torchvision's `root/<Name>/raw/` layout;
- `cifar10`: torchvision's `cifar-10-batches-py` pickles under `root`;
- `synthetic`: a seeded CIFAR-shaped dataset with class structure, for tests and benchmarks;
- `imagenet`: the ILSVRC2012 layout (train/<wnid>/, val/ in class folders or flat with the
  devkit's ground truth). It is *streamed*: `rethink.data.imagenet` indexes a split and writes
  shards of JPEG bytes, and the trainer streams them (`rethink.train.stream`) instead of loading
  a split into memory; `load_split` refuses it.

Every raw file is checked against the md5 of the released dataset's file before it is parsed
(unless the dataset's config says `verify: false`), and CIFAR-10's pickles are read by an
unpickler that can build the arrays and lists of a batch and nothing else: no code from a
dataset file ever runs. Nothing here downloads: rethink.data.download does, through torchvision
(which verifies its own checksums), when the dataset's config says `download: true`. Everything
a Snakefile needs at parse time (split sizes, whether files are present) works without torch and
without reading the data.
"""

import gzip
import hashlib
import io
import json
import pathlib
import pickle
import zlib

import numpy as np

from rethink import fileio
from rethink.errors import RethinkError

SPLITS = ("train", "test")
NUM_CLASSES = 10

# Facts about the real datasets: a loaded split must have exactly this many samples unless
# the config asks for a subset (a shorter file is a truncated download, not a smaller dataset).
FULL_SIZES = {
    "fashion_mnist": {"train": 60000, "test": 10000},
    "mnist": {"train": 60000, "test": 10000},
    "cifar10": {"train": 50000, "test": 10000},
    "imagenet": {"train": 1281167, "test": 50000},
}
SHAPES = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet": (3, 299, 299)}
DEFAULT_ROOTS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "data/mnist",
    "cifar10": "data/cifar10",
    "imagenet": "data/imagenet",
}
STREAMED = ("imagenet",)  # sources written as JPEG shards and streamed by the trainer

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# md5 of every raw file of the released datasets, uncompressed (a .gz file is checked after
# decompression, so the Debian package's recompressed Fashion-MNIST archives match too):
# CIFAR-10 as torchvision's CIFAR10.train_list/test_list give them; the idx files' published
# md5s (the Fashion-MNIST ones are also what the Debian package's files decompress to).
RELEASED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
}
TORCHVISION_CLASS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGENET_DIRS = {"train": "train", "test": "val"}
_HOW_TO_GET = {
    "fashion_mnist": "install the Debian package (apt-get install dataset-fashion-mnist), "
    "set {key}.root to a directory holding the four idx .gz files, or set {key}.download: true",
    "mnist": "set {key}.root to torchvision's MNIST root (or a directory with the four idx "
    "files), or set {key}.download: true where there is internet",
    "cifar10": "set {key}.root to the directory that holds torchvision's `cifar-10-batches-py` "
    "folder, or set {key}.download: true where there is internet",
    "imagenet": "set {key}.root to torchvision's ImageNet root (train/ and val/ class folders); "
    "ImageNet cannot be downloaded automatically",
}


# ----------------------------------------------------------------------------- parse time


def shape(spec):
    """(C, H, W) of a dataset spec's images."""
    if spec["source"] == "synthetic":
        return tuple(spec["synthetic"]["shape"])
    return SHAPES[spec["source"]]


def streamed(spec):
    """Whether a dataset is indexed, written as JPEG shards and streamed (ImageNet) rather than loaded."""
    return spec["source"] in STREAMED


def shard_size(spec, shards_cfg):
    """Samples per shard file: the dataset's `stream.shard_size` when streamed, else shards.size."""
    return spec["stream"]["shard_size"] if streamed(spec) else shards_cfg["size"]


def num_classes(spec):
    return spec["synthetic"]["classes"] if spec["source"] == "synthetic" else NUM_CLASSES


def split_size(spec, split):
    """Number of samples a split has after subsetting, known without reading any file."""
    if spec["source"] == "synthetic":
        full = spec["synthetic"][f"n_{split}"]
    else:
        full = FULL_SIZES[spec["source"]][split]
    wanted = (spec.get("subset") or {}).get(split)
    return full if wanted is None else min(int(wanted), full)


def root_of(spec):
    return pathlib.Path(spec.get("root") or DEFAULT_ROOTS.get(spec["source"], "."))


def source_files(spec, split):
    """The raw files that hold one split, or a RethinkError saying where we looked."""
    source, root = spec["source"], root_of(spec)
    if source == "synthetic":
        return []
    if source == "imagenet":
        folder = root / IMAGENET_DIRS[split]
        if folder.is_dir():
            return [folder]
        looked = [str(folder)]
    elif source == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [folder / name for name in _CIFAR_FILES[split]]
        if all(f.is_file() for f in files):
            return files
        looked = [str(folder)]
    else:
        looked, files = [], []
        for folder in (root, root / TORCHVISION_CLASS[source] / "raw"):
            looked.append(str(folder))
            found = [_first_existing(folder, name) for name in _IDX_FILES[split]]
            if all(found):
                return found
    names = {"cifar10": _CIFAR_FILES[split], "imagenet": [IMAGENET_DIRS[split] + "/"]}.get(
        source, list(_IDX_FILES[split])
    )
    how = _HOW_TO_GET[source].format(key="datasets." + spec["name"])
    if spec.get("download"):  # jobs never download: the workflow's local rule data_download does, first
        how = f"fetch them where there is internet: python -m rethink.data.download --source {source} --root {root}"
    raise RethinkError(
        f"dataset {spec['name']!r} (source {source}): the {split} files {names} were not found "
        f"in {' or '.join(looked)}; {how}."
    )


def _first_existing(folder, name):
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def check_available(spec):
    """Fail early (before any job runs) when a dataset cannot be read or downloaded."""
    if spec["source"] == "synthetic" or spec.get("download"):
        return
    for split in SPLITS:
        source_files(spec, split)


# ----------------------------------------------------------------------------- loading


def load_split(spec, split):
    """Load one split -> (images uint8 N x C x H x W, labels int64 N, provenance dict)."""
    if split not in SPLITS:
        raise RethinkError(f"split {split!r} is not one of {list(SPLITS)}")
    source = spec["source"]
    if source == "imagenet":
        raise RethinkError(
            f"dataset {spec['name']!r}: ImageNet is streamed, not loaded into memory; its shards are "
            "written by `python -m rethink.data.prepare index|clean` (rethink.data.imagenet)"
        )
    if source == "synthetic":
        images, labels = synthetic_split(spec["synthetic"], split)
        provenance = {"source_sha256": _sha256_bytes(fileio.canonical_json(spec["synthetic"]).encode())}
    else:
        files = source_files(spec, split)
        contents = [_read_verified(spec, path) for path in files]
        images, labels = (_parse_cifar if source == "cifar10" else _parse_idx_pair)(files, contents)
        _check_loaded(spec, split, images, labels, files)
        provenance = {
            "source_files": json.dumps([str(f) for f in files]),
            "source_sha256": _sha256_files(files),
        }
    index = subset_indices(labels, spec.get("subset"), split)
    if index is not None:
        images, labels = images[index], labels[index]
    return np.ascontiguousarray(images), labels.astype(np.int64), provenance


def _check_loaded(spec, split, images, labels, files):
    expected_shape, full = SHAPES[spec["source"]], FULL_SIZES[spec["source"]][split]
    where = f"dataset {spec['name']!r} {split} split ({files[0].parent})"
    if images.shape[1:] != expected_shape or len(images) != len(labels):
        raise RethinkError(
            f"{where}: images {images.shape} / labels {labels.shape} do not match the expected N x {expected_shape}"
        )
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise RethinkError(f"{where}: no samples, or labels outside 0..{NUM_CLASSES - 1}")
    needed = split_size(spec, split)
    subset = (spec.get("subset") or {}).get(split)
    if len(labels) > full:
        raise RethinkError(f"{where}: holds {len(labels)} samples, more than the real dataset's {full}")
    if len(labels) < needed or (subset is None and len(labels) != full):
        raise RethinkError(
            f"{where}: holds {len(labels)} samples, expected {full}; the files look "
            f"truncated (download again), or set datasets.{spec['name']}.subset to use fewer samples"
        )


def _read_raw(path):
    """A raw file's bytes, decompressed when it is gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise RethinkError(
            f"{path}: cannot read ({err}); the file looks truncated or corrupt (download again)"
        ) from None


def _read_verified(spec, path):
    """A raw file's content, checked against the released file's md5 before anything parses it."""
    content = _read_raw(path)
    if spec.get("verify", True):
        expected = RELEASED_MD5[spec["source"]][path.name.removesuffix(".gz")]
        actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
        if actual != expected:
            raise RethinkError(
                f"{path}: md5 {actual} is not the released {spec['source']} file's {expected}; the file is "
                f"corrupt or not the original (download it again), or set datasets.{spec['name']}.verify: "
                "false to use a modified copy"
            )
    return content


def _parse_idx_pair(files, contents):
    images, labels = (_parse_idx(content, path) for path, content in zip(files, contents))
    return images[:, None, :, :], labels.astype(np.int64)


def _parse_idx(raw, path):
    """An idx file's (the MNIST format's) bytes -> uint8 array; `path` names the file in errors."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise RethinkError(f"{path}: not an unsigned-byte idx file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise RethinkError(f"{path}: shorter than its own idx header; the file looks truncated (download again)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise RethinkError(f"{path}: header says {dims} but holds {data.size} bytes of data")
    return data.reshape(dims)


class _BatchUnpickler(pickle.Unpickler):
    """Builds what a CIFAR-10 batch holds (dicts, lists, strings, numpy arrays) and nothing else.

    Unpickling calls whatever importable function the file names (`os.system` too), so every
    global outside a batch's few is refused before it is looked up. The real batches are Python 2
    pickles of numpy arrays (`numpy.core.multiarray`); Python 3 writes `numpy._core` and `_codecs`.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to call {module}.{name}, which no CIFAR-10 batch holds")
        return super().find_class(module, name)


def _parse_cifar(files, contents):
    images, labels = [], []
    for path, content in zip(files, contents):
        try:
            batch = _BatchUnpickler(io.BytesIO(content), encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except Exception as err:  # noqa: BLE001 - whatever fails here, the file is not a batch
            raise RethinkError(f"{path}: not a CIFAR-10 python batch ({err!r})") from None
    return np.concatenate(images), np.concatenate(labels)


# ----------------------------------------------------------------------------- synthetic


def synthetic_split(params, split):
    """A seeded, learnable CIFAR-shaped dataset: per-class smooth templates plus noise.

    Class templates are shared by both splits (so a model can generalize); the per-sample
    noise and label order come from split-specific streams.
    """
    c, h, w = params["shape"]
    n, classes = params[f"n_{split}"], params["classes"]
    templates_rng = np.random.default_rng([params["seed"], 0])
    coarse = templates_rng.uniform(0, 255, size=(classes, c, 4, 4))
    templates = np.kron(coarse, np.ones((1, 1, -(-h // 4), -(-w // 4))))[:, :, :h, :w]
    rng = np.random.default_rng([params["seed"], 1 + SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    noise = rng.normal(0.0, params["noise_std"], size=(n, c, h, w))
    images = np.clip(templates[labels] + noise, 0, 255).round().astype(np.uint8)
    return images, labels


# ----------------------------------------------------------------------------- subsetting


def subset_indices(labels, subset, split):
    """Indices of the configured subset of a split (sorted), or None for the whole split.

    `first`: the first n samples. `stratified`: n samples whose class proportions match the
    split's (largest-remainder rounding), drawn with the subset's seed.
    """
    n = (subset or {}).get(split)
    if n is None or n >= len(labels):
        return None
    if subset.get("how", "stratified") == "first":
        return np.arange(n)
    rng = np.random.default_rng([subset.get("seed", 0), SPLITS.index(split)])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - take), kind="stable")
    take[remainder_order[: n - take.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == k), size=t, replace=False) for k, t in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


# ----------------------------------------------------------------------------- provenance


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _sha256_files(files):
    digest = hashlib.sha256()
    for path in files:
        digest.update(pathlib.Path(path).name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
