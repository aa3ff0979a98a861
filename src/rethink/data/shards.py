"""HDF5 shards: atomic writes, a content checksum in every file, a verifying reader.

A shard holds up to `shard_size` consecutive samples of one split:
  images       N x C x H x W, uint8 (float32 for gaussian noise), chunked and compressed
  labels       N, int64
  true_labels  N, int64 (randomized shards only)
  changed      N, uint8, 1 where the sample differs from the clean one (randomized only)
Randomized shards never copy what did not change: label noises link `images`, image noises
link `labels`, and both link `true_labels`, as HDF5 external links (relative paths) to the
clean shard's datasets. Plain h5py users see a complete file; disk grows only with what the
randomization wrote.

Checksums: `dataset_sha256` (a JSON attribute) holds the sha256 of each stored dataset's
dtype, shape and bytes; `content_sha256` hashes those, every other attribute, and each link's
target plus the target's own `content_sha256` (recorded as `linked_sha256`). The reader checks
`content_sha256` on every open and the sha256 of every dataset it actually reads, following
links to the clean shard and checking that one too, and names the file on any mismatch: a
flipped byte, a hand-edited label, or a clean shard rebuilt under a randomized one is caught
before training sees it, and reading only the labels never touches the images.
"""

import hashlib
import json
import os
import pathlib
import shlex

import h5py
import numpy as np

from rethink import __version__, paths
from rethink.errors import RethinkError
from rethink.fileio import write_bytes_atomic


class ShardError(RethinkError):
    """A shard is missing, unreadable, tampered with, or does not belong with its neighbours."""


def _snakemake_command(path):
    """The command that (re)builds one shard file, whether it is missing or present but damaged.

    `--force` reruns the job of that one file (a plain rerun would trust the damaged file), and
    Snakemake takes the target relative to its working directory, the one holding results/: an
    absolute path matches no rule.
    """
    path = pathlib.Path(os.path.abspath(path))
    if paths.RESULTS not in path.parts[:-1]:
        return None  # not a workflow output
    at = len(path.parts) - 1 - path.parts[::-1].index(paths.RESULTS)
    workdir, target = pathlib.Path(*path.parts[:at]), pathlib.Path(*path.parts[at:])
    cd = "" if workdir == pathlib.Path.cwd() else f"cd {shlex.quote(str(workdir))} && "
    return f"{cd}snakemake --force {shlex.quote(str(target))}"


def _rebuild_hint(path, verb="rebuild"):
    command = _snakemake_command(path)
    if command is None:
        return f"{verb} it (it is outside a {paths.RESULTS}/ directory, so Snakemake cannot)"
    return f"{verb} it with `{command}` (plus the --configfile of your run, if it had one)"


# ----------------------------------------------------------------------------- writing


def write_shard(path, arrays, attrs, links=None, compression="lzf", chunk_samples=256):
    """Write one shard atomically (temp file in the same directory, then rename).

    `arrays`: name -> array stored in this file. `links`: name -> (clean shard path, dataset
    name there) for datasets this file links to instead of copying.
    """
    path = pathlib.Path(path)
    links = links or {}
    attrs = dict(
        attrs,
        package_version=__version__,
        numpy_version=np.__version__,
        h5py_version=h5py.__version__,
        hdf5_version=h5py.version.hdf5_version,
    )
    targets = {}
    if links:
        linked_sums = {stored_checksum(target) for target, _ in links.values()}
        if len(linked_sums) != 1:
            raise ShardError(f"{path}: links must point at one clean shard, got {links}")
        attrs["linked_sha256"] = linked_sums.pop()
        targets = {name: (os.path.relpath(target, path.parent), dataset) for name, (target, dataset) in links.items()}
    attrs["dataset_sha256"] = json.dumps({name: _array_sha256(a) for name, a in sorted(arrays.items())})
    attrs["content_sha256"] = _content_checksum(targets, attrs)

    # HDF5 builds the file in memory (the core driver, no backing store; the bytes are those the
    # default driver writes to disk) and Python writes them: a full disk is then an OSError that
    # fileio turns into one line. An HDF5 write error left h5py's file half-closed, and the
    # process segfaulted at exit.
    with h5py.File(path.name, "w", driver="core", backing_store=False) as f:
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            chunks = (max(1, min(chunk_samples, len(array))),) + array.shape[1:]
            f.create_dataset(
                name,
                data=array,
                chunks=chunks,
                compression=None if compression == "none" else compression,
            )
        for name, (target, dataset) in targets.items():
            f[name] = h5py.ExternalLink(target, f"/{dataset}")
        for key, value in attrs.items():
            f.attrs[key] = value
        f.flush()
        image = f.id.get_file_image()
    write_bytes_atomic(path, image)
    return attrs["content_sha256"]


def _array_sha256(array):
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _content_checksum(targets, attrs):
    digest = hashlib.sha256()
    for name in sorted(targets):
        target, dataset = targets[name]
        digest.update(f"{name}->{target}:{dataset}|".encode())
    plain = {k: _plain(v) for k, v in attrs.items() if k != "content_sha256"}
    digest.update(json.dumps(plain, sort_keys=True).encode())
    return digest.hexdigest()


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- reading


