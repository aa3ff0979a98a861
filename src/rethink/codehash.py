"""Content hashes of the package's own sources, per pipeline stage.

Snakemake does not track modules a rule's command imports, and where it compares code it
compares mtimes or command text. The workflow passes these hashes as rule parameters, so a
step reruns when the code it runs changes, and a touched or freshly checked-out file with the
same content reruns nothing.
"""

import hashlib
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent
STAGES = {
    "data": ("data", "fileio.py", "errors.py"),
    "train": (
        "train",
        "models",
        "data/shards.py",
        "data/sources.py",
        "data/randomize.py",
        "data/imagenet.py",
        "fileio.py",
        "errors.py",
        "torchvision_guard.py",
    ),
    "analysis": ("analysis/__init__.py", "analysis/aggregate.py", "fileio.py", "errors.py"),
    # kernel interpolation (Table 3) and Theorem 1: the solver and what reads its inputs
    "kernel": ("kernel", "data/shards.py", "fileio.py", "errors.py"),
    # figures, tables and claims (Figure 3 draws a model, so the models count too)
    "report": (
        "analysis/figures.py",
        "analysis/tables.py",
        "analysis/claims.py",
        "analysis/metrics.py",
        "analysis/paper.py",
        "data/randomize.py",
        "models",
        "fileio.py",
        "errors.py",
    ),
}


def digest(stage):
    """sha256 (first 16 hex digits) over the stage's source files: relative names and bytes."""
    h = hashlib.sha256()
    for part in STAGES[stage]:
        root = PACKAGE / part
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(f"{path.relative_to(PACKAGE)}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
