"""What build, verify and restore share: running Snakemake, file digests, Snakemake's metadata
records, which paths a bundle may name, and opening and checking a bag (folder or tarball).

A bundle is untrusted input (it may come from anywhere): everything restore would act on is
checked here first, so that `verify` reports it and `restore` refuses before writing anything.
"""

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib

import bagit
import jsonschema

from rethink.archive import MANIFEST, METADATA, RESULTS
from rethink.errors import RethinkError
from rethink.progress import Progress, Step

# The paths a bundle may name, relative to the clone: results are files under results/ (not
# results/archive/), config files are .yaml/.yml/.json files; no part is empty, '.', '..' or
# hidden (.git, .venv, .snakemake), and none holds a control character.
_PART = r"[^/.\x00-\x1f][^/\x00-\x1f]*"
RESULT_PATH = re.compile(rf"{RESULTS}/(?!archive/){_PART}(/{_PART})*")
CONFIG_PATH = re.compile(rf"({_PART}/)*{_PART}\.(yaml|yml|json)")
_MEANING = {
    RESULT_PATH.pattern: f"a file under {RESULTS}/ (relative, no '..' or hidden part, not {RESULTS}/archive/)",
    CONFIG_PATH.pattern: "a .yaml, .yml or .json file inside the clone (relative, no '..' or hidden part)",
}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["name", "commit", "configfiles", "files"],
    "properties": {
        "name": {"type": "string"},
        "commit": {"type": "string"},
        "configfiles": {"type": "array", "items": {"type": "string", "pattern": f"^{CONFIG_PATH.pattern}$"}},
        "files": {
            "type": "object",
            "propertyNames": {"pattern": f"^{RESULT_PATH.pattern}$"},
            "additionalProperties": {
                "type": "object",
                "required": ["sha256", "size", "mtime_ns", "stored"],
                "properties": {
                    "sha256": _SHA256,
                    "size": {"type": "integer", "minimum": 0},
                    "mtime_ns": {"type": "integer", "minimum": 0},
                    "stored": {"type": "boolean"},
                },
            },
        },
    },
}
_METADATA_SCHEMA = {
    "type": "object",
    "propertyNames": {"pattern": f"^{RESULT_PATH.pattern}$"},
    "additionalProperties": {"type": "object"},
}


# bagit logs each failed checksum; `problems` names every file itself, once
logging.getLogger("bagit").addHandler(logging.NullHandler())


class BadBundle(RethinkError):
    """A bundle that is damaged, or names or holds what a bundle may not: the message says where."""


def snakemake(args, cwd, check=True):
    """The real Snakemake CLI, with this interpreter; its output is returned, a failure raised.
    Its jobs' `python -m rethink...` find this interpreter too: its folder comes first on PATH
    (a virtualenv's python started by path, without activating the virtualenv)."""
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)]))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RethinkError(f"snakemake {' '.join(map(str, args))} failed (exit {proc.returncode}):\n{tail}")
    return proc


def config_args(configfiles):
    return ["--configfile", *configfiles] if configfiles else []


def pending(root, configfiles):
    """Ask Snakemake which outputs of the run are not up to date: {path: "status (plan)"} from
    `snakemake --summary` (missing, incomplete, changed params/code/input, updated input...),
    and every output file it lists."""
    with Step("snakemake --summary: which outputs are up to date"):
        out = snakemake(["--summary", *config_args(configfiles)], root).stdout
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("output_file\t")), None)
    if start is None:
        raise RethinkError(f"snakemake --summary printed no table:\n{out}")
    header = lines[start].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[start + 1 :] if "\t" in line]
    # status "ok" with an update pending: present, but incomplete or downstream of a change
    stale = {
        r["output_file"]: r["status"] if r["status"] != "ok" else "present, but snakemake would rebuild it"
        for r in rows
        if r["plan"] != "no update"
    }
    return stale, sorted(r["output_file"] for r in rows)


