"""Tracking (config key `tracking`, rethink.tracking): TensorBoard event files and W&B offline
runs per cell, read back; history.csv the same with tracking on or off; a missing package is a
config error before any job runs."""

import json
import shutil
import struct
import sys

import numpy as np
import pytest
import torch
import yaml

from rethink import config as rconfig
from rethink import paths, plan, tracking
from rethink.config import ConfigError
from rethink.train import cell as cells
from rethink.train import loop
from rethink.train.data import SplitCache
from rethink.train.loop import Job, train

from conftest import SCHEMA, Workflow, tiny_config
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


def tensorboard_scalars(cell):
    """{tag: [(step, value)]} of a cell's TensorBoard runs, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(paths.tracking_dir("tensorboard", cell["cell"])))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_resumed_cell_has_the_curves_of_its_history(tmp_path, monkeypatch):
    """A run tracked past its last checkpoint, then stopped: the resumed run's curves are its
    history.csv's, one point per epoch (TensorBoard drops the stopped attempt's events)."""
    monkeypatch.chdir(tmp_path)
    data = (
        [write_split(tmp_path / "train.h5", 64, (1, 8, 8), "train", 1)],
        [write_split(tmp_path / "test.h5", 32, (1, 8, 8), "test", 2)],
    )
    _, cell = settings("none")[1].cells["synth/mlp/none/true_labels/s0"]
    cell = dict(cell, hparams=dict(cell["hparams"], max_epochs=5))
    job, tracked = Job(cell, *data, tmp_path / "out", tmp_path / "c.pt"), settings("tensorboard")[0]
    key, dev = cells.inputs_sha256(cell, *data), torch.device("cpu")
    member = loop.Member(job, key, None, SplitCache(dev).splits(job), dev, echo=False, tracking_settings=tracked)
    for _ in range(member.steps_per_epoch + 1):  # to just past epoch 1: the checkpoint
        member.train_step()
    member.save()
    for _ in range(2 * member.steps_per_epoch):  # epochs 2 and 3 tracked, not in the checkpoint
        member.train_step()
    member.tracker.close(128 + 15)
    before = tensorboard_scalars(cell)
    assert [step for step, _ in before["train_avg_acc"]] == [4, 8, 12]  # epochs 1, 2, 3
    train(job, echo=False, tracking_settings=tracked)
    header, *rows = [r.split(",") for r in history(job.out_dir)]
    rows = [dict(zip(header, r)) for r in rows]
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    for tag, logged in tensorboard_scalars(cell).items():
        assert logged == [(int(r["step"]), np.float32(float(r[tag]))) for r in rows if r[tag]], tag


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


def test_wandbs_own_mode_variable_wins_over_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the config says offline
    data = (
        [write_split(tmp_path / "train.h5", 32, (1, 8, 8), "train", 1)],
        [write_split(tmp_path / "test.h5", 16, (1, 8, 8), "test", 2)],
    )
    _, cell = settings("none")[1].cells["synth/mlp/none/true_labels/s0"]
    cell = dict(cell, hparams=dict(cell["hparams"], max_epochs=1))
    train(Job(cell, *data, tmp_path / "out", tmp_path / "c.pt"), echo=False, tracking_settings=settings("wandb")[0])
    import wandb

    wandb.teardown()  # a run file would be complete now
    assert (tmp_path / "out" / "summary.json").exists()
    assert not list(paths.tracking_dir("wandb", cell["cell"]).rglob("run-*.wandb"))  # disabled: no run file


def test_a_missing_package_is_a_config_error_naming_the_key_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"tracking.backend: 'wandb' needs the package wandb.*\.\[tracking\]"):
        settings("wandb")
    settings("tensorboard")  # installed: fine


@pytest.mark.workflow
def test_switching_tracking_on_reruns_nothing_and_a_retrained_cell_is_tracked(finished, tmp_path):
    """Through the snakemake CLI: the key reaches the trainer (the workflow's environment), and
    a finished run stays finished when it is switched on."""
    wf, config, _ = finished
    wf = Workflow(tmp_path / "wf", source=wf)
    tracked = wf.write_config(dict(yaml.safe_load(config.read_text()), tracking={"backend": "tensorboard"}))
    assert wf.planned_jobs("--configfile", tracked) == ({}, set())
    cell = "synth/mlp/none/true_labels/s0"  # made to train again: its outputs and checkpoint gone
    paths.cell_file(wf.root / paths.RESULTS / "cells" / cell, "summary").unlink()
    shutil.rmtree(wf.root / paths.RESULTS / "checkpoints" / cell)
    wf.run("--configfile", tracked, "-c2")
    runs = wf.root / paths.RESULTS / "tracking" / "tensorboard"
    assert [p.parent.relative_to(runs).as_posix() for p in runs.rglob("events.out.tfevents.*")] == [cell]
