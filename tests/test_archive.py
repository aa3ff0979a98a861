"""Archiving (issue 12): a bundle of the finished tiny run, built, checked, restored into a
fresh git clone and prepared for Zenodo, all through the real CLIs (snakemake, git,
python -m rethink.archive, cffconvert, the RO-Crate validator). A bundle is untrusted input
(issue 18): crafted bundles that are valid bags with hostile entries, damaged tarballs and
symlinks under results/ are refused or named, and nothing is written outside results/."""

import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import bagit
import h5py
import pytest
import yaml
from rocrate.rocrate import ROCrate

from conftest import REPO, Workflow

pytestmark = pytest.mark.workflow
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
CONFIG = "config/test.yaml"  # where conftest's `finished` run wrote its config
EDITED_CELL = "synth/mlp/wd/random_labels/s0"
# The archive CLI as a user starts it without activating the virtualenv (`.venv/bin/python -m
# rethink.archive`): the interpreter's folder is not on PATH, yet the jobs of the Snakemake it
# starts must run `python -m rethink...` with this interpreter
BARE_PATH = "/usr/bin:/bin"


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, env=dict(os.environ, **GIT_ENV), check=True, capture_output=True)


def archive(wf, *args, check=None):
    proc = subprocess.run(
        [sys.executable, "-m", "rethink.archive", *map(str, args)],
        cwd=wf.root,
        env=dict(wf.env, PATH=BARE_PATH, PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
    )
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def results_state(root):
    """Every file under results/ but the archives: bytes digest, size and mtime."""
    state = {}
    for path in sorted((root / "results").rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith("results/archive/"):
            st = path.stat()
            state[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return state


def committed_copy(finished, root):
    """A copy of the finished run (results and .snakemake with their mtimes) in a git repository
    with everything but the results committed, as a user's clone would be."""
    wf = Workflow(root, source=finished)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the run's code")
    return wf


class Clone(Workflow):
    """A `git clone` driven like a Workflow (its own src/ first on the path), nothing copied in."""

    def __init__(self, source_repo, root):
        git(source_repo, "clone", "-q", str(source_repo), str(root))
        self.root = root
        self.env = dict(
            os.environ,
            PATH=BARE_PATH,
            PYTHONPATH=os.pathsep.join([str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )


@pytest.fixture(scope="module")
def built(finished, tmp_path_factory):
    """The finished run in a git repo, archived once: (workflow, bundle folder, tarball, results
    before, results after)."""
    wf = committed_copy(finished[0], tmp_path_factory.mktemp("archive") / "wf")
    before = results_state(wf.root)
    proc = archive(wf, "build", "--configfile", CONFIG, check=0)
    (wf.root.parent / "build.log").write_text(proc.stderr)  # its progress, read by the last tests
    folder, tarball = (wf.root / line for line in proc.stdout.split())
    return wf, folder, tarball, before, results_state(wf.root)


def test_build_only_reads_results(built):
    _, _, _, before, after = built
    assert before == after and len(before) > 40


def test_bundle_holds_results_and_shard_checksums_not_shards(built):
    wf, folder, tarball, before, _ = built
    data = folder / "data"
    manifest = json.loads((data / "archive.json").read_text())
    commit = git(wf.root, "rev-parse", "HEAD").stdout.decode().strip()
    assert folder.name.startswith(f"rethink-{commit[:12]}-") and manifest["commit"] == commit
    assert manifest["complete"] and manifest["configfiles"] == [CONFIG]
    shards = [rel for rel in before if rel.endswith(".h5")]
    assert len(shards) == 3
    for rel in shards:  # by default: checksum and provenance, not the bytes
        entry = manifest["files"][rel]
        assert not entry["stored"] and not (data / rel).exists()
        assert entry["sha256"] == before[rel][0] and entry["mtime_ns"] == before[rel][2]
        with h5py.File(wf.root / rel) as f:
            assert entry["provenance"]["dataset"] == f.attrs["dataset"] == "synth"
    for rel in set(before) - set(shards):
        assert (data / rel).read_bytes() == (wf.root / rel).read_bytes(), rel
    assert (data / "source" / "Snakefile").read_bytes() == (wf.root / "Snakefile").read_bytes()
    assert (data / "run-config" / CONFIG).read_bytes() == (wf.root / CONFIG).read_bytes()
    assert "torch==2.13.0" in (data / "environment" / "pip-freeze.txt").read_text().replace("+cpu", "")
    versions = json.loads((data / "environment" / "versions.json").read_text())
    assert versions["cells"] and {c["device"] for c in versions["cells"]} == {"cpu"}
    assert versions["torch_matches_cells"] and versions["torch"] == versions["cells"][0]["torch_version"]
    records = json.loads((data / "snakemake" / "metadata.json").read_text())
    assert records[f"results/cells/{EDITED_CELL}/summary.json"]["rule"] == "train"
    report = (data / "report.html").read_text()
    # the table4 section of the one table caption (the rule's {name} wildcard picks it)
    assert "table4.csv" in report and "Table 4 of the paper: fitting random labels" in report
    digest, name = tarball.with_name(tarball.name + ".sha256").read_text().split()
    assert name == tarball.name and digest == hashlib.sha256(tarball.read_bytes()).hexdigest()


def test_crate_is_a_workflow_run_crate(built):
    _, folder, _, before, _ = built
    crate = ROCrate(folder / "data")
    profiles = {p.id for p in crate.root_dataset["conformsTo"]}
    assert "https://w3id.org/ro/wfrun/workflow/0.5" in profiles
    assert crate.mainEntity.id == "source/Snakefile" and crate.mainEntity.lang.id.endswith("#snakemake")
    (action,) = [e for e in crate.get_entities() if "CreateAction" in e.type]
    assert action["instrument"] is crate.mainEntity
    assert action["object"].id == f"run-config/{CONFIG}"
    results = {e.id for e in action["result"]}
    assert f"results/cells/{EDITED_CELL}/summary.json" in results and "results/claims.md" in results
    assert not {rel for rel in before if rel.endswith(".h5")} & results
    # The validator checks the profiles' shapes offline; it cannot download the RO-Crate JSON-LD
    # context here (no network), so the two checks that fetch it are skipped.
    from rocrate_validator import models, services

    settings = services.ValidationSettings(
        rocrate_uri=str(folder / "data"),
        profile_identifier="workflow-run-crate-0.5",
        requirement_severity=models.Severity.RECOMMENDED,
        offline=True,
        skip_checks=["ro-crate-1.1_3.1", "ro-crate-1.1_3.2"],
    )
    issues = [(i.check.identifier, i.message) for i in services.validate(settings).get_issues()]
    assert issues == []


def test_citation_cff_is_valid_and_cites_paper_and_pipeline(built):
    wf, folder, _, _, _ = built
    cff = folder / "data" / "CITATION.cff"
    proc = subprocess.run(["cffconvert", "--validate", "-i", str(cff)], capture_output=True, text=True, env=wf.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    refs = yaml.safe_load(cff.read_text())["references"]
    assert refs[0]["title"] == "Understanding deep learning requires rethinking generalization"
    assert (
        refs[1]["type"] == "software"
        and refs[1]["commit"] == json.loads((folder / "data/archive.json").read_text())["commit"]
    )


def test_verify_names_each_changed_missing_and_extra_file(built, tmp_path):
    wf, folder, tarball, _, _ = built
    assert "ok:" in archive(wf, "verify", tarball, check=0).stdout
    bad = tmp_path / folder.name
    shutil.copytree(folder, bad)
    flipped = bad / "data" / "results" / "metrics" / "summary.csv"
    raw = bytearray(flipped.read_bytes())
    raw[10] ^= 0x01
    flipped.write_bytes(bytes(raw))
    (bad / "data" / "results" / "claims.md").unlink()
    (bad / "data" / "results" / "extra.txt").write_text("not archived")
    (bad / "stray.txt").write_text("beside the bag")
    proc = archive(wf, "verify", bad, check=1)
    assert proc.stdout.splitlines() == [
        "changed: data/results/metrics/summary.csv",
        "extra: data/results/extra.txt",
        "extra: stray.txt",
        "missing: data/results/claims.md",
    ]


def test_restore_into_a_fresh_clone_is_up_to_date_and_an_edit_reruns_one_cell(built, tmp_path):
    wf, _, tarball, before, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    proc = archive(clone, "restore", tarball, "--cores", 2, check=0)
    assert "nothing to do" in proc.stdout
    restored = results_state(clone.root)
    # every file back with its bytes and mtime; the shards rebuilt byte-identically
    assert {rel: restored[rel] for rel in before} == before
    # These shards are below Snakemake's 1 MB input-checksum limit, so its records' checksums
    # would hide a wrong mtime; without them (as for real shards) mtimes alone must say up to date.
    for record in (clone.root / ".snakemake" / "metadata").rglob("*"):
        if record.is_file():
            fields = json.loads(record.read_text())
            fields.pop("input_checksums", None)
            record.write_text(json.dumps(fields))
    assert clone.planned_jobs("--configfile", CONFIG) == ({}, set())
    config = yaml.safe_load((clone.root / CONFIG).read_text())
    config["regularizers"]["wd"]["weight_decay"] = 0.001
    clone.write_config(config)
    jobs, cells = clone.planned_jobs("--configfile", CONFIG)
    assert cells == {EDITED_CELL}
    assert jobs == {
        "train": 1,
        "analysis_aggregate": 1,
        "figure": 1,
        "table": 1,
        "analysis_claims": 1,
        "all": 1,
    }


def test_restore_into_another_commit_names_the_differing_files(built, tmp_path):
    wf, _, tarball, _, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    figures = clone.root / "src" / "rethink" / "analysis" / "figures.py"
    figures.write_text(figures.read_text() + "\n# a later commit\n")
    (clone.root / "NEWS").write_text("new\n")
    git(clone.root, "add", "-A")
    git(clone.root, "commit", "-qm", "later")
    proc = archive(clone, "restore", tarball, check=2)
    assert "changed: src/rethink/analysis/figures.py" in proc.stderr and "only here: NEWS" in proc.stderr
    assert not (clone.root / "results").exists()  # nothing restored


def test_build_refuses_an_incomplete_run_unless_allowed(finished, tmp_path):
    wf = committed_copy(finished[0], tmp_path / "wf")
    config = yaml.safe_load((wf.root / CONFIG).read_text())
    config["archive"] = {"shards": True}  # the bundle keeps the shards' bytes too; nothing reruns for it
    wf.write_config(config)
    git(wf.root, "commit", "-qam", "archive the shards")
    missing = wf.root / "results" / "cells" / EDITED_CELL / "summary.json"
    missing.unlink()
    proc = archive(wf, "build", "--configfile", CONFIG, check=2)
    assert f"results/cells/{EDITED_CELL}/summary.json: missing" in proc.stderr
    assert "results/metrics/summary.csv" in proc.stderr  # and what depends on it
    assert not (wf.root / "results" / "archive").exists()
    proc = archive(wf, "build", "--configfile", CONFIG, "--allow-incomplete", check=0)
    folder = wf.root / proc.stdout.split()[0]
    manifest = json.loads((folder / "data" / "archive.json").read_text())
    assert not manifest["complete"] and any(EDITED_CELL in line for line in manifest["not_up_to_date"])
    shards = sorted(rel for rel in manifest["files"] if rel.endswith(".h5"))
    assert len(shards) == 3 and all(manifest["files"][rel]["stored"] for rel in shards)
    for rel in shards:
        assert (folder / "data" / rel).read_bytes() == (wf.root / rel).read_bytes()
    action = next(e for e in ROCrate(folder / "data").get_entities() if "CreateAction" in e.type)
    assert {e.id for e in action["object"]} == {f"run-config/{CONFIG}", *shards}


def test_zenodo_deposition_is_prepared_from_the_bundle(built, tmp_path):
    wf, folder, tarball, _, _ = built
    proc = archive(wf, "zenodo", folder, check=0)
    deposition = json.loads((wf.root / proc.stdout.strip()).read_text())
    meta = deposition["metadata"]
    assert meta["upload_type"] == "dataset" and meta["license"] == "cc-by-4.0"
    assert meta["creators"] == [{"name": "rethink contributors"}] and meta["version"] == folder.name
    assert meta["related_identifiers"][0]["identifier"] == "arXiv:1611.03530"
    (entry,) = deposition["files"]
    assert entry["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    env = dict(wf.env)
    env.pop("ZENODO_TOKEN", None)  # never the network: without a token the upload stops first
    proc = subprocess.run(
        [sys.executable, "-m", "rethink.archive", "zenodo", folder, "--upload"],
        cwd=wf.root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "ZENODO_TOKEN is not set" in proc.stderr


# ----------------------------------------------------------------------------- untrusted bundles


def tree_state(*folders):
    """Every path under the folders (hidden ones too), with size and mtime: what a refused restore must leave."""
    state = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            st = path.lstat()
            state[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def crafted(folder, dest, rel, content):
    """The bundle folder copied to `dest`, listing one more stored file `rel` with `content` at
    data/<rel> (where restore reads it; for an absolute `rel` that is `rel` itself, so nothing is
    put there), and still a valid bag: the manifests recomputed, as a crafter would."""
    bag = dest / folder.name
    shutil.copytree(folder, bag)
    data = bag / "data"
    manifest = json.loads((data / "archive.json").read_text())
    manifest["files"][rel] = {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "mtime_ns": 0,
        "stored": True,
    }
    (data / "archive.json").write_text(json.dumps(manifest))
    source = pathlib.Path(os.path.normpath(data / rel))
    if source.is_relative_to(bag):
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(content)
    bagit.Bag(str(bag)).save(manifests=True)
    assert bagit.Bag(str(bag)).is_valid()
    return bag


HOSTILE = {
    "parent": "../x",
    "absolute": None,  # an absolute path beside the clone, filled in by the test
    "venv": ".venv/lib/python3.11/site-packages/x.pth",
    "git": ".git/hooks/pre-commit",
    "source": "src/rethink/__init__.py",
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_restore_refuses_a_valid_bag_listing_a_path_outside_results_and_writes_nothing(built, tmp_path, kind):
    wf, folder, _, _, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    outside = tmp_path / "outside"
    outside.mkdir()
    rel = HOSTILE[kind] or str(outside / "x")
    # the source file with its own bytes: restore would keep it and set its mtime to the bundle's
    content = (clone.root / rel).read_bytes() if kind == "source" else b"import os; os.system('touch pwned')\n"
    bag = crafted(folder, tmp_path / "crafted", rel, content)
    before = tree_state(clone.root, outside)
    proc = archive(clone, "restore", bag, check=2)
    assert f"unsafe: data/archive.json: files: '{rel}' is not a file under results/" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_state(clone.root, outside) == before
    assert not (tmp_path / "x").exists()
    # verify names it too, though the bag itself is valid
    proc = archive(wf, "verify", bag, check=1)
    assert proc.stdout.splitlines() == [
        f"unsafe: data/archive.json: files: '{rel}' is not a file under results/ (relative, no '..' or hidden part, "
        "not results/archive/)"
    ]


def test_restore_refuses_a_listed_result_that_the_bag_does_not_hold_and_writes_nothing(built, tmp_path):
    wf, folder, _, _, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    bag = crafted(folder, tmp_path / "crafted", "results/ghost.txt", b"listed, then left out\n")
    (bag / "data" / "results" / "ghost.txt").unlink()
    bagit.Bag(str(bag)).save(manifests=True)
    before = tree_state(clone.root)
    proc = archive(clone, "restore", bag, check=2)
    assert (
        "unsafe: data/archive.json: 'results/ghost.txt' is restored from the bag but is not in the bag" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and tree_state(clone.root) == before


def test_restore_refuses_a_symlink_in_the_bundle_and_writes_nothing(built, tmp_path):
    wf, folder, _, _, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    bag = crafted(folder, tmp_path / "crafted", "results/link", b"")
    link = bag / "data" / "results" / "link"
    link.unlink()
    link.symlink_to("../source/Snakefile")  # inside the bag, so tarfile's data filter lets it through
    manifest = json.loads((bag / "data" / "archive.json").read_text())
    manifest["files"]["results/link"]["sha256"] = hashlib.sha256((REPO / "Snakefile").read_bytes()).hexdigest()
    (bag / "data" / "archive.json").write_text(json.dumps(manifest))
    bagit.Bag(str(bag)).save(manifests=True)
    assert bagit.Bag(str(bag)).is_valid()
    tarball = tmp_path / f"{bag.name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(bag, arcname=bag.name)
    before = tree_state(clone.root)
    proc = archive(clone, "restore", tarball, check=2)
    assert "symlink: data/results/link -> ../source/Snakefile" in proc.stderr and "Traceback" not in proc.stderr
    assert tree_state(clone.root) == before


def test_restore_refuses_paths_that_a_symlink_in_the_clone_takes_outside_results(built, tmp_path):
    wf, _, tarball, _, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    outside = tmp_path / "outside"
    outside.mkdir()
    (clone.root / "results").mkdir()
    (clone.root / "results" / "tables").symlink_to(outside)
    before = tree_state(clone.root, outside)
    proc = archive(clone, "restore", tarball, check=2)
    error = proc.stderr[proc.stderr.index("error: ") :]  # after the progress lines of extracting and checking
    assert error.splitlines()[:2] == [
        f"error: a symlink in this clone would take these files of the bundle outside {clone.root / 'results'} "
        "(nothing was restored):",
        "  results/tables/table4.csv",
    ]
    assert tree_state(clone.root, outside) == before


def test_build_refuses_symlinks_and_hidden_files_under_results(finished, tmp_path):
    wf = committed_copy(finished[0], tmp_path / "wf")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for publication\n")
    (wf.root / "results" / "leak.txt").symlink_to(outside / "secret.txt")
    (wf.root / "results" / "figures" / "elsewhere").symlink_to(outside)
    hidden = wf.root / "results" / "data" / "synth" / "clean" / ".train-00000.h5.tmp123"
    hidden.write_bytes(b"a killed writer's temporary")
    proc = archive(wf, "build", "--configfile", CONFIG, check=2)
    assert proc.stderr.splitlines()[1:] == [
        "  results/data/synth/clean/.train-00000.h5.tmp123: a hidden name or a control character (a killed job's "
        "temporary?): restore refuses it",
        f"  results/figures/elsewhere -> {outside}: a symlink (a bundle holds plain files only)",
        f"  results/leak.txt -> {outside / 'secret.txt'}: a symlink (a bundle holds plain files only)",
    ]
    assert not (wf.root / "results" / "archive").exists()


def damaged_copy(tarball, dest, offset=None, sidecar=None):
    """A copy of the tarball and its .sha256, with one bit of the byte at `offset` flipped
    (negative: from the end) or the .sha256 replaced by `sidecar`."""
    dest.mkdir(exist_ok=True)
    copy = dest / tarball.name
    raw = bytearray(tarball.read_bytes())
    if offset is not None:
        raw[offset] ^= 0x01
    copy.write_bytes(bytes(raw))
    shutil.copy(tarball.with_name(tarball.name + ".sha256"), dest)
    if sidecar is not None:
        copy.with_name(copy.name + ".sha256").write_text(sidecar)
    return copy


def test_verify_reads_the_whole_gzip_stream_and_names_a_damaged_trailer(built, tmp_path):
    wf, _, tarball, _, _ = built
    assert gzip.decompress(tarball.read_bytes())  # gzip's own check passes on the original
    for offset, what in ((-8, "CRC check failed"), (-3, "Incorrect length of data produced")):
        copy = damaged_copy(tarball, tmp_path / str(offset), offset)
        with pytest.raises(gzip.BadGzipFile, match=what):
            gzip.decompress(copy.read_bytes())  # as `gzip -t` rejects it
        proc = archive(wf, "verify", copy, check=1)
        (line,) = proc.stdout.splitlines()
        assert line.startswith(f"{copy}: damaged: the gzip trailer does not match the data ({what}")
        assert line.endswith("the trailer itself (its last 8 bytes; every file read back matches its manifest)")
        proc = archive(wf, "restore", copy, check=2)
        assert "damaged: the gzip trailer" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_names_damage_in_the_compressed_data_and_a_wrong_sha256_file_without_a_traceback(built, tmp_path):
    wf, _, tarball, _, _ = built
    size = tarball.stat().st_size
    # wherever the flipped bit lands, deflate either fails (zlib), decodes wrong bytes (a tar
    # header tarfile stops at, or a file's content: the CRC-32 then differs) or ends early
    for k, offset in enumerate([100, size // 4, size // 3, size // 2, 2 * size // 3, size - 100, size - 30]):
        copy = damaged_copy(tarball, tmp_path / str(k), offset)
        proc = archive(wf, "verify", copy, check=1)
        (line,) = proc.stdout.splitlines()  # one line saying where, not intact files listed as extra
        assert line.startswith(f"{copy}: damaged"), line
        assert "Traceback" not in proc.stderr
    copy = damaged_copy(tarball, tmp_path / "sidecar", sidecar=f"{'0' * 64}  {tarball.name}\n")
    proc = archive(wf, "verify", copy, check=1)
    assert proc.stdout == f"{copy}: damaged: its sha256 is not the one {copy.name}.sha256 records, although " + (
        "its gzip data and files read back intact (one of the two files was changed after the build)\n"
    )
    copy = tmp_path / "truncated" / tarball.name
    copy.parent.mkdir()
    copy.write_bytes(tarball.read_bytes()[: size // 2])
    proc = archive(wf, "verify", copy, check=1)
    assert "damaged" in proc.stdout and "Compressed file ended before the end-of-stream marker" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_restore_writes_a_missing_run_config_only_under_config(built, tmp_path):
    """A run config outside config/ (slurm/config.yaml: a Snakemake profile for later runs) is
    refused, naming it, and nothing is written."""
    wf, folder, _, _, _ = built
    clone = Clone(wf.root, tmp_path / "clone")
    bag = tmp_path / "crafted" / folder.name
    shutil.copytree(folder, bag)
    data = bag / "data"
    manifest = json.loads((data / "archive.json").read_text())
    manifest["configfiles"].append("slurm/config.yaml")
    (data / "archive.json").write_text(json.dumps(manifest))
    (data / "run-config" / "slurm").mkdir(parents=True)
    (data / "run-config" / "slurm" / "config.yaml").write_text("executor: local\n")
    bagit.Bag(str(bag)).save(manifests=True)
    before = tree_state(clone.root)
    proc = archive(clone, "restore", bag, check=2)
    assert "the run's config files slurm/config.yaml are not in this clone" in proc.stderr
    assert "Traceback" not in proc.stderr and tree_state(clone.root) == before


def assert_logged(stderr, bars=(), steps=()):
    """stderr (not a terminal) holds each bar's first and last line, each step's two, and no '\\r'."""
    lines = stderr.splitlines()
    for what in bars:
        mine = [line for line in lines if line.startswith(f"{what} ")]
        assert mine and " (0.0%) " in mine[0] and " (100.0%) " in mine[-1], (what, stderr)
    for what in steps:
        assert any(line.startswith(what) and ": started" in line for line in lines), (what, stderr)
        assert any(line.startswith(what) and ": done in " in line for line in lines), (what, stderr)
    assert "\r" not in stderr


def test_build_verify_and_restore_log_their_progress(built, tmp_path):
    wf, _, tarball, _, _ = built
    assert_logged(
        (wf.root.parent / "build.log").read_text(),
        bars=["results: sha256 and copy", f"tarring {tarball.name}", f"sha256 of {tarball.name}"],
        steps=["snakemake --summary", "snakemake --report", "bagit: making the bag"],
    )
    checked = [f"extracting {tarball.name}", "sha256 of the bag's files", f"sha256 of {tarball.name}"]
    assert_logged(archive(wf, "verify", tarball, check=0).stderr, checked, ["bagit: validating the bag"])
    clone = Clone(wf.root, tmp_path / "clone")
    proc = archive(clone, "restore", tarball, "--cores", 2, check=0)
    rebuilt = ["sha256 of the rebuilt shards", "results: copying back"]
    assert_logged(proc.stderr, checked + rebuilt, ["bagit: validating the bag", "snakemake: rebuilding 3 shards"])
