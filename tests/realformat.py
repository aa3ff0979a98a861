"""Write small datasets in the exact on-disk formats of the real ones (test helpers).

- CIFAR-10, as torchvision's `cifar-10-batches-py` folder holds it (the "python version" of
  https://www.cs.toronto.edu/~kriz/cifar.html): pickles (protocol 2) of dicts with the keys
  'batch_label' (str), 'labels' (list of int), 'data' (uint8 N x 3072: per image the 1024
  red values, then green, then blue, each plane row-major 32 x 32) and 'filenames' (list of
  bytes); `batches.meta` with 'label_names', 'num_cases_per_batch', 'num_vis'.
- MNIST-style idx files (http://yann.lecun.com/exdb/mnist/): magic 0x00000800 | ndim (unsigned
  bytes), then one big-endian uint32 per dimension, then the data; gzipped when the name
  ends in .gz. Either flat in `root` (the Debian `dataset-fashion-mnist` layout) or in
  torchvision's `root/MNIST/raw/` layout.

`write_crafted_cifar10` writes a batch that runs a command when a plain pickle.load reads it.

Labels always hold every class at least once (on top of an uneven random draw), so a
stratified subset has real, unequal class proportions to match.
"""

import gzip
import os
import pathlib
import pickle
import shlex
import struct

import numpy as np

CIFAR_LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def make_labels(rng, n, classes=10):
    """n labels holding every class (needs n >= classes), unevenly distributed, shuffled."""
    if n < classes:
        raise ValueError(f"need at least {classes} samples to hold every class, got {n}")
    skew = np.linspace(1.0, 3.0, classes)  # class k is drawn ~(1 + 2k/9)x as often as class 0
    extra = rng.choice(classes, size=n - classes, p=skew / skew.sum())
    return rng.permutation(np.concatenate([np.arange(classes), extra])).astype(np.int64)


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_rows(images):
    """uint8 N x 3 x 32 x 32 -> the N x 3072 rows of a CIFAR batch (R plane, G plane, B plane)."""
    images = np.asarray(images, dtype=np.uint8)
    n = len(images)
    planes = [images[:, channel, :, :].reshape(n, 32 * 32) for channel in range(3)]
    return np.ascontiguousarray(np.concatenate(planes, axis=1))


