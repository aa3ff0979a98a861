"""docs/BENCHMARKS.md is made of sections, each rewritten by the benchmark that names it."""

import pathlib
import time

from rethink.fileio import write_text_atomic

PATH = pathlib.Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEach section is rewritten by the script it names; numbers carry their machine and date.\n"


def publish(name, lines, write=True):
    """Print a benchmark's Markdown section and (unless write is False) store it."""
    print("\n".join(lines))
    if write:
        write_section(name, lines)


def write_section(name, lines):
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = "\n".join([start, *lines, end])
    old = PATH.read_text() if PATH.exists() else HEADER
    if start in old:
        new = old[: old.index(start)] + text + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    write_text_atomic(PATH, new)


def best_of(repeats, fn):
    """The shortest of `repeats` wall-clock timings of fn() (CPU work; a GPU bench syncs itself)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