def _open(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard not found; {_rebuild_hint(path, 'build')}")
    try:
        # No HDF5 file locks: shards are immutable once renamed into place, and locking
        # fails on some cluster file systems.
        return h5py.File(path, "r", locking=False)
    except OSError as err:
        raise ShardError(f"{path}: not a readable HDF5 shard ({err}); {_rebuild_hint(path)}") from None


def dataset_names(path):
    """The names of a shard's datasets, stored or linked (sorted, as HDF5 lists them)."""
    with _open(path) as f:
        return list(f)


def stored_checksum(path):
    """The shard's recorded content_sha256, without reading its data (readers verify it)."""
    with _open(path) as f:
        return str(f.attrs.get("content_sha256", ""))


def read_shard(path, names=None, verify=True, _linked=None):
    """Read one shard -> (arrays dict, attrs dict), following links to the clean shard.

    `names`: the datasets to read (default: all); only those are read and verified.
    """
    path = pathlib.Path(path)
    try:
        with _open(path) as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            links = {
                name: (link.filename, link.path.lstrip("/"))
                for name in f
                if isinstance(link := f.get(name, getlink=True), h5py.ExternalLink)
            }
            missing = [name for name in names or () if name not in f]
            if missing:
                raise ShardError(f"{path}: has no dataset {missing} (it has {sorted(f)})")
            wanted = list(f) if names is None else list(names)
            arrays = {name: f[name][...] for name in wanted if name not in links}
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise ShardError(f"{path}: damaged HDF5 shard ({err}); {_rebuild_hint(path)}") from None

    if verify:
        _verify(path, arrays, links, attrs)
    wanted_links = {name: target for name, target in links.items() if name in wanted}
    if wanted_links:
        arrays.update(_read_linked(path, wanted_links, attrs, verify, _linked))
    return arrays, attrs


def _verify(path, arrays, targets, attrs):
    problem = None
    try:
        expected = json.loads(attrs["dataset_sha256"])
        if _content_checksum(targets, attrs) != attrs["content_sha256"]:
            problem = "attributes or links"
        else:
            problem = next((n for n, a in arrays.items() if _array_sha256(a) != expected.get(n)), None)
    except (KeyError, TypeError, json.JSONDecodeError):
        problem = "checksum attributes"
    if problem:
        raise ShardError(f"{path}: checksum mismatch in {problem} (corrupted or edited); {_rebuild_hint(path)}")


def _read_linked(path, targets, attrs, verify, cache):
    """The linked datasets, read from the clean shard they point at (verified, cached per call)."""
    filenames = {filename for filename, _ in targets.values()}
    if len(filenames) != 1:
        raise ShardError(f"{path}: links to several files {sorted(filenames)}; {_rebuild_hint(path)}")
    target = path.parent / filenames.pop()
    datasets = tuple(sorted({dataset for _, dataset in targets.values()}))
    cache = {} if cache is None else cache
    if (target, datasets) not in cache:
        cache[(target, datasets)] = read_shard(target, datasets, verify)
    linked_arrays, linked_attrs = cache[(target, datasets)]
    if verify and linked_attrs.get("content_sha256") != attrs.get("linked_sha256"):
        raise ShardError(
            f"{path}: was built from a different version of {target} (recorded checksum "
            f"{attrs.get('linked_sha256', '')[:12]}, now {linked_attrs.get('content_sha256', '')[:12]}); "
            f"{_rebuild_hint(path)}"
        )
    return {name: linked_arrays[dataset] for name, (_, dataset) in targets.items()}


def read_split(paths, names=None, verify=True):
    """Read the shards of one split, in order -> (arrays dict concatenated, attrs of shard 0).

    Checks that the shards belong together: same dataset/split/noise/seed, indices 0..n-1.
    """
    paths = [pathlib.Path(p) for p in paths]
    if not paths:
        raise ShardError("no shard paths given")
    linked_cache, parts, first = {}, [], None
    for position, path in enumerate(paths):
        arrays, attrs = read_shard(path, names, verify, linked_cache)
        first = first or attrs
        identity = {k: attrs.get(k) for k in ("dataset", "split", "noise", "seed", "n_shards")}
        expected = {k: first.get(k) for k in identity}
        if identity != expected or attrs.get("shard_index") != position or first["n_shards"] != len(paths):
            raise ShardError(
                f"{path}: shard {attrs.get('shard_index')} of {attrs.get('n_shards')} for {identity} "
                f"does not fit position {position} of {len(paths)} shards of {expected}; "
                "the shard list is incomplete or mixes datasets"
            )
        parts.append(arrays)
    if len(parts) == 1:
        return parts[0], first
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, first


def read_split_tensors(paths, names=None, verify=True):
    """The whole split as torch tensors (images keep their stored dtype, labels int64)."""
    import torch

    arrays, attrs = read_split(paths, names, verify)
    return {name: torch.from_numpy(array) for name, array in arrays.items()}, attrs
