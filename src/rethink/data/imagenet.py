"""ImageNet (ILSVRC2012) in its standard layout -> an index per split -> HDF5 shards of JPEG bytes.

Layout read (torchvision's ImageNet root, or the extracted archives):
  train/<wnid>/*.JPEG                      the class is the folder; classes = sorted wnids of train/
  val/<wnid>/*.JPEG                        the same layout, or
  val/ILSVRC2012_val_<8 digits>.JPEG flat  with the devkit's ground truth:
      <root>/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt  (one ILSVRC2012_ID per
      line, in image-number order) and .../data/meta.mat (the synsets: ILSVRC2012_ID -> WNID), read
      as torchvision's parse_devkit_archive reads them.

Two steps, so that no process goes through 1.28M images and nothing lists them at Snakefile parse
time: `write_index` lists a split once (one job; the listing is the index file, sorted, subsetted
as the config says, then shuffled with a recorded seed so that every shard holds a random sample
of all classes); then each shard holds `stream.shard_size` consecutive index entries
(`shard_arrays`), written by `rethink.data.prepare`, one job per `stream.shards_per_job`
consecutive shards. A shard stores the encoded JPEG bytes, not decoded pixels (README, "Deviations
and choices": 2.3x smaller than 299x299 uint8 at ImageNet's mean size, and the random
crop-and-resize needs the full image):

  jpeg      flat uint8, every sample's JPEG bytes one after another (stored uncompressed: JPEG is)
  offsets   int64 N + 1: sample i is jpeg[offsets[i]:offsets[i + 1]]
  labels    int64 N
  sizes     int32 N x 2: each image's height and width (decoded once when the shard is written)

Every image is decoded when its shard is written: a file that does not decode stops the job naming
it, and the few ImageNet files that are not RGB JPEGs (one PNG, 22 CMYK JPEGs in train/) are
re-encoded once as RGB JPEGs (quality `REENCODE_QUALITY`), so the reader needs one decoder only.
"""

import hashlib
import io
import json
import pathlib

import numpy as np

from rethink import fileio
from rethink.data import sources
from rethink.errors import RethinkError
from rethink.progress import Progress

EXTENSIONS = (".jpeg", ".jpg", ".png")  # lowercased suffixes of image files in the class folders
DEVKIT = pathlib.Path("ILSVRC2012_devkit_t12") / "data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
REENCODE_QUALITY = 95  # the few non-RGB-JPEG files: high quality, so re-encoding loses little
SHARD_FORMAT = "jpeg"  # shard attribute `format`: the trainer streams these instead of loading them


def _is_image(path):
    return path.suffix.lower() in EXTENSIONS and path.is_file()


def _images_in(folder):
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _class_folders(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _named(paths, limit=3):
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(map(str, paths[:limit])) + more


def list_classes(root):
    """The classes: the sorted wnids of train/'s folders. Each must hold an image: an empty folder
    would be a class without a sample, one more output of the classifier (num_classes)."""
    train = pathlib.Path(root) / "train"
    folders = _class_folders(train) if train.is_dir() else []
    if not folders:
        raise RethinkError(f"{train}: no class folders (train/<wnid>/*.JPEG); is this an ImageNet root?")
    empty = [f for f in folders if not any(map(_is_image, f.iterdir()))]  # stops at a folder's first image
    if empty:
        raise RethinkError(
            f"{_named(empty)}: class folder without images ({', '.join(EXTENSIONS)}); every folder of {train} is a "
            "class, so remove it or put its images back"
        )
    return [f.name for f in folders]


def list_split(root, split):
    """-> (classes: sorted wnids, files: paths relative to root, labels: int64), file order sorted.
    Both splits have the classes of train/, each with images."""
    root = pathlib.Path(root)
    classes = list_classes(root)
    position = {wnid: k for k, wnid in enumerate(classes)}
    folder = root / sources.IMAGENET_DIRS[split]
    if not folder.is_dir():
        raise RethinkError(f"{folder}: not found; the {split} split of ImageNet lives there")
    files, labels = [], []
    class_folders = _class_folders(folder)
    if class_folders:
        with Progress(f"listing {split}", len(class_folders), "folders") as bar:
            for class_folder in class_folders:
                if class_folder.name not in position:
                    raise RethinkError(f"{class_folder}: class {class_folder.name!r} has no folder in {root / 'train'}")
                images = _images_in(class_folder)
                files += [str(p.relative_to(root)) for p in images]
                labels += [position[class_folder.name]] * len(images)
                bar.update()
        where = f"{folder}/<wnid>/"
    else:
        images = _images_in(folder)
        wnids = _devkit_val_wnids(root, len(images))
        unknown = sorted(set(wnids) - set(position))
        if unknown:
            raise RethinkError(
                f"{root / DEVKIT}: ground-truth classes {unknown[:3]} have no folder in {root / 'train'}"
            )
        files = [str(p.relative_to(root)) for p in images]
        labels = [position[w] for w in wnids]
        where = f"{root / DEVKIT / GROUND_TRUTH}"
    if not files:
        raise RethinkError(f"{folder}: no images (*.JPEG) found")
    absent = [classes[k] for k in sorted(set(range(len(classes))) - set(labels))]
    if absent:
        raise RethinkError(
            f"{where}: no {split} images of class {_named(absent)}, which train/ has; both splits must have the same "
            "classes (an empty or missing class folder?)"
        )
    return classes, files, np.asarray(labels, dtype=np.int64)


def _devkit_val_wnids(root, n_images):
    """The wnid of each flat val image, in file-name order, from the devkit (as torchvision reads it)."""
    import scipy.io

    data = root / DEVKIT
    truth, meta = data / GROUND_TRUTH, data / "meta.mat"
    if not truth.is_file() or not meta.is_file():
        raise RethinkError(
            f"{root / 'val'} holds images without class folders, so the devkit's ground truth is needed: "
            f"extract ILSVRC2012_devkit_t12.tar.gz into {root} (expected {truth} and {meta}), or sort val/ "
            "into class folders"
        )
    synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s[4]) == 0]  # num_children == 0: the 1000 classes
    wnid_of = {int(s[0]): str(s[1]) for s in leaves}
    ids = [int(line) for line in truth.read_text().split()]
    if len(ids) != n_images:
        raise RethinkError(f"{truth}: {len(ids)} ground-truth lines for {n_images} images in {root / 'val'}")
    missing = sorted(set(ids) - set(wnid_of))
    if missing:
        raise RethinkError(f"{truth}: ILSVRC2012_IDs {missing[:3]} are not classes in {meta}")
    return [wnid_of[i] for i in ids]


