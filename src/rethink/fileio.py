"""Atomic file writes: a temp file beside the target, renamed into place only when complete,
so a killed job never leaves a half-written output for the next run to trust, and a full disk
is one line naming the file and the free space, the partial file removed. And the one JSON
spelling of a value, which is what cell.json files, rule parameters and hashes compare."""

import contextlib
import errno
import json
import os
import pathlib
import re
import shutil

from rethink.errors import RethinkError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _temporary(path, pid):
    return path.with_name(f".{path.name}.tmp{pid}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds.

    A killed writer cannot remove its temporary; the next write of the same file does. (One
    writer per file at a time: Snakemake runs one job per output.) No space left (or quota
    exceeded) is a RethinkError naming the file and the space free once the temporary is gone.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = re.compile(re.escape(_temporary(path, "").name) + r"\d+")
    for leftover in path.parent.iterdir():
        if stale.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)
    tmp = _temporary(path, os.getpid())
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise RethinkError(
            f"{path}: could not be written ({err.strerror}; {free:,} bytes free there now, its partial copy "
            "removed): free some space and run again"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def canonical_json(obj):
    """The one JSON spelling of a value: sorted keys, no whitespace (decides reruns)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
