"""Build a bundle of a finished run. Reads results/ and never writes there except under
results/archive/; refuses a run that Snakemake does not find complete and up to date."""

import datetime
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile

import bagit
import h5py

from rethink import config as rconfig
from rethink import fileio, paths
from rethink.archive import ARCHIVE_DIR, DATA, MANIFEST, METADATA, RESULTS, bundle, describe
from rethink.errors import RethinkError
from rethink.progress import Progress, Step


def git(root, *args):
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RethinkError(
            f"git {' '.join(args)} failed in {root}: {proc.stderr.strip()} (archiving needs a git clone)"
        )
    return proc.stdout


def load_config(root, configfiles):
    """The run's config as Snakemake sees it (later files deep-merged over earlier), validated."""
    merged = {}

    def merge(into, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    for path in configfiles:
        merge(merged, rconfig.read_yaml(root / path) or {})
    return rconfig.validate(merged, root / "workflow" / "schemas" / "config.schema.yaml")


def refusals(root, configfiles, stale):
    """Why this run is not archivable as it stands: stale outputs, uncommitted source, a config
    other than the one the results came from."""
    found = [f"{path}: {why}" for path, why in sorted(stale.items())]
    dirty = git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
    found += [f"{line[3:]}: modified since the last commit (archive the committed code)" for line in dirty]
    experiments = root / paths.EXPERIMENTS_JSON
    if experiments.is_file():
        used = json.loads(experiments.read_text()).get("config")
        if used is not None and used != ", ".join(configfiles):
            found.append(
                f"{experiments.relative_to(root)}: the results came from config {used}, not {', '.join(configfiles)}"
            )
    return found


def h5_provenance(path):
    def plain(value):
        if hasattr(value, "tolist"):
            value = value.tolist()
        return value.decode() if isinstance(value, bytes) else value

    with h5py.File(path, "r") as f:
        return {key: plain(value) for key, value in sorted(f.attrs.items())}


def snapshot(root):
    """Every file under results/ but the archives: {relative path: (size, mtime_ns)}. A symlink
    is never followed (it could put a file from anywhere into a published bundle), and a hidden
    file is not archived (restore refuses both): either stops the build, naming each."""
    files, refused = {}, []
    for path in sorted((root / RESULTS).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ARCHIVE_DIR or rel.startswith(ARCHIVE_DIR + "/"):
            continue
        if path.is_symlink():
            refused.append(f"{rel} -> {os.readlink(path)}: a symlink (a bundle holds plain files only)")
        elif not bundle.RESULT_PATH.fullmatch(rel):
            refused.append(
                f"{rel}: a hidden name or a control character (a killed job's temporary?): restore refuses it"
            )
        elif path.is_file():
            st = path.stat()
            files[rel] = (st.st_size, st.st_mtime_ns)
    if refused:
        raise RethinkError(
            f"{RESULTS}/ holds what is not archived; replace each symlink by the file it points to, remove the "
            "rest, and archive again:\n  " + "\n  ".join(refused)
        )
    return files


def build(root, configfiles, allow_incomplete=False):
    """Bundle the run into results/archive/<name>/ and <name>.tar.gz; returns both and what was
    not up to date (empty unless allow_incomplete)."""
    root = pathlib.Path(root).resolve()
    configfiles = configfiles or ["config/config.yaml"]
    for path in configfiles:  # as restore accepts them
        if not bundle.CONFIG_PATH.fullmatch(path):
            raise RethinkError(
                f"--configfile {path}: give the run's config files as relative paths inside the clone, without "
                "'..' or hidden parts, ending in .yaml, .yml or .json (restore puts them back at that path)"
            )
    settings = load_config(root, configfiles)["archive"]
    commit = git(root, "rev-parse", "HEAD").strip()
    date = datetime.datetime.now(datetime.UTC).date().isoformat()
    name = f"{settings['name']}-{commit[:12]}-{date.replace('-', '')}"
    final = root / ARCHIVE_DIR / name
    if final.exists() or final.with_suffix(".tar.gz").exists():
        raise RethinkError(f"{final.relative_to(root)} exists: remove it (and its .tar.gz) to archive again")

    before = snapshot(root)
    stale, outputs = bundle.pending(root, configfiles)
    found = refusals(root, configfiles, stale)
    if found and not allow_incomplete:
        raise RethinkError(
            "the run is not complete and up to date, so it is not archived (--allow-incomplete archives it "
            "anyway, listing this in archive.json):\n  " + "\n  ".join(found)
        )

    stage = root / ARCHIVE_DIR / f".{name}.partial"
    shutil.rmtree(stage, ignore_errors=True)  # a killed build's leftovers
    stage.mkdir(parents=True)
    try:
        _stage(root, stage, name, commit, date, configfiles, settings, before, outputs, found)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stage.rename(final)
    tarball = final.with_suffix(".tar.gz")
    with fileio.atomic_path(tarball) as tmp:
        _tar(final, tmp, f"tarring {tarball.name}")
    digest = bundle.hash_all([tarball], f"sha256 of {tarball.name}")[tarball]
    fileio.write_text_atomic(tarball.with_name(tarball.name + ".sha256"), f"{digest}  {tarball.name}\n")

    if snapshot(root) != before:  # a guard on the promise, cheap: sizes and mtimes
        raise RethinkError("results/ changed while archiving (another run writing?): archive again when it is idle")
    return final, tarball, found


def _tar(folder, out, what):
    """folder -> a .tar.gz at `out` whose top folder is folder's name, with a progress bar over
    the bytes of its files (each counted as tarfile starts it: the bar runs a file ahead)."""
    with Progress(what, sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()), "B") as bar:

        def counted(member):
            bar.update(member.size)
            return member

        with tarfile.open(out, "w:gz") as tar:
            tar.add(folder, arcname=folder.name, filter=counted)


def _stage(root, stage, name, commit, date, configfiles, settings, before, outputs, found):
    """Write the bag's content into `stage` and make it a bag."""
    files, results, inputs = {}, [], []
    with Progress("results: sha256 and copy", sum(size for size, _ in before.values()), "B") as bar:
        for rel, (size, mtime_ns) in before.items():
            entry = {"sha256": bundle.sha256(root / rel, bar), "size": size, "mtime_ns": mtime_ns}
            shard = rel.startswith(DATA + "/") and rel.endswith(".h5")
            if shard:
                entry["provenance"] = h5_provenance(root / rel)
                inputs.append((rel, {"name": f"shard {rel}", "sha256": entry["sha256"]}))
            entry["stored"] = not shard or settings["shards"]
            if entry["stored"]:
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, stage / rel)
                if not shard:
                    results.append(rel)
            files[rel] = entry

    # Snakemake's record of each output (params, code, input, software env): what makes a restore
    # up to date, and what makes an edited cell rerun after it
    records = {}
    for output in outputs:
        path = bundle.record_path(root, output)
        if path.is_file():
            records[output] = json.loads(path.read_text())
    (stage / METADATA).parent.mkdir(parents=True)
    (stage / METADATA).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")

    source = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(source.stdout)) as tar:
        tar.extractall(stage / "source", filter="data")
    for path in configfiles:
        (stage / "run-config" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, stage / "run-config" / path)
    cells = [json.loads((root / rel).read_text()) for rel in before if rel.endswith("/summary.json")]
    describe.environment(stage / "environment", cells)
    with Step("snakemake --report"):
        bundle.snakemake(["--report", stage / "report.html", *bundle.config_args(configfiles)], root)

    starts = [r["starttime"] for r in records.values() if r.get("starttime")]
    ends = [r["endtime"] for r in records.values() if r.get("endtime")]
    manifest = {
        "name": name,
        "commit": commit,
        "date": date,
        "configfiles": configfiles,
        "shards_stored": settings["shards"],
        "complete": not found,
        "not_up_to_date": found,
        "files": files,
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    remote = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True)
    repository = remote.stdout.strip() if remote.returncode == 0 and "://" in remote.stdout else None
    (stage / "CITATION.cff").write_text(describe.citation(settings, name, commit, date, repository))

    def iso(t):
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat() if t else None

    describe.crate(
        stage,
        manifest,
        settings,
        results,
        [f"run-config/{p}" for p in configfiles],
        [(rel, props) for rel, props in inputs if files[rel]["stored"]],
        iso(min(starts, default=None)),
        iso(max(ends, default=None)),
    )
    refused = bundle.odd_entries(stage) + bundle.unsafe_entries(stage)
    if refused:  # restore would refuse the bundle: say so now (a tracked symlink in the source?)
        raise RethinkError("the bundle would hold what restore refuses:\n  " + "\n  ".join(refused))
    payload = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    with Step(f"bagit: making the bag (the sha256 of its {payload / 1e9:.2f} GB)"):
        bagit.make_bag(
            str(stage),
            bag_info={"External-Identifier": name, "External-Description": f"rethink results at commit {commit}"},
            checksums=["sha256"],
        )
