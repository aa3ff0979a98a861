"""Where a long single process is (writing ImageNet shards, featurising and solving a kernel row,
building and restoring an archive), on stderr: tqdm's bar on a terminal, whole lines in a log file.

Snakemake sends a rule's output to its log file, where tqdm's carriage-return redraws would pile up
into one endless line. There `Progress` writes a line when it starts, at most one every
`LOG_SECONDS` while it counts, and one when it ends (also when the process stops early: the line
says where), with the average rate since the start and the ETA it gives:

    shards train 12/64 (18.8%) 3.10shards/s elapsed 00:04 eta 00:17

One long call that cannot count (a Cholesky factorisation, a library hashing every file) is a
`Step`: a line when it starts (with an estimate of its duration where the caller has one) and one
when it is done.
"""

import sys
import time

from tqdm import tqdm

LOG_SECONDS = 30.0  # in a log file: at most one line per bar this often (besides its first and last)
LINE = "{desc} {n_fmt}/{total_fmt} ({percentage:.1f}%) {rate_fmt} elapsed {elapsed} eta {remaining}"


def duration(seconds):
    """Seconds as a Step says them: '12.3 s' under a minute, else tqdm's [H:]MM:SS."""
    return f"{seconds:.1f} s" if seconds < 60 else tqdm.format_interval(seconds)


def _isatty(stream):
    return getattr(stream, "isatty", lambda: False)()


class Progress(tqdm):
    """`total` `unit`s of work called `what` (unit "B": bytes, shown as kB, MB, GB), counted with
    `update(n)`; a context manager. `seconds` (default LOG_SECONDS) and `clock` (a test's fake
    clock, seconds as a float) apply to the log-file lines."""

    monitor_interval = 0  # no monitor thread: with miniters = 1 every update looks at the clock

    def __init__(self, what, total, unit, *, file=None, seconds=None, clock=None):
        file = sys.stderr if file is None else file
        self.lines, self._written = not _isatty(file), None
        options = {"unit_scale": True} if unit == "B" else {}
        if self.lines:  # no smoothing: the rate is the average since the start, the ETA the one it gives
            options.update(bar_format=LINE, leave=False, smoothing=0, ascii=True)
            options.update(mininterval=LOG_SECONDS if seconds is None else seconds)
        super().__init__(desc=what, total=total, unit=unit, file=file, miniters=1, **options)
        if clock is not None:  # as tqdm's own tests set theirs; the first line said elapsed 0 already
            self._time = clock
            self.start_t = self.last_print_t = clock()

    def display(self, msg=None, pos=None):
        if not self.lines:
            return super().display(msg, pos)
        if self.n != self._written:  # closing draws again: the last count is written once
            self.fp.write(" ".join(self.format_meter(**self.format_dict).split()) + "\n")
            self.fp.flush()
            self._written = self.n
        return False  # nothing on the line to clear

    def clear(self, nolock=False):
        if not self.lines:  # a log file's lines stay
            super().clear(nolock)


def say(line, file=None):
    """One line among the bars: on a terminal tqdm moves them out of its way; in a log file the
    line is simply written."""
    file = sys.stderr if file is None else file
    if _isatty(file):
        tqdm.write(line, file=file)
    else:
        file.write(line + "\n")
    file.flush()


class Step:
    """One long call as two lines, `what: started[, about <estimate>]` and `what: done in <time>`;
    a context manager whose `seconds` is the call's duration once it is done."""

    def __init__(self, what, estimate=None, *, file=None, clock=time.perf_counter):
        self.what, self.estimate, self.file, self.clock, self.seconds = what, estimate, file, clock, None

    def __enter__(self):
        about = "" if self.estimate is None else f", about {duration(self.estimate)}"
        say(f"{self.what}: started{about}", self.file)
        self.start = self.clock()
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.seconds = self.clock() - self.start
            say(f"{self.what}: done in {duration(self.seconds)}", self.file)
