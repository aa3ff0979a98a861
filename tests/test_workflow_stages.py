"""One rule per stage and code hashes from real imports, through the real snakemake CLI: Snakemake's
per-rule options reach every training job, and editing a module reruns exactly the rules whose
command imports it (found by watching what each stage's processes really import)."""

import json
import os
import re

import pytest

from rethink import codehash, plan

from conftest import CONFIG, REPO, Workflow

pytestmark = pytest.mark.workflow
SRC = REPO / "src"
# Records, at exit, which of the package's files a process imported: a sitecustomize module
# (Python imports it at start-up from the path) in every process of the run, jobs included.
TRACER = """
import atexit, json, os, sys

def _record():
    src = os.environ["TRACE_SRC"]
    files = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
    files = sorted(f for f in files if f.startswith(src))
    with open(os.path.join(os.environ["TRACE_DIR"], f"{os.getpid()}.json"), "w") as fh:
        json.dump({"argv0": sys.argv[0], "files": files}, fh)

atexit.register(_record)
"""


def jobs_by_rule(text):
    """The dry run's jobs: {rule: [(its text, why it runs)]}."""
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        match = re.match(r"(?:local)?rule (\w+):\n", block)
        if match:
            reason = re.search(r"reason: (.*)", block)
            jobs.setdefault(match[1], []).append((block, reason[1] if reason else ""))
    return jobs


def test_set_resources_reaches_every_training_job_and_until_stops_after_training(workflow):
    config = workflow.write_config(CONFIG)
    default = jobs_by_rule(workflow.run("-n", "--configfile", config).stdout)
    assert len(default["train"]) == 4 and all("runtime=5," in job for job, _ in default["train"])
    changed = jobs_by_rule(workflow.run("-n", "--configfile", config, "--set-resources", "train:runtime=7").stdout)
    assert len(changed["train"]) == 4 and all("runtime=7," in job for job, _ in changed["train"])
    assert all("runtime=7" not in job for rule, jobs in changed.items() if rule != "train" for job, _ in jobs)
    until = jobs_by_rule(workflow.run("-n", "--configfile", config, "--until", "train").stdout)
    assert set(until) == {"data_clean", "data_randomize", "train"} and len(until["train"]) == 4


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A complete run of the tiny config in which every process records what it imports:
    {entry module: the package files its processes imported}, and the finished workflow."""
    root = tmp_path_factory.mktemp("traced")
    wf = Workflow(root / "wf")
    tracer, trace = root / "tracer", root / "trace"
    tracer.mkdir()
    trace.mkdir()
    (tracer / "sitecustomize.py").write_text(TRACER)
    env = dict(
        wf.env,
        PYTHONPATH=os.pathsep.join([str(tracer), wf.env["PYTHONPATH"]]),
        TRACE_DIR=str(trace),
        TRACE_SRC=str(wf.root / "src"),
    )
    wf.run("--configfile", wf.write_config(CONFIG), "-c2", env=env)
    src = wf.root / "src"
    entries = {str(codehash.locate(module, [src])[1]).replace("__init__.py", "__main__.py"): module
               for module in plan.ENTRIES.values()}  # fmt: skip
    imported = {}
    for record in trace.glob("*.json"):
        record = json.loads(record.read_text())
        if record["argv0"] in entries:
            files = {os.path.relpath(f, src) for f in record["files"]}
            imported.setdefault(entries[record["argv0"]], set()).update(files)
    return wf, imported


# The rules of the tiny config's run, by the module they run.
RULES = {
    "rethink.data.prepare": {"data_clean", "data_randomize"},
    "rethink.train": {"train"},
    "rethink.analysis.aggregate": {"analysis_aggregate"},
    "rethink.analysis.figures": {"figure"},
    "rethink.analysis.tables": {"table"},
    "rethink.analysis.claims": {"analysis_claims"},
}


def rerun_rules(wf):
    """The rules whose outputs are out of date because their own parameters (the code hashes)
    changed: `snakemake --summary` says so of every output (a dry run names only the first reason
    on a path: downstream jobs already rerun for their updated inputs)."""
    rows = [line.split("\t") for line in wf.run("--summary", "--configfile", "config/test.yaml").stdout.splitlines()]
    assert rows[0][2] == "rule" and rows[0][4] == "status", rows[0]
    return {row[2] for row in rows[1:] if row[4] == "params changed"}


def test_editing_a_module_reruns_exactly_the_rules_whose_command_imports_it(traced, tmp_path):
    source, imported = traced
    assert set(imported) == set(RULES)  # every stage of the run was seen
    wf = Workflow(tmp_path / "wf", source=source)
    src = wf.root / "src"
    hashed = {module: {str(p.relative_to(src)) for p in codehash.files(module, [src])} for module in RULES}
    for module, files in imported.items():  # the hash covers all a stage's processes really import
        assert files <= hashed[module], (module, files - hashed[module])
    # the modules the hand-kept lists of earlier versions missed: the data stage imports them
    assert {"rethink/__init__.py", "rethink/paths.py"} <= imported["rethink.data.prepare"]
    (src / "rethink" / "unused.py").write_text('"""Imported by nothing."""\n\nVALUE = 1\n')
    # The package's files by the rules an edit of each must rerun; one Snakemake check per
    # distinct set (every file in a set is in exactly the same hashes, so it reruns the same rules).
    by_rules = {}
    for path in sorted((src / "rethink").rglob("*.py")):
        name = str(path.relative_to(src))
        by_rules.setdefault(frozenset().union(*(RULES[m] for m in RULES if name in hashed[m])), []).append(path)
    assert len(by_rules) >= 4 and frozenset() in by_rules, by_rules  # shared, stage-only, unused files
    for expected, paths in by_rules.items():
        path = paths[len(paths) // 2]
        text = path.read_text()
        path.write_text(text + "\nEDITED = True\n")
        rerun = rerun_rules(wf)
        path.write_text(text)
        assert rerun == expected, (path.relative_to(src), rerun, expected)


@pytest.mark.parametrize("name", ["paths.py", "train/loop.py", "analysis/tables.py"])
def test_a_comment_only_edit_reruns_nothing(traced, tmp_path, name):
    """Code hashes read a module without its comments and blank lines (rethink.codehash)."""
    wf = Workflow(tmp_path / "wf", source=traced[0])
    path = wf.root / "src" / "rethink" / name
    text = path.read_text()
    assert "\nimport " in text
    path.write_text(text.replace("\nimport ", "\n# a comment, and a blank line\n\nimport ", 1) + "\n\n# the end\n")
    assert "Nothing to be done" in wf.run("-n", "--configfile", "config/test.yaml").stdout