def sha256(path, bar=None):
    """The file's sha256 (hex); `bar`, a Progress in bytes, counts what is read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    return h.hexdigest()


def hash_all(paths, what):
    """{path: sha256} of the files, with one progress bar over their bytes."""
    with Progress(what, sum(p.stat().st_size for p in paths), "B") as bar:
        return {p: sha256(p, bar) for p in paths}


def record_path(root, output):
    """Where Snakemake keeps an output's metadata record (snakemake.persistence.file._record_path:
    urlsafe base64 of the path, split into 254-character folders named @...)."""
    b64 = base64.urlsafe_b64encode(output.encode()).decode()
    parts = [b64[i : i + 254] for i in range(0, len(b64), 254)]
    return pathlib.Path(root, ".snakemake", "metadata", *["@" + p for p in parts[:-1]], parts[-1])


@contextlib.contextmanager
def opened(path):
    """A bundle as a folder: the folder itself, or a tarball extracted to a temporary folder
    (see `_extract`) and checked against the `<tarball>.sha256` beside it, if there is one."""
    path = pathlib.Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise RethinkError(f"{path}: no such bundle (a folder results/archive/<name> or its .tar.gz)")
    with tempfile.TemporaryDirectory(prefix="rethink-archive-") as tmp:
        trailer = _extract(path, tmp)
        tops = list(pathlib.Path(tmp).iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise BadBundle(f"{path}: expected one top-level folder, found {sorted(t.name for t in tops)}")
        if trailer:  # the data was read in full: its files say whether the damage is in them
            changed = problems(tops[0])
            where = (
                f"the compressed data (what it changed: {', '.join(changed)})"
                if changed
                else "the trailer itself (its last 8 bytes; every file read back matches its manifest)"
            )
            raise BadBundle(
                f"{path}: damaged: the gzip trailer does not match the data ({trailer}); the damage is in {where}"
            )
        sidecar = path.with_name(path.name + ".sha256")
        if sidecar.is_file():
            if sidecar.read_bytes().split()[:1] != [hash_all([path], f"sha256 of {path.name}")[path].encode()]:
                raise BadBundle(
                    f"{path}: damaged: its sha256 is not the one {sidecar.name} records, although its gzip data and "
                    "files read back intact (one of the two files was changed after the build)"
                )
        yield tops[0]


def _extract(path, dest):
    """Extract a tarball member by member (tarfile's `data` filter: no absolute paths, links out of
    the folder or device files), reading the whole gzip stream so that gzip checks its trailer
    (CRC-32 and length) as `gzip -t` does. Damage that stops the reading raises BadBundle naming
    where; a trailer that does not match the data read is returned (None when it matches)."""
    size, where = path.stat().st_size, "at its first member"
    with open(path, "rb") as raw, Progress(f"extracting {path.name}", size, "B") as bar:
        try:
            with tarfile.open(fileobj=raw, mode="r:gz") as tar:
                for member in tar:
                    where = f"in member {member.name}"
                    tar.extract(member, dest, filter="data")
                    where = f"after member {member.name}"
                    bar.update(raw.tell() - bar.n)  # the compressed bytes read so far
                # tarfile ends quietly at a damaged header: all that may follow the last
                # member is the zero blocks that end the archive
                end = tar.offset
                while block := tar.fileobj.read(1 << 20):
                    if block.strip(b"\0"):
                        raise BadBundle(
                            f"{path}: damaged: the tar data stops at a broken header at byte {end:,} of the "
                            f"uncompressed stream ({where}); what follows it was not read"
                        )
                bar.update(raw.tell() - bar.n)
        except gzip.BadGzipFile as err:
            if raw.tell() < size:
                raise BadBundle(f"{path}: damaged near byte {raw.tell():,} of {size:,} ({where}): {err}") from None
            return str(err)
        except tarfile.FilterError as err:
            raise BadBundle(f"{path}: refused: {err} (a bundle holds plain files and folders)") from None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise BadBundle(f"{path}: damaged near byte {raw.tell():,} of {size:,} ({where}): {err}") from None
    return None


def odd_entries(bag_dir):
    """Symlinks and anything but plain files and folders: a bundle holds none (and reading a
    link or a FIFO would read what is not in the bag, or wait forever)."""
    found = []
    for path in sorted(bag_dir.rglob("*")):
        rel = path.relative_to(bag_dir).as_posix()
        if path.is_symlink():
            found.append(f"symlink: {rel} -> {os.readlink(path)}")
        elif not (path.is_file() or path.is_dir()):
            found.append(f"not a plain file: {rel}")
    return found


def unsafe_entries(data_dir, payload=None):
    """What restore would refuse to act on in archive.json and Snakemake's records: a path that
    is not a result file under results/ (or a config file in the clone), a field of the wrong
    type, and with the bag's `payload` manifest ({path: {"sha256": ...}}) a file restore would
    copy that the bag does not hold with archive.json's sha256. 'unsafe: FILE: where: why'."""
    found, manifest = [], None
    for name, schema in ((MANIFEST, _MANIFEST_SCHEMA), (METADATA, _METADATA_SCHEMA)):
        try:
            content = json.loads((data_dir / name).read_text())
        except (OSError, ValueError) as err:
            found.append(f"unreadable: data/{name} ({err})")
            continue
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(content))
        for error in errors:
            where = "/".join(map(str, error.absolute_path)) or "top level"
            pattern = (error.validator_value or "") if error.validator == "pattern" else ""
            why = f"{error.instance!r} is not {_MEANING[pattern[1:-1]]}" if pattern[1:-1] in _MEANING else error.message
            found.append(f"unsafe: data/{name}: {where}: {why}")
        if name == MANIFEST and not errors:
            manifest = content
    if manifest is None or payload is None:
        return found
    copied = {rel: entry["sha256"] for rel, entry in manifest["files"].items() if entry["stored"]}
    copied |= {f"run-config/{rel}": None for rel in manifest["configfiles"]}
    for rel, digest in sorted(copied.items()):
        held = payload.get(f"data/{rel}", {}).get("sha256")
        if held is None or digest not in (None, held):
            why = "not in the bag" if held is None else "in the bag with another sha256"
            found.append(f"unsafe: data/{MANIFEST}: {rel!r} is restored from the bag but is {why}")
    return found


