"""Packs (several cells trained by one process), finished checkpoints, signals, shard identity,
and the float32 islands under autocast. CPU; the CUDA versions are in test_gpu.py."""

import json
import re
import signal
import subprocess
import sys

import pytest
import torch

from rethink.errors import RethinkError
from rethink.train import cell as cells
from rethink.train import checkpoint
from rethink.train.loop import Job, setup, train

from conftest import PATIENCE_S, log_match, wait_until
from test_train import cli, make_cell, read_history, untimed, write_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def data(tmp_path):
    return [write_split(tmp_path / "train.h5", 128, (1, 28, 28), "train", 1)], [
        write_split(tmp_path / "test.h5", 32, (1, 28, 28), "test", 2)
    ]


# three cells that differ in every way a pack-mate can: seed, regularizers, lr, batch, epochs
PACK_CELLS = [
    make_cell(max_epochs=3),
    make_cell(seed=1, max_epochs=4, random_crop=True, augment=True, dropout=0.3),
    make_cell("alexnet", width=0.1, lr=0.02, batch_size=24, max_epochs=2, weight_decay=0.0005),
]


def jobs(tmp_path, data, cells, tag):
    return [Job(c, *data, tmp_path / tag / str(i), tmp_path / tag / f"{i}.pt") for i, c in enumerate(cells)]


def outputs(job):
    return read_history(job.out_dir / "history.csv"), json.loads((job.out_dir / "summary.json").read_text())


def test_a_pack_equals_its_cells_trained_alone(tmp_path, data):
    packed = jobs(tmp_path, data, PACK_CELLS, "pack")
    train(packed, echo=False)
    for i, cell in enumerate(PACK_CELLS):
        alone = jobs(tmp_path, data, [cell], f"alone{i}")
        train(alone, echo=False)
        (history_p, summary_p), (history_a, summary_a) = outputs(packed[i]), outputs(alone[0])
        # bit-identical on CPU (tolerance 0): each member has its own generators, dropout included
        assert untimed(history_p) == untimed(history_a) and untimed(summary_p) == untimed(summary_a)
        assert summary_p["epochs"] <= cell["hparams"]["max_epochs"]  # each member stops on its own terms
    # and the members really are different runs
    assert outputs(packed[0])[1]["final_train_loss"] != outputs(packed[1])[1]["final_train_loss"]


def test_a_finished_cell_is_re_emitted_not_retrained(tmp_path, data):
    first = jobs(tmp_path, data, PACK_CELLS[:2], "run")
    train(first, echo=False)
    before = [outputs(job) for job in first]
    files = [first[1].out_dir / name for name in ("history.csv", "summary.json")]
    written = [f.read_bytes() for f in files]
    for job in first:  # as Snakemake does to a job it reruns
        (job.out_dir / "summary.json").unlink()
        (job.out_dir / "history.csv").unlink()
    # one cell edited (a new checkpoint name: it trains), the other unchanged (re-emitted)
    edited = dict(PACK_CELLS[0], hparams=dict(PACK_CELLS[0]["hparams"], lr=0.02))
    second = [Job(edited, *data, first[0].out_dir, tmp_path / "run" / "edited.pt"), first[1]]
    train(second, echo=False)
    log = (first[1].out_dir / "train.log").read_text()
    assert log.count("start cell=") == 1 and "history and summary re-emitted from" in log
    assert outputs(first[1]) == before[1]  # the very same numbers, timings included ...
    assert [f.read_bytes() for f in files] == written  # ... and the very same bytes
    assert (first[0].out_dir / "train.log").read_text().count("start cell=") == 2
    assert outputs(first[0])[1]["hparams"]["lr"] == 0.02


def pack_args(tmp_path, data, cells, tag):
    entries = [
        {
            "cell": c,
            "train": data[0],
            "test": data[1],
            "out_dir": str(tmp_path / tag / str(i)),
            "checkpoint": str(tmp_path / "ckpt" / f"{i}.pt"),
        }
        for i, c in enumerate(cells)
    ]
    return ["--pack", json.dumps(entries)]


