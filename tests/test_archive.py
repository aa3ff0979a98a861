"""Archiving (issue 12): a bundle of the finished tiny run, built, checked, restored into a
fresh git clone and prepared for Zenodo, all through the real CLIs (snakemake, git,
python -m rethink.archive, cffconvert, the RO-Crate validator)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import h5py
import pytest
import yaml
from rocrate.rocrate import ROCrate

from conftest import REPO, Workflow

pytestmark = pytest.mark.workflow
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
CONFIG = "config/test.yaml"  # where conftest's `finished` run wrote its config
EDITED_CELL = "synth/mlp/wd/random_labels/s0"


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, env=dict(os.environ, **GIT_ENV), check=True, capture_output=True)


def archive(wf, *args, check=None):
    proc = subprocess.run(
        [sys.executable, "-m", "rethink.archive", *map(str, args)],
        cwd=wf.root,
        env=wf.env,
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
            PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
            PYTHONPATH=os.pathsep.join([str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )


@pytest.fixture(scope="module")
def built(finished, tmp_path_factory):
    """The finished run in a git repo, archived once: (workflow, bundle folder, tarball, results
    before, results after)."""
    wf = committed_copy(finished[0], tmp_path_factory.mktemp("archive") / "wf")
    before = results_state(wf.root)
    proc = archive(wf, "build", "--configfile", CONFIG, check=0)
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
    assert records[f"results/cells/{EDITED_CELL}/summary.json"]["rule"] == "train_synth_mlp_p002"
    report = (data / "report.html").read_text()
    caption = (REPO / "workflow" / "report" / "table4.rst").read_text().split()[:4]
    assert "table4.csv" in report and " ".join(caption) in report
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
        "figure_fig2b": 1,
        "table_table4": 1,
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