def problems(bag_dir):
    """Every way the bag differs from its manifests ('changed: F', 'missing: F', 'extra: F'), every
    symlink or special file in it, and everything unsafe in its archive.json."""
    bag_dir = pathlib.Path(bag_dir)
    odd = odd_entries(bag_dir)
    if odd:  # not read further: checksumming them would follow them
        return odd
    try:
        bag = bagit.Bag(str(bag_dir))
        with Step("bagit: validating the bag (the sha256 of every file)"):
            bag.validate(processes=1)  # the library's verdict: structure, bagit.txt, every manifest
        verdict = None
    except bagit.BagValidationError as err:
        verdict = str(err)
    except (bagit.BagError, ValueError) as err:  # not a bag at all (a damaged manifest: ValueError)
        return [f"not a bag: {err}"]
    # bagit stops at its first failed stage (file count, then completeness, then checksums), so
    # name every file here: missing and extra from its manifests, changed by their sha256
    missing, extra = bag.compare_manifests_with_fs()
    found = [f"missing: {p}" for p in missing] + [f"extra: {p}" for p in extra]
    entries = {**bag.payload_entries(), **bag.tagfile_entries()}
    found += [f"missing: {rel}" for rel in entries if not (bag_dir / rel).is_file()]
    present = [rel for rel in entries if (bag_dir / rel).is_file()]
    digests = hash_all([bag_dir / rel for rel in present], "sha256 of the bag's files")
    found += [f"changed: {rel}" for rel in present if digests[bag_dir / rel] != entries[rel].get("sha256")]
    # a file beside the tag files is in no manifest, and bagit does not look for one
    tags = {"bagit.txt", "tagmanifest-sha256.txt", *bag.tagfile_entries()}
    for path in sorted(p for p in bag_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bag_dir).as_posix()
        if not rel.startswith("data/") and rel not in tags:
            found.append(f"extra: {rel}")
    if verdict and not found:
        found.append(f"invalid bag: {verdict}")
    return sorted(set(found + unsafe_entries(bag_dir / "data", bag.payload_entries())))


def check(bag_dir):
    found = problems(bag_dir)
    if found:
        raise BadBundle(f"{bag_dir}: the bundle does not match its manifests or is unsafe:\n  " + "\n  ".join(found))


def set_mtime(path, mtime_ns):
    os.utime(path, ns=(mtime_ns, mtime_ns))