def write_cifar_batch(path, images, labels, batch_label, first_index=0):
    """One batch file exactly as the real ones: a protocol-2 pickle of a str-keyed dict."""
    labels = [int(label) for label in labels]
    batch = {
        "batch_label": batch_label,
        "labels": labels,
        "data": cifar_rows(images),
        "filenames": [
            f"{CIFAR_LABEL_NAMES[label]}_s_{first_index + i:06d}.png".encode() for i, label in enumerate(labels)
        ],
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def write_cifar10(root, n_per_batch, seed):
    """Write root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}.

    Each of the six batches holds `n_per_batch` images. Returns
    {"train": (images N x 3 x 32 x 32 uint8, labels int64), "test": (...)}, the train arrays
    being the five batches concatenated in order.
    """
    folder = pathlib.Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {"train": ([], []), "test": ([], [])}
    batches = [(f"data_batch_{i}", f"training batch {i} of 5", "train") for i in range(1, 6)]
    batches.append(("test_batch", "testing batch 1 of 1", "test"))
    for number, (filename, batch_label, split) in enumerate(batches):
        images = rng.integers(0, 256, size=(n_per_batch, 3, 32, 32), dtype=np.uint8)
        labels = make_labels(rng, n_per_batch)
        write_cifar_batch(folder / filename, images, labels, batch_label, number * n_per_batch)
        written[split][0].append(images)
        written[split][1].append(labels)
    meta = {"label_names": list(CIFAR_LABEL_NAMES), "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return {split: (np.concatenate(ims), np.concatenate(labs)) for split, (ims, labs) in written.items()}


# ----------------------------------------------------------------------------- idx / MNIST


def idx_bytes(array):
    """The bytes of an unsigned-byte idx file holding `array`."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"idx writer only does uint8, got {array.dtype}")
    header = struct.pack(">I", 0x00000800 | array.ndim) + b"".join(struct.pack(">I", dim) for dim in array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path, array):
    """Write an idx file; gzip-compressed when the path ends with .gz."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist(root, n_train, n_test, seed, layout="torchvision", gz=False, folder="MNIST"):
    """Write the four MNIST idx files.

    layout="torchvision": in root/<folder>/raw/ uncompressed, as torchvision leaves them after
    extracting (with gz=True the .gz archives are written beside them too, as a torchvision
    download also leaves those). layout="flat": directly in root, gzipped when gz=True
    (the Debian package layout). Returns {"train": (images N x 28 x 28 uint8, labels int64),
    "test": (...)} and, under "files", the paths written per split.
    """
    if layout not in ("torchvision", "flat"):
        raise ValueError(f"layout must be 'torchvision' or 'flat', got {layout!r}")
    rng = np.random.default_rng(seed)
    where = pathlib.Path(root) / folder / "raw" if layout == "torchvision" else pathlib.Path(root)
    result = {"files": {}}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = make_labels(rng, n)
        paths = []
        for name, array in zip(IDX_FILES[split], (images, labels.astype(np.uint8))):
            if layout == "torchvision":
                paths.append(write_idx(where / name, array))
                if gz:
                    write_idx(where / f"{name}.gz", array)
            else:
                paths.append(write_idx(where / (f"{name}.gz" if gz else name), array))
        result[split] = (images, labels)
        result["files"][split] = paths
    return result


class RunsCommand:
    """Unpickles into os.system(command): what any pickle can make a plain pickle.load do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_crafted_cifar10(root, marker):
    """CIFAR-10 files whose data_batch_1 creates the file `marker` when unpickled by pickle.load
    (a harmless stand-in for a malicious download). Returns that batch's path."""
    write_cifar10(root, 10, seed=0)
    path = pathlib.Path(root) / "cifar-10-batches-py" / "data_batch_1"
    batch = {
        "batch_label": "training batch 1 of 5",
        "labels": [0] * 10,
        "data": RunsCommand(f"touch {shlex.quote(str(marker))}"),
        "filenames": [],
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    return path


# ----------------------------------------------------------------------------- ImageNet

IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def _jpeg_image(rng, label, classes):
    """A real JPEG of a random size (ImageNet's vary), coloured by class so a model can learn it."""
    from PIL import Image

    h, w = (int(v) for v in rng.integers(60, 140, size=2))
    base = np.array([255 * label / max(classes - 1, 1), 128, 255 - 255 * label / max(classes - 1, 1)])
    pixels = np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_devkit(root, val_wnids, wnids):
    """ILSVRC2012_devkit_t12/data: meta.mat (synsets struct array; leaves have num_children 0,
    plus one inner node as the real file has) and the ground truth (ILSVRC2012_ID per val image)."""
    import scipy.io

    data = pathlib.Path(root) / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    ids = {wnid: i + 1 for i, wnid in enumerate(sorted(wnids))}
    synsets = np.zeros((len(wnids) + 1, 1), dtype=[(f, object) for f in fields])
    for row, wnid in enumerate(sorted(wnids)):
        synsets[row, 0] = (ids[wnid], wnid, f"class {wnid}", "", 0, np.zeros(0), 0)
    synsets[len(wnids), 0] = (len(wnids) + 1, "n00001740", "entity", "", len(wnids), np.arange(1, 5), 9)
    scipy.io.savemat(str(data / "meta.mat"), {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in val_wnids))


def write_imagenet(root, n_train_per_class=6, n_val=8, val_layout="folders", seed=0, wnids=IMAGENET_WNIDS):
    """An ImageNet root in the real layout: train/<wnid>/<wnid>_<i>.JPEG; val/ either in class
    folders or flat (ILSVRC2012_val_<8 digits>.JPEG) with the devkit. Like the real train split,
    one '.JPEG' is a PNG and one is a CMYK JPEG. Returns {relative path: wnid} of every image."""
    root, rng = pathlib.Path(root), np.random.default_rng(seed)
    truth = {}
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_train_per_class):
            image, name = _jpeg_image(rng, k, len(wnids)), f"train/{wnid}/{wnid}_{i}.JPEG"
            if (k, i) == (0, 1):
                image.save(root / name, format="PNG")
            elif (k, i) == (1, 2):
                image.convert("CMYK").save(root / name, format="JPEG", quality=90)
            else:
                image.save(root / name, format="JPEG", quality=int(rng.integers(70, 95)))
            truth[name] = wnid
    val_labels = np.arange(n_val) % len(wnids)
    rng.shuffle(val_labels)
    val_wnids = [wnids[k] for k in val_labels]
    for i, (k, wnid) in enumerate(zip(val_labels, val_wnids)):
        name = (
            f"val/{wnid}/ILSVRC2012_val_{i + 1:08d}.JPEG"
            if val_layout == "folders"
            else (f"val/ILSVRC2012_val_{i + 1:08d}.JPEG")
        )
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _jpeg_image(rng, int(k), len(wnids)).save(root / name, format="JPEG", quality=85)
        truth[name] = wnid
    if val_layout == "flat":
        write_devkit(root, val_wnids, wnids)
    return truth
