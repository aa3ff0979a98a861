"""What build, verify and restore share: running Snakemake, file digests, Snakemake's metadata
records, and opening and checking a bag (folder or tarball)."""

import base64
import contextlib
import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import bagit

from rethink.errors import RethinkError


def snakemake(args, cwd, check=True):
    """The real Snakemake CLI, with this interpreter; its output is returned, a failure raised."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", *map(str, args)], cwd=cwd, capture_output=True, text=True)
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


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_path(root, output):
    """Where Snakemake keeps an output's metadata record (snakemake.persistence.file._record_path:
    urlsafe base64 of the path, split into 254-character folders named @...)."""
    b64 = base64.urlsafe_b64encode(output.encode()).decode()
    parts = [b64[i : i + 254] for i in range(0, len(b64), 254)]
    return pathlib.Path(root, ".snakemake", "metadata", *["@" + p for p in parts[:-1]], parts[-1])


@contextlib.contextmanager
def opened(path):
    """A bundle as a folder: the folder itself, or a tarball extracted to a temporary folder
    (tarfile's `data` filter: no absolute paths, links out of the folder or device files)."""
    path = pathlib.Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise RethinkError(f"{path}: no such bundle (a folder results/archive/<name> or its .tar.gz)")
    with tempfile.TemporaryDirectory(prefix="rethink-archive-") as tmp:
        try:
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise RethinkError(f"{path}: not a readable tarball ({err})") from None
        tops = list(pathlib.Path(tmp).iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise RethinkError(f"{path}: expected one top-level folder, found {sorted(t.name for t in tops)}")
        yield tops[0]


def problems(bag_dir):
    """Every way the bag differs from its manifests: 'changed: F', 'missing: F', 'extra: F'."""
    bag_dir = pathlib.Path(bag_dir)
    try:
        bag = bagit.Bag(str(bag_dir))
        bag.validate(processes=1)  # the library's verdict: structure, bagit.txt, every manifest
        verdict = None
    except bagit.BagError as err:
        verdict = str(err)
        if not isinstance(err, bagit.BagValidationError):  # not a bag at all
            return [f"not a bag: {err}"]
    # bagit stops at its first failed stage (file count, then completeness, then checksums), so
    # name every file here: missing and extra from its manifests, changed by their sha256
    missing, extra = bag.compare_manifests_with_fs()
    found = [f"missing: {p}" for p in missing] + [f"extra: {p}" for p in extra]
    for rel, hashes in {**bag.payload_entries(), **bag.tagfile_entries()}.items():
        if not (bag_dir / rel).is_file():
            found.append(f"missing: {rel}")
        elif sha256(bag_dir / rel) != hashes.get("sha256"):
            found.append(f"changed: {rel}")
    # a file beside the tag files is in no manifest, and bagit does not look for one
    tags = {"bagit.txt", "tagmanifest-sha256.txt", *bag.tagfile_entries()}
    for path in sorted(p for p in bag_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bag_dir).as_posix()
        if not rel.startswith("data/") and rel not in tags:
            found.append(f"extra: {rel}")
    if verdict and not found:
        found.append(f"invalid bag: {verdict}")
    return sorted(set(found))


def check(bag_dir):
    found = problems(bag_dir)
    if found:
        raise RethinkError(f"{bag_dir}: the bundle does not match its manifests:\n  " + "\n  ".join(found))


def set_mtime(path, mtime_ns):
    os.utime(path, ns=(mtime_ns, mtime_ns))
