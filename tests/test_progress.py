"""rethink.progress: the lines a log file gets (what, count of total, percentage, rate, elapsed, ETA),
how often (a fake clock: no test waits), the bar a terminal gets, and Step's two lines."""

import io

import pytest

from rethink import progress
from rethink.progress import Progress, Step, say


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_a_whole_line_at_the_start_every_interval_and_at_the_end():
    log, clock = io.StringIO(), Clock()
    with Progress("shards train", 64, "shards", file=log, seconds=10, clock=clock) as bar:
        for _ in range(64):
            clock.now += 0.5  # 2 shards a second: a line each 20 shards
            bar.update()
    assert log.getvalue().splitlines() == [
        "shards train 0/64 (0.0%) ?shards/s elapsed 00:00 eta ?",
        "shards train 20/64 (31.2%) 2.00shards/s elapsed 00:10 eta 00:22",
        "shards train 40/64 (62.5%) 2.00shards/s elapsed 00:20 eta 00:12",
        "shards train 60/64 (93.8%) 2.00shards/s elapsed 00:30 eta 00:02",
        "shards train 64/64 (100.0%) 2.00shards/s elapsed 00:32 eta 00:00",
    ]
    assert "\r" not in log.getvalue()


def test_the_rate_is_the_average_since_the_start_and_bytes_are_shown_in_units_of_1000():
    log, clock = io.StringIO(), Clock()
    with Progress("hashing", 2 * 10**9, "B", file=log, seconds=0, clock=clock) as bar:
        for seconds in (1, 3):  # 100 MB/s, then 100 MB in 3 s: 50 MB/s on average since the start
            clock.now += seconds
            bar.update(10**8)
    assert log.getvalue().splitlines()[1:] == [
        "hashing 100M/2.00G (5.0%) 100MB/s elapsed 00:01 eta 00:19",
        "hashing 200M/2.00G (10.0%) 50.0MB/s elapsed 00:04 eta 00:36",
    ]


def test_the_default_interval_is_log_seconds(monkeypatch):
    log, clock = io.StringIO(), Clock()
    monkeypatch.setattr(progress, "LOG_SECONDS", 60.0)
    with Progress("rows", 400, "rows", file=log, clock=clock) as bar:
        for _ in range(400):
            clock.now += 0.25  # 100 s in all: one line at 60 s besides the first and the last
            bar.update()
    assert [line.split()[1] for line in log.getvalue().splitlines()] == ["0/400", "240/400", "400/400"]


def test_a_process_stopped_early_says_where_and_nothing_is_written_twice():
    log, clock = io.StringIO(), Clock()
    with pytest.raises(KeyboardInterrupt), Progress("images", 10, "images", file=log, seconds=0, clock=clock) as bar:
        for _ in range(3):
            clock.now += 2
            bar.update()
        raise KeyboardInterrupt
    assert [line.split()[1] for line in log.getvalue().splitlines()] == ["0/10", "1/10", "2/10", "3/10"]
    # under one a second, tqdm gives the seconds per unit
    assert log.getvalue().splitlines()[-1] == "images 3/10 (30.0%) 2.00s/images elapsed 00:06 eta 00:14"


def test_lines_said_between_bar_lines_are_plain_lines():
    log, clock = io.StringIO(), Clock()
    with Progress("shards", 4, "shards", file=log, seconds=100, clock=clock) as bar:
        clock.now += 1
        bar.update()
        say("clean: shard 1 reused", file=log)
        clock.now += 1
        bar.update(3)
    assert log.getvalue().splitlines() == [
        "shards 0/4 (0.0%) ?shards/s elapsed 00:00 eta ?",
        "clean: shard 1 reused",
        "shards 4/4 (100.0%) 2.00shards/s elapsed 00:02 eta 00:00",
    ]


def test_a_terminal_gets_tqdms_bar_redrawn_in_place():
    screen = Terminal()
    with Progress("shards train", 64, "shards", file=screen, seconds=0) as bar:
        bar.update(32)
        bar.update(32)
    text = screen.getvalue()
    assert text.count("\r") >= 2 and text.count("\n") == 1 and text.endswith("\n")  # one line, drawn over
    final = text.rstrip("\n").split("\r")[-1]
    assert final.startswith("shards train: 100%|") and "| 64/64 [" in final and "shards/s]" in final


def test_a_step_says_when_it_starts_with_its_estimate_and_when_it_is_done():
    log, clock = io.StringIO(), Clock()
    with Step("Cholesky of K + 0 I: n = 60000", estimate=150.0, file=log, clock=clock) as step:
        clock.now += 162.5
    assert step.seconds == 162.5
    with Step("snakemake --report", file=log, clock=clock):
        clock.now += 2.25
    with pytest.raises(RuntimeError), Step("bagit", file=log, clock=clock):
        raise RuntimeError  # the error says the rest: no "done" line
    assert log.getvalue().splitlines() == [
        "Cholesky of K + 0 I: n = 60000: started, about 02:30",
        "Cholesky of K + 0 I: n = 60000: done in 02:42",
        "snakemake --report: started",
        "snakemake --report: done in 2.2 s",
        "bagit: started",
    ]
