"""Tracking (config key `tracking`, rethink.tracking): TensorBoard event files and W&B offline
runs per cell, read back; history.csv the same with tracking on or off; a missing package is a
config error before any job runs."""

import json
import struct
import sys

import numpy as np
import pytest

from rethink import config as rconfig
from rethink import paths, plan, tracking
from rethink.config import ConfigError
from rethink.train.loop import Job, train

from conftest import SCHEMA, tiny_config
from test_train import write_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPERIMENTS = {"e": {"dataset": "synth", "grid": [{"architectures": ["mlp"], "corruption_levels": [0, 1]}]}}
CURVES = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "train_top5", "test_top5")


def settings(backend):
    """What the workflow exports for a config with `tracking.backend: backend`."""
    config = rconfig.validate(tiny_config(EXPERIMENTS) | {"tracking": {"backend": backend}}, SCHEMA)
    built = plan.Plan(config)
    exported = built.environment()[tracking.ENV]
    return json.loads(exported), built


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """Train one small cell under each backend, in a results tree of its own; -> {backend: out dir}."""
    monkeypatch.chdir(tmp_path)  # the results tree (paths.RESULTS) is relative to the run's folder
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the user's ~/.config
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    data = (
        [write_split(tmp_path / "train.h5", 64, (1, 8, 8), "train", 1)],
        [write_split(tmp_path / "test.h5", 32, (1, 8, 8), "test", 2)],
    )
    # a cell of experiment e as the plan writes its cell.json; eval every 2nd epoch: empty columns too
    _, spec = settings("none")[1].cells["synth/mlp/none/true_labels/s0"]
    hparams = dict(spec["hparams"], max_epochs=5, eval_every_epochs=2, dropout=0.3, augment=True)
    cell = dict(spec, hparams=hparams)
    out = {}
    for backend in ("none", "tensorboard", "wandb"):
        out[backend] = tmp_path / "cells" / backend
        train(Job(cell, *data, out[backend], tmp_path / f"{backend}.pt"), echo=False,
              tracking_settings=settings(backend)[0])  # fmt: skip
    import wandb

    # W&B's service writes the run file after finish(); its shutdown waits for it (as at a trainer's exit)
    wandb.teardown()
    return cell, out


def history(out_dir):
    """history.csv's rows as text, without elapsed_s (the one column that is wall time)."""
    lines = (out_dir / "history.csv").read_text().splitlines()
    return [line.rsplit(",", 1)[0] for line in lines]


def test_history_is_the_same_with_tracking_on_or_off(trained):
    cell, out = trained
    assert history(out["tensorboard"]) == history(out["none"]) == history(out["wandb"])
    assert len(history(out["none"])) == 1 + 6  # the header, epochs 0..5
    assert not paths.tracking_dir("none", cell["cell"]).exists()


def test_tensorboard_events_are_the_history_rows(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cell, out = trained
    events = EventAccumulator(str(paths.tracking_dir("tensorboard", cell["cell"])))
    events.Reload()
    header, *rows = [r.split(",") for r in history(out["tensorboard"])]
    rows = [dict(zip(header, r)) for r in rows]
    assert set(events.Tags()["scalars"]) == {*CURVES, "train_avg_loss", "train_avg_acc"}
    for tag in events.Tags()["scalars"]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(int(r["step"]), np.float32(float(r[tag]))) for r in rows if r[tag]]  # stored as float32
        assert logged == expected, tag
    assert [e.step for e in events.Scalars("test_acc")] == [0, 8, 16, 20]  # epochs 0, 2, 4 and the last, 5


def wandb_records(path):
    """The records of a W&B run file (run-<id>.wandb, what `wandb sync` uploads): LevelDB's log
    format (32 KiB blocks of records with a 7-byte header: crc, length, type) after W&B's 7-byte
    file header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, pos, part, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == kind == 0:
            break
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, or LAST of a record split over blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            yield record
            part = b""


def test_wandb_runs_offline_named_by_the_cell_with_its_json_grouped_by_experiment(trained):
    cell, out = trained
    (run,) = (paths.tracking_dir("wandb", cell["cell"]) / "wandb").glob("offline-run-*")
    (run_file,) = run.glob("run-*.wandb")
    records = list(wandb_records(run_file))
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.display_name == cell["cell"] and started.run_group == "e" and list(started.tags) == ["e"]
    config = {item.key: json.loads(item.value_json) for item in started.config.update if item.key != "_wandb"}
    assert config == cell  # cell.json
    logged = [
        {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    rows = [r.split(",") for r in history(out["wandb"])]
    expected = [{k: float(v) for k, v in zip(rows[0], r) if v and k != "step"} for r in rows[1:]]
    assert [{k: v for k, v in row.items() if not k.startswith("_")} for row in logged] == expected
    assert [row["_step"] for row in logged] == [int(r[0]) for r in rows[1:]]


def test_a_missing_package_is_a_config_error_naming_the_key_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"tracking.backend: 'wandb' needs the package wandb.*\.\[tracking\]"):
        settings("wandb")
    settings("tensorboard")  # installed: fine