def write_index(spec, split, out):
    """List one split, check its size, subset and shuffle it, and write the index JSON atomically."""
    root = sources.root_of(spec)
    classes, files, labels = list_split(root, split)
    full, needed = sources.FULL_SIZES["imagenet"][split], sources.split_size(spec, split)
    subset = (spec.get("subset") or {}).get(split)
    if len(files) < needed or (subset is None and len(files) != full):
        raise RethinkError(
            f"dataset {spec['name']!r} {split} split ({root}): holds {len(files)} images, expected {full}; "
            f"the copy looks incomplete, or set datasets.{spec['name']}.subset.{split} to use fewer images"
        )
    index = sources.subset_indices(labels, spec.get("subset"), split)
    keep = np.arange(len(files)) if index is None else index
    # A fixed, recorded shuffle: shards are consecutive index entries, so each holds all classes.
    order = keep[np.random.default_rng([spec["stream"]["shuffle_seed"], 7]).permutation(len(keep))]
    index_data = {
        "dataset": spec["name"],
        "split": split,
        "root": str(root),
        "classes": classes,
        "files": [files[i] for i in order],
        "labels": labels[order].tolist(),
        "dataset_spec": fileio.canonical_json(spec),
    }
    fileio.write_text_atomic(out, json.dumps(index_data) + "\n")
    return len(order)


def read_index(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RethinkError(f"{path}: cannot read the ImageNet index ({err}); rebuild it") from None


def as_rgb_jpeg(content, path):
    """-> (RGB JPEG bytes, (height, width), re-encoded?). Decodes once to prove the file is an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            size = (image.height, image.width)
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                return content, size, False
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=REENCODE_QUALITY)
            return buffer.getvalue(), size, True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RethinkError(f"{path}: not a readable image ({err}); replace it with the original file") from None


def shard_arrays(index, start, stop):
    """Index entries start:stop -> the shard's arrays and the sha256 of the raw files read."""
    root, digest = pathlib.Path(index["root"]), hashlib.sha256()
    blobs, sizes, reencoded = [], [], 0
    for relative in index["files"][start:stop]:
        path = root / relative
        try:
            content = path.read_bytes()
        except OSError as err:
            raise RethinkError(f"{path}: cannot read ({err})") from None
        digest.update(relative.encode() + b"\0" + content)
        blob, size, changed = as_rgb_jpeg(content, path)
        blobs.append(np.frombuffer(blob, dtype=np.uint8))
        sizes.append(size)
        reencoded += changed
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    arrays = {
        "jpeg": np.concatenate(blobs),
        "offsets": offsets,
        "labels": np.asarray(index["labels"][start:stop], dtype=np.int64),
        "sizes": np.asarray(sizes, dtype=np.int32).reshape(-1, 2),
    }
    return arrays, digest.hexdigest(), reencoded