# 128 steps an epoch, 30 epochs, too small an lr to fit: still training whenever the signal comes
SLOW_PACK = [
    make_cell(max_epochs=30, batch_size=1, lr=1e-4),
    make_cell(seed=3, max_epochs=30, batch_size=1, lr=1e-4, dropout=0.2),
]


def stop_pack(tmp_path, data, cells, sig):
    """Start a pack through the CLI, send `sig` after its first epoch, check every member saved."""
    proc = cli(pack_args(tmp_path, data, cells, "resumed"))
    log = tmp_path / "resumed" / "1" / "train.log"
    wait_until(lambda: log_match(log, r"epoch\s+1 step"), "epoch 1 in the second member's train.log", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err and "2 checkpoints" in err
    for i in range(2):
        state = torch.load(tmp_path / "ckpt" / f"{i}.pt", weights_only=True)
        assert not checkpoint.is_finished(state) and state["step"] > 0
        assert f"{sig.name}: checkpoint saved" in (tmp_path / "resumed" / str(i) / "train.log").read_text()
        assert json.loads((tmp_path / "resumed" / str(i) / "cell.json").read_text()) == cells[i]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_and_a_closed_terminal_save_every_member(tmp_path, data, sig):
    stop_pack(tmp_path, data, SLOW_PACK, sig)


def test_sigterm_saves_every_member_and_the_rerun_resumes_them_bit_identically(tmp_path, data):
    cells = SLOW_PACK
    stop_pack(tmp_path, data, cells, signal.SIGTERM)
    proc = cli(pack_args(tmp_path, data, cells, "resumed"))
    assert proc.wait(timeout=PATIENCE_S) == 0
    straight = jobs(tmp_path, data, cells, "straight")
    train(straight, echo=False)
    for i in range(2):
        assert re.search(
            r"resume from .* at epoch \d+ step \d+", (tmp_path / "resumed" / str(i) / "train.log").read_text()
        )
        assert untimed(read_history(tmp_path / "resumed" / str(i) / "history.csv")) == untimed(
            read_history(straight[i].out_dir / "history.csv")
        )


def test_an_orphaned_trainer_saves_and_stops(tmp_path, data):
    """SIGKILL of snakemake leaves its trainer orphaned: it must save, not run on unwatched."""
    # lr 1e-5: it cannot fit 128 random labels (and stop by itself) before the test kills its parent
    args = pack_args(tmp_path, data, [make_cell(max_epochs=400, batch_size=8, lr=1e-5)], "orphan")
    command = " ".join([sys.executable, "-m", "rethink.train", *(f"'{a}'" for a in args)]) + "; true"
    parent = subprocess.Popen(["bash", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "orphan" / "0" / "train.log"
    wait_until(lambda: log_match(log, r"epoch\s+1 step"), "epoch 1 in train.log", parent)
    parent.kill()  # bash (the trainer's parent) dies with SIGKILL, as snakemake would
    parent.wait()
    wait_until(lambda: log_match(log, r"parent process gone: checkpoint saved|stop: "), "the orphan to stop")
    assert "stop: " not in log.read_text(), log.read_text()  # it saved; it did not train on to its end
    state = torch.load(tmp_path / "ckpt" / "0.pt", weights_only=True)
    assert not checkpoint.is_finished(state) and state["epoch"] < 400


def test_shards_of_another_cell_are_refused_naming_file_and_field(tmp_path, data):
    random_labels = dict(make_cell(), noise="random_labels", level=1.0)
    with pytest.raises(
        RethinkError,
        match=r"train\.h5: this shard has noise='clean', but cell test/mlp_1x512 "
        r"needs noise='random_labels' for its train split",
    ):
        train(Job(random_labels, *data, tmp_path / "o", tmp_path / "c.pt"), echo=False)
    with pytest.raises(RethinkError, match=r"test\.h5: this shard has split='test', but .* needs split='train'"):
        train(Job(make_cell(), data[1], data[1], tmp_path / "o", tmp_path / "c.pt"), echo=False)
    with pytest.raises(RethinkError, match=r"this shard has dataset='synth', but .* needs dataset='cifar10'"):
        train(Job(dict(make_cell(), dataset="cifar10"), *data, tmp_path / "o", tmp_path / "c.pt"), echo=False)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_a_cell_with_corrupted_test_labels_needs_its_noises_test_shard():
    cell = dict(make_cell(), noise="random_labels", level=1.0, test_labels="corrupted")
    clean = {"split": "test", "dataset": "synth", "noise": "clean"}
    corrupted = dict(clean, noise="random_labels", seed=0, level=1.0)
    with pytest.raises(
        RethinkError,
        match=r"t\.h5: this shard has noise='clean', but cell test/mlp_1x512 "
        r"needs noise='random_labels' for its test split",
    ):
        cells.check_shards(cell, "test", clean, "t.h5")
    cells.check_shards(cell, "test", corrupted, "t.h5")
    for clean_cell in (dict(cell, test_labels="clean"), make_cell()):  # no test_labels: clean
        cells.check_shards(clean_cell, "test", clean, "t.h5")
        with pytest.raises(RethinkError, match="this shard has noise='random_labels', but .* needs noise='clean'"):
            cells.check_shards(clean_cell, "test", corrupted, "t.h5")


def test_logits_and_lrn_stay_float32_under_bf16_autocast():
    """bf16 autocast (as on CUDA; here on CPU): logits rounded to bf16 would decide the fit, and
    LRN's 1 + 0.001 * mean(x^2) rounds to 1 in bf16, making it a no-op."""
    cell = make_cell("alexnet", width=0.25)
    model, _, _, _, amp, fmt = setup(cell, (1, 28, 28), 10, torch.device("cpu"), amp_dtype=torch.bfloat16)
    seen = {}
    lrn = next(m for m in model.modules() if isinstance(m, torch.nn.LocalResponseNorm))
    lrn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), amp():
        logits = model(fmt(x))
    assert logits.dtype == torch.float32 and seen["out"].dtype == torch.float32
    assert seen["inp"].dtype == torch.bfloat16  # the conv before it did run in bf16
    expected = torch.nn.functional.local_response_norm(seen["inp"].float(), 9, 0.001, 0.75, 1.0)
    assert torch.equal(seen["out"], expected) and not torch.equal(seen["out"], seen["inp"].float())


def test_a_compiled_step_trains_like_the_eager_one(tmp_path, data):
    """torch.compile of the step (inductor, on CPU here; CUDA graphs in test_gpu.py): one compile
    serves every epoch (the lr is a device tensor, the randomness is drawn per epoch), and the
    numbers match the eager step's to float32 rounding (measured over 12 steps: at most 1.9e-7
    relative, 3 seeds, inductor's AVX-512, AVX2 and plain kernels; the tolerance is 1e-4)."""
    cell = make_cell(max_epochs=3, batch_size=32, dropout=0.3, lr_decay=0.5)  # lr changes each epoch
    torch._dynamo.reset()
    # one shape (128 = 4 full batches); the optimizer's first step (no momentum yet) compiles once
    # more; a compile per epoch, for the new lr, would pass this limit and fail the run
    # (config.patch, not monkeypatch: torch 2.11's config module hides a setting that was deleted)
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        (eager,), (compiled,) = (
            train(jobs(tmp_path, data, [cell], mode), echo=False, compile_mode=mode) for mode in ("off", "default")
        )
    histories = [read_history(tmp_path / mode / "0" / "history.csv") for mode in ("off", "default")]
    for a, b in zip(*histories):
        for key in ("train_loss", "test_loss", "train_avg_loss"):
            if a[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), (key, a, b)
    assert eager["stop_reason"] == compiled["stop_reason"] and eager["steps"] == compiled["steps"]
