"""Signals at the edges of a pack's run (tests/test_train.py covers a signal mid-run)."""

import json
import os
import signal

import pytest

from rethink.train import loop
from rethink.train.__main__ import main

from test_train import make_cell, write_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sigterm_after_the_last_cell_finished_exits_128_plus_the_signal(tmp_path, monkeypatch, capsys):
    """The signal arrives while the pack's last cell writes its outputs: nothing is left to save,
    and the run still stops the way a signal stops it (exit 128 + SIGTERM, one line)."""
    data = (
        [write_split(tmp_path / "train.h5", 64, (1, 8, 8), "train", 1)],
        [write_split(tmp_path / "test.h5", 16, (1, 8, 8), "test", 2)],
    )
    cells = [make_cell(seed=s, max_epochs=1 + s, crop_size=8, batch_size=32) for s in range(2)]
    pack = [
        dict(cell=c, train=data[0], test=data[1], out_dir=str(tmp_path / str(i)), checkpoint=str(tmp_path / f"{i}.pt"))
        for i, c in enumerate(cells)
    ]
    finish = loop.Member.finish
    finished = []

    def finish_then_signal(member):
        summary = finish(member)
        finished.append(member.cell["seed"])
        if len(finished) == len(cells):
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once: this is the main thread
        return summary

    monkeypatch.setattr(loop.Member, "finish", finish_then_signal)
    with pytest.raises(SystemExit) as stop:
        main(["--pack", json.dumps(pack)])
    assert stop.value.code == 128 + signal.SIGTERM
    assert finished == [0, 1] and all((tmp_path / str(i) / "summary.json").exists() for i in range(2))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped by SIGTERM after every cell had finished" in err, err
