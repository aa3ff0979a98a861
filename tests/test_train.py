"""The trainer: fitting random labels, determinism, SIGTERM + resume, regularizer wiring, errors."""

import csv
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from rethink.data.shards import write_shard
from rethink.errors import RethinkError
from rethink.models import build_model, count_parameters
from rethink.train import cell as cells
from rethink.train import checkpoint
from rethink.train.__main__ import main
from rethink.train.loop import Job, resolve_device, train
from rethink.train.outputs import HISTORY_COLUMNS

from conftest import PATIENCE_S, freeze, log_match, wait_until

HPARAMS = {
    "lr": 0.01, "lr_decay": 0.95, "momentum": 0.9, "batch_size": 32, "max_epochs": 30,
    "weight_decay": 0.0, "dropout": 0.0, "random_crop": False, "crop_size": 28, "crop_pad": 2,
    "augment": False, "rotate_degrees": 25.0, "fit_threshold": 1.0, "eval_every_epochs": 1,
    "checkpoint_minutes": 5.0, "device": "cpu", "init": "tensorflow",
}  # fmt: skip
TIMING = {"elapsed_s", "wall_s"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_cell(arch="mlp_1x512", width=1.0, seed=0, **hp):
    return {
        "cell": f"test/{arch}",
        "arch": arch,
        "width": width,
        "seed": seed,
        "hparams": dict(HPARAMS, **hp),
        "dataset": "synth",
        "noise": "true_labels",
    }


def write_split(path, n, shape, split, seed, classes=10):
    """Random images with random labels: nothing to learn, everything to memorise. Stored as a
    clean shard (the trainer checks a cell's noise against its shards: these cells say true_labels)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "images": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "labels": rng.integers(0, classes, n).astype(np.int64),
    }
    attrs = dict(
        dataset="synth", split=split, noise="clean", level=0.0, seed=-1, shard_index=0, n_shards=1, num_classes=classes
    )
    write_shard(path, arrays, attrs)
    return str(path)


@pytest.fixture
def data(tmp_path):
    """256 random-labelled 1x28x28 training images and 64 test images."""
    return [write_split(tmp_path / "train.h5", 256, (1, 28, 28), "train", 1)], [
        write_split(tmp_path / "test.h5", 64, (1, 28, 28), "test", 2)
    ]


def run(tmp_path, cell, data, name="run"):
    summary = train(Job(cell, *data, tmp_path / name, tmp_path / f"{name}.ckpt"), echo=False)[0]
    return summary, read_history(tmp_path / name / "history.csv")


def read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def untimed(rows_or_summary):
    if isinstance(rows_or_summary, dict):
        return {k: v for k, v in rows_or_summary.items() if k not in TIMING}
    return [untimed(row) for row in rows_or_summary]


def history_lines(path):
    """history.csv's lines as a reader sees them while the cell trains (none before the file exists)."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def untimed_lines(lines):
    """history.csv's lines without their last column, elapsed_s: the bytes two runs share."""
    assert lines[0].endswith(",elapsed_s")
    return [line.rsplit(",", 1)[0] for line in lines]


def check_rows(lines):
    """A history as it grows: the header, then one row per epoch from epoch 0, none repeated."""
    assert lines[0] == ",".join(HISTORY_COLUMNS)
    assert [int(line.split(",")[1]) for line in lines[1:]] == list(range(len(lines) - 1)), lines
    return len(lines) - 1


# ----------------------------------------------------------------------------- fitting


def test_mlp_fits_random_labels(tmp_path, data):
    # the budget is HPARAMS' 30 epochs of 8 steps (a few CPU seconds), not a wall-clock limit
    summary, history = run(tmp_path, make_cell(), data)
    assert summary["stop_reason"] == "fit_threshold" and summary["converged"] is True
    assert summary["final_train_acc"] == 1.0 and float(history[-1]["train_acc"]) == 1.0
    assert all(float(row["train_acc"]) < 1.0 for row in history[:-1])  # stopped at the first fit
    steps_per_epoch = 256 // 32
    assert summary["steps_to_fit"] == summary["epochs_to_fit"] * steps_per_epoch == summary["steps"]
    assert summary["n_params"] == 784 * 512 + 512 + 512 * 10 + 10
    assert (summary["dataset"], summary["noise"]) == ("synth", "true_labels")  # extra keys copied
    assert summary["hparams"] == HPARAMS and summary["device"] == "cpu"
    # history: one row per epoch from the untrained net on, lr = the lr that epoch trained with
    assert tuple(history[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history] == list(range(summary["epochs_to_fit"] + 1))
    assert [int(r["step"]) for r in history] == [e * steps_per_epoch for e in range(len(history))]
    assert float(history[3]["lr"]) == pytest.approx(0.01 * 0.95**2)
    assert summary["best_test_acc"] == max(float(r["test_acc"]) for r in history)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "start cell=test/mlp_1x512" in log and "stop: fit_threshold" in log
    assert len(re.findall(r"epoch\s+\d+ step\s+\d+ lr", log)) == len(history)
    # the checkpoint is now a finished one: the history and summary, to re-emit them if needed
    assert checkpoint.is_finished(torch.load(tmp_path / "run.ckpt", weights_only=True))


def test_inception_fits_random_labels(tmp_path):
    data = (
        [write_split(tmp_path / "train.h5", 64, (1, 8, 8), "train", 1)],
        [write_split(tmp_path / "test.h5", 16, (1, 8, 8), "test", 2)],
    )
    cell = make_cell("inception", width=0.25, lr=0.1, batch_size=16, crop_size=8, max_epochs=40)
    summary, history = run(tmp_path, cell, data)
    assert summary["stop_reason"] == "fit_threshold", history[-1]
    assert summary["final_train_acc"] == 1.0 and summary["epochs_to_fit"] < 40
    assert summary["n_params"] == count_parameters(build_model("inception", (1, 8, 8), 10, 0.25))


def test_max_epochs_stop(tmp_path, data):
    summary, history = run(tmp_path, make_cell(max_epochs=2, eval_every_epochs=5), data)
    assert summary["stop_reason"] == "max_epochs" and summary["converged"] is False
    assert summary["steps_to_fit"] is None and summary["epochs_to_fit"] is None
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]  # a row per epoch; the end is always evaluated
    assert history[1]["train_acc"] == "" and float(history[1]["train_avg_acc"]) > 0 and history[2]["train_acc"]
    assert re.search(
        r"epoch\s+1 step\s+8 lr 0\.01 train avg loss \d\.\d{4} train avg acc \d\.\d{4} elapsed",
        (tmp_path / "run" / "train.log").read_text(),
    )


# ----------------------------------------------------------------------------- determinism


def test_two_runs_are_identical(tmp_path, data):
    cell = make_cell(max_epochs=2, random_crop=True, augment=True, dropout=0.3)
    a, history_a = run(tmp_path, cell, data, "a")
    b, history_b = run(tmp_path, cell, data, "b")
    assert untimed(history_a) == untimed(history_b) and untimed(a) == untimed(b)
    c, history_c = run(
        tmp_path, make_cell(seed=1, max_epochs=2, random_crop=True, augment=True, dropout=0.3), data, "c"
    )
    assert untimed(history_a)[1:] != untimed(history_c)[1:]


def cli(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "rethink.train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def slow_data(tmp_path, n_train=512):
    return (
        [write_split(tmp_path / "train.h5", n_train, (1, 28, 28), "train", 1)],
        [write_split(tmp_path / "test.h5", 64, (1, 28, 28), "test", 2)],
    )


def cli_args(tmp_path, data, out, checkpoint, cell_json="cell.json"):
    return [
        "--cell", str(tmp_path / cell_json), "--train-shards", *data[0], "--test-shards", *data[1],
        "--out-dir", str(tmp_path / out), "--checkpoint", str(checkpoint),
    ]  # fmt: skip


def test_sigterm_then_resume_is_bit_identical(tmp_path, capsys):
    """history.csv grows by a row per epoch while the cell trains; SIGTERM saves and stops; the
    rerun resumes, and its history.csv and summary.json are an uninterrupted run's, bit for bit."""
    data = slow_data(tmp_path)
    # augmentation, crops and dropout: every RNG stream must survive the restart
    cell = make_cell(
        batch_size=16, max_epochs=16, random_crop=True, augment=True, dropout=0.3, checkpoint_minutes=0.002
    )
    (tmp_path / "cell.json").write_text(json.dumps(cell))
    ckpt = tmp_path / "ckpt" / "cell.pt"

    def args(out, cell_json="cell.json", checkpoint=ckpt):
        return cli_args(tmp_path, data, out, checkpoint, cell_json)

    proc = cli(args("resumed"))
    log, history = tmp_path / "resumed" / "train.log", tmp_path / "resumed" / "history.csv"
    seen = []  # history.csv as it was read while the cell trained

    def logged(pattern):
        seen.append(history_lines(history))
        return log_match(log, pattern)

    wait_until(lambda: logged(r"epoch\s+2 step\s+\d+ lr"), "epoch 2 in train.log", proc)
    assert check_rows(history_lines(history)) >= 3  # epoch k in the log: its row (and epoch 0's) in history.csv
    proc.send_signal(signal.SIGUSR1)  # save and go on
    wait_until(lambda: logged("SIGUSR1: checkpoint saved"), "the SIGUSR1 save in train.log", proc)
    assert ckpt.exists()
    proc.send_signal(signal.SIGTERM)  # save and stop
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert ckpt.exists() and not (tmp_path / "resumed" / "summary.json").exists()
    assert "SIGTERM: checkpoint saved" in log.read_text() and "stopped by SIGTERM" in err
    stopped = history_lines(history)
    assert 3 <= check_rows(stopped) < 17  # a row per epoch so far, no more

    # the checkpoint belongs to this cell: a different cell JSON is refused and nothing is deleted
    (tmp_path / "other.json").write_text(json.dumps(dict(cell, seed=1)))
    with pytest.raises(SystemExit) as exit_info:
        main(args("other", "other.json"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different cell" in err and str(ckpt) in err
    assert ckpt.exists()

    proc = cli(args("resumed"))
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 0, err
    assert checkpoint.is_finished(torch.load(ckpt, weights_only=True))
    assert re.search(r"resume from .* at epoch \d+ step \d+", log.read_text())

    proc = cli(args("straight", checkpoint=tmp_path / "ckpt" / "straight.pt"))
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 0, err
    resumed, straight = (history_lines(tmp_path / d / "history.csv") for d in ("resumed", "straight"))
    assert check_rows(straight) == 17 and untimed_lines(resumed) == untimed_lines(straight)
    # every row read while it trained is the final file's row, byte for byte (elapsed_s too)
    assert all(lines == resumed[: len(lines)] for lines in seen + [stopped] if lines)
    assert any(3 <= len(lines) < len(stopped) for lines in seen)  # and it was read as it grew
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("resumed", "straight")]
    assert untimed(summaries[0]) == untimed(summaries[1])


def test_a_resume_cuts_history_back_to_its_checkpoint(tmp_path):
    """A run killed (SIGKILL: nothing saved) epochs after its last checkpoint has rows in
    history.csv its checkpoint lacks; the resumed run rewrites the file from the checkpoint, so it
    keeps one row per epoch and ends as an uninterrupted run's."""
    data = slow_data(tmp_path, n_train=128)
    cell = make_cell(batch_size=16, max_epochs=30, lr=1e-4, dropout=0.3, augment=True, checkpoint_minutes=60.0)
    (tmp_path / "cell.json").write_text(json.dumps(cell))
    ckpt = tmp_path / "killed.pt"
    proc = cli(cli_args(tmp_path, data, "killed", ckpt))
    log, history = tmp_path / "killed" / "train.log", tmp_path / "killed" / "history.csv"
    wait_until(lambda: log_match(log, r"epoch\s+1 step"), "epoch 1 in train.log", proc)
    freeze([proc.pid], proc)  # the SIGUSR1 is taken at the first step after SIGCONT: near epoch 1
    proc.send_signal(signal.SIGUSR1)
    proc.send_signal(signal.SIGCONT)
    saved = int(wait_until(lambda: log_match(log, r"SIGUSR1: checkpoint saved at epoch (\d+)"), "the save", proc)[1])
    wait_until(lambda: len(history_lines(history)) >= saved + 4, f"epoch {saved + 2} in history.csv", proc)
    proc.kill()
    proc.wait()
    assert check_rows(history_lines(history)) >= saved + 3  # rows the checkpoint (epochs 0..saved) lacks

    proc = cli(cli_args(tmp_path, data, "killed", ckpt))
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 0, err
    assert re.search(rf"resume from .* at epoch {saved} step", log.read_text())
    train(Job(cell, *data, tmp_path / "straight", tmp_path / "straight.pt"), echo=False)
    resumed, straight = (history_lines(tmp_path / d / "history.csv") for d in ("killed", "straight"))
    assert check_rows(resumed) == 31 and untimed_lines(resumed) == untimed_lines(straight)


def test_foreign_checkpoint_is_refused(tmp_path, data):
    ckpt = tmp_path / "run.ckpt"
    other = make_cell(lr=0.02)
    checkpoint.save(ckpt, {"inputs_sha256": cells.inputs_sha256(other, *data), "device_type": "cpu"})
    with pytest.raises(RethinkError, match="different cell or different shards"):
        train(Job(make_cell(), *data, tmp_path / "out", ckpt), echo=False)
    assert ckpt.exists()
    # same cell, but a shard with other content: refused as well
    write_split(data[1][0], 64, (1, 28, 28), "test", 3)
    with pytest.raises(RethinkError, match="different cell or different shards"):
        train(Job(other, *data, tmp_path / "out", ckpt), echo=False)


# ----------------------------------------------------------------------------- regularizers


def test_weight_decay_shrinks_weights(tmp_path, data):
    plain, _ = run(tmp_path, make_cell(max_epochs=2), data, "plain")
    decayed, _ = run(tmp_path, make_cell(max_epochs=2, weight_decay=0.5), data, "decayed")
    assert decayed["param_norm"] < 0.97 * plain["param_norm"]


def test_dropout_only_in_training_mode(tmp_path, data):
    _, plain = run(tmp_path, make_cell(max_epochs=1), data, "plain")
    _, dropped = run(tmp_path, make_cell(max_epochs=1, dropout=0.5), data, "dropped")
    # same init, and evaluation runs in eval mode: the untrained net scores identically ...
    assert untimed(plain)[0] == untimed(dropped)[0]
    # ... while training with dropout takes other steps
    assert untimed(plain)[1] != untimed(dropped)[1]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("change,message", [
    (lambda c: c["hparams"].pop("lr"), r"key hparams: 'lr' is a required property"),
    (lambda c: c["hparams"].update(lr_dcay=0.9), r"key hparams: Additional properties .* \('lr_dcay' was unexpected\)"),
    (lambda c: c["hparams"].update(batch_size=12.5), r"key hparams\.batch_size: 12\.5 is not of type 'integer'"),
    (lambda c: c["hparams"].update(random_crop="yes"), r"key hparams\.random_crop: 'yes' is not of type 'boolean'"),
    (lambda c: c["hparams"].update(dropout=1.0), r"key hparams\.dropout: 1\.0 is greater than or equal to the max"),
    (lambda c: c["hparams"].update(lr=True), r"key hparams\.lr: True is not of type 'number'"),
    (lambda c: c["hparams"].update(device="tpu"), r"key hparams\.device: 'tpu' is not one of \['auto', 'cpu', "),
    (lambda c: c["hparams"].update(init="glorot"), r"key hparams\.init: 'glorot' is not one of \['tensorflow', "),
    (lambda c: c["hparams"].update(init=["pytorch"]), r"key hparams\.init: \['pytorch'\] is not one of"),
    (lambda c: c.update(arch="resnet"), r"key arch: 'resnet' is not a user's model .* \(inception, inception_nobn, "),
    (lambda c: c.pop("seed"), r"'seed' is a required property"),
    (lambda c: c.update(wall_s=3), r"'wall_s' is reserved for summary\.json"),
    (lambda c: c.update(final_train_avg_loss=3), r"'final_train_avg_loss' is reserved for summary\.json"),
])  # fmt: skip
def test_invalid_cells_name_key_and_allowed_values(change, message):
    cell = make_cell()  # fresh dicts on every call
    change(cell)
    with pytest.raises(RethinkError, match=message):
        cells.validate(cell)


def test_valid_cell_with_extra_keys_passes():
    cell = dict(make_cell(), regularizer={"wd": True}, level=0.4)
    assert cells.validate(cell) is cell


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RethinkError, match="CUDA is not available"):
        resolve_device("cuda")


def cli_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_errors_are_one_line_exit_2(tmp_path, data, capsys):
    good = tmp_path / "cell.json"
    good.write_text(json.dumps(make_cell()))
    base = [
        "--train-shards",
        *data[0],
        "--test-shards",
        *data[1],
        "--out-dir",
        str(tmp_path / "o"),
        "--checkpoint",
        str(tmp_path / "c.pt"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text('{"cell": "x", ')
    assert "bad.json: not valid JSON" in cli_error(capsys, ["--cell", str(bad), *base])
    missing = str(tmp_path / "nope.h5")
    err = cli_error(capsys, ["--cell", str(good), *base[:1], missing, *base[2:]])
    assert f"{missing}: shard not found" in err
    small = write_split(tmp_path / "small.h5", 8, (1, 24, 24), "test", 2)
    err = cli_error(capsys, ["--cell", str(good), *base[:3], small, *base[4:]])
    assert "small.h5: images of shape (1, 24, 24) are smaller than hparams.crop_size=28" in err
    rgb = write_split(tmp_path / "rgb.h5", 8, (3, 28, 28), "test", 2)
    err = cli_error(capsys, ["--cell", str(good), *base[:3], rgb, *base[4:]])
    assert "train images are (1, 28, 28) but test images are (3, 28, 28)" in err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "rethink.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--train-shards" in out.stdout and "--checkpoint" in out.stdout
