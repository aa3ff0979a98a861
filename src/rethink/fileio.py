"""Atomic file writes: a temp file beside the target, renamed into place only when complete,
so a killed job never leaves a half-written output for the next run to trust."""

import contextlib
import os
import pathlib


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)
