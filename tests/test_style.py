"""Code style, checked like behaviour: ruff (lint rules and format, pyproject's [tool.ruff]) on the
Python, snakefmt on the workflow files."""

import os
import shutil
import subprocess
import sys

from conftest import REPO

TOOLS = os.path.dirname(sys.executable)  # the environment's own console scripts
PYTHON = [str(REPO / part) for part in ("src", "tests", "bench")]


def run(tool, *args):
    return subprocess.run([shutil.which(tool, path=TOOLS), *args], cwd=REPO, capture_output=True, text=True)


def test_python_passes_ruffs_lint_rules():
    proc = run("ruff", "check", "--no-cache", *PYTHON)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_is_ruff_formatted():
    proc = run("ruff", "format", "--no-cache", "--check", "--diff", *PYTHON)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_files_are_snakefmt_clean():
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    proc = run("snakefmt", "--check", "--diff", *map(str, files))
    assert proc.returncode == 0, proc.stdout + proc.stderr
