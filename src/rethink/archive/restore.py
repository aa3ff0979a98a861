"""Restore a bundle into a clone: results back with their recorded mtimes, Snakemake's records
back, shards rebuilt by the workflow's own data rules and checked against the recorded
checksums, so that `snakemake -n` has nothing to do."""

import filecmp
import json
import os
import pathlib
import shutil
import subprocess

from rethink import fileio
from rethink.archive import MANIFEST, METADATA, RESULTS, bundle
from rethink.errors import RethinkError
from rethink.progress import Progress, Step

RUN_CONFIG_DIR = "config/"


def source_differences(bag_data, root):
    """Files that differ between the archived source and this clone: 'changed: F', 'only in the
    bundle: F', 'only here: F' (tracked files), and the run's config files."""
    source = bag_data / "source"
    archived = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() or p.is_symlink()}
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RethinkError(f"{root} is not a git clone (restore into a clone of the archived commit)")
    here = {p for p in proc.stdout.split("\0") if p and (root / p).exists()}
    found = [f"changed: {p}" for p in sorted(archived & here) if not filecmp.cmp(source / p, root / p, shallow=False)]
    found += [f"only in the bundle: {p}" for p in sorted(archived - here)]
    found += [f"only here: {p}" for p in sorted(here - archived)]
    run_config = bag_data / "run-config"
    for p in sorted(q.relative_to(run_config).as_posix() for q in run_config.rglob("*") if q.is_file()):
        if (root / p).exists() and not filecmp.cmp(run_config / p, root / p, shallow=False):
            found.append(f"changed: {p} (the run's config file)")
    return found


def outside(root, manifest, records):
    """The bundle's paths that would land outside this clone's results/ (config files: outside
    the clone) through a symlink already here. bundle.check has refused any other path."""

    def escapes(rel, folder):
        return os.path.commonpath([os.path.realpath(root / rel), os.path.realpath(folder)]) != os.path.realpath(folder)

    found = [rel for rel in sorted({*manifest["files"], *records}) if escapes(rel, root / RESULTS)]
    return found + [rel for rel in manifest["configfiles"] if escapes(rel, root)]


def restore(path, root, cores, different_source=False):
    root = pathlib.Path(root).resolve()
    with bundle.opened(path) as bag:
        bundle.check(bag)  # also refuses any path that is not a result or config file
        data = bag / "data"
        manifest = json.loads((data / MANIFEST).read_text())
        records = json.loads((data / METADATA).read_text())
        escaping = outside(root, manifest, records)
        if escaping:
            raise RethinkError(
                f"a symlink in this clone would take these files of the bundle outside {root / RESULTS} "
                "(nothing was restored):\n  " + "\n  ".join(escaping)
            )
        differ = source_differences(data, root)
        if differ and not different_source:
            raise RethinkError(
                f"this clone is not the archived commit {manifest['commit']}; nothing was restored. Check out that "
                "commit, or pass --different-source to restore anyway (Snakemake then reruns what the changes "
                "touch). Differences:\n  " + "\n  ".join(differ)
            )
        files = manifest["files"]
        # a file already here with the archived bytes (a killed restore's) is kept; any other is refused
        done = {rel for rel in files if (root / rel).is_file() and bundle.sha256(root / rel) == files[rel]["sha256"]}
        clash = sorted(rel for rel in files if (root / rel).exists() and rel not in done)
        if clash:
            raise RethinkError(
                f"{len(clash)} of the bundle's files exist here with other contents; restore into a clone without "
                "them (nothing was restored):\n  " + "\n  ".join(clash)
            )
        # a missing run config is put back only under config/: elsewhere a file such as
        # slurm/config.yaml would become a Snakemake profile that later runs pick up
        missing = [rel for rel in manifest["configfiles"] if not (root / rel).exists()]
        elsewhere = [rel for rel in missing if not rel.startswith(RUN_CONFIG_DIR)]
        if elsewhere:
            raise RethinkError(
                f"the run's config files {', '.join(elsewhere)} are not in this clone and restore writes config files "
                f"only under {RUN_CONFIG_DIR} (nothing was restored); read each in the bundle's data/run-config/, "
                "copy it into place yourself, and restore again"
            )
        for rel in missing:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data / "run-config" / rel, root / rel)

        # shards first: the data rules rebuild them (byte-identical by design), and each must
        # match its recorded checksum before any result that depends on it comes back
        rebuild = sorted(rel for rel, entry in files.items() if not entry["stored"] and rel not in done)
        if rebuild:
            with Step(f"snakemake: rebuilding {len(rebuild)} shards"):
                bundle.snakemake(["--cores", cores, *bundle.config_args(manifest["configfiles"]), "--", *rebuild], root)
            digests = bundle.hash_all([root / rel for rel in rebuild], "sha256 of the rebuilt shards")
            wrong = [rel for rel in rebuild if digests[root / rel] != files[rel]["sha256"]]
            if wrong:
                for rel in wrong:  # nothing may run from a shard that is not the archived one
                    (root / rel).unlink()
                raise RethinkError(
                    "rebuilt shards differ from the archived ones (removed; a different raw dataset or "
                    "library version?):\n  " + "\n  ".join(wrong)
                )
        copied = {rel for rel, entry in files.items() if entry["stored"] and rel not in done}
        with Progress("results: copying back", sum(files[rel]["size"] for rel in copied), "B") as bar:
            for rel, entry in files.items():
                target = root / rel
                if rel in copied:
                    with fileio.atomic_path(target) as tmp:
                        shutil.copyfile(data / rel, tmp)
                    bar.update(entry["size"])
                # the run's own mtimes: Snakemake's mtime trigger sees the order in which they were made
                bundle.set_mtime(target, entry["mtime_ns"])
        for output, record in records.items():
            fileio.write_text_atomic(bundle.record_path(root, output), json.dumps(record))

    stale, _ = bundle.pending(root, manifest["configfiles"])
    return manifest, stale, differ
