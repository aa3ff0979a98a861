"""The streamed reader's machinery (rethink.train.stream), on the synthetic ImageNet shards of
tests/test_imagenet.py: errors of the background threads reach the training loop, the device
seam is passed in the right order, shards are read a window ahead, and a process that uses a
part of each batch reads only that part once the shards are verified, still verified."""

import pathlib
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from rethink.data.shards import ShardError, read_shard
from rethink.errors import RethinkError
from rethink.train import distributed, stream
from test_imagenet import HPARAMS, N_TRAIN, inet  # noqa: F401  (inet: the module's shards, a fixture)

from conftest import flip_byte_in_chunk

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEADLINE_S = 120  # a consumer still waiting after this long waits forever (a batch takes ~0.1 s)
PLAN = {"seed": torch.tensor([5])}


def consume(batches):
    """Iterate in a helper thread -> ("items", list) or ("error", exception); a consumer still
    waiting at the deadline fails the test (it would hang a job to its time limit)."""
    result = []

    def run():
        try:
            result.append(("items", list(batches)))
        except BaseException as err:  # noqa: B036  (what the consumer got is the point)
            result.append(("error", err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "the consumer still waits for a batch: a hang"
    return result[0]


def split_of(paths):
    return stream.StreamedSplit(paths, read_shard(paths[0], ["labels"])[1], 2, torch.device("cpu"))


class Stop(BaseException):
    """Not an Exception: what a bare `except Exception` lets through."""


@pytest.mark.parametrize(
    "error", [ShardError("x.h5: damaged"), TypeError("bug"), KeyError("k"), MemoryError(), SystemExit(3), Stop()]
)
def test_every_exception_of_the_batch_thread_reaches_the_consumer(error):
    def batches():
        yield 1
        yield 2
        raise error

    kind, got = consume(stream.Prefetch(batches(), 1, stream.SameStream()))
    assert kind == "error"
    if isinstance(error, RethinkError):
        assert got is error  # the file it names is the user's one-line error
    else:
        assert isinstance(got, RuntimeError) and got.__cause__ is error, got


def test_a_batch_thread_that_ends_without_a_word_does_not_leave_the_consumer_waiting(monkeypatch):
    monkeypatch.setattr(stream.Prefetch, "_run", lambda self, batches: None)
    kind, got = consume(stream.Prefetch(iter([1]), 1, stream.SameStream()))
    assert kind == "error" and "ended without a batch or an error" in str(got)


def test_a_decoding_bug_mid_epoch_stops_training_instead_of_hanging_it(inet, monkeypatch):  # noqa: F811
    split, calls, real = split_of(inet[3]["train"]), [], stream.decode

    def decode_then_fail(blobs, device):
        calls.append(len(blobs))
        if len(calls) == 3:
            raise TypeError("a bug in decoding")
        return real(blobs, device)

    monkeypatch.setattr(stream, "decode", decode_then_fail)
    kind, got = consume(split.train_batches(PLAN, 0, HPARAMS))
    split.close()
    assert kind == "error" and isinstance(got.__cause__, TypeError), got


class Recording(stream.SameStream):
    """The device seam, recording who calls it when (the CPU's SameStream otherwise)."""

    def __init__(self, events):
        self.events = events

    def produce(self, make):
        self.events.append(("produce", threading.get_ident(), None))
        batch, token = super().produce(make)
        self.events.append(("made", threading.get_ident(), id(batch[0]) if isinstance(batch, tuple) else None))
        return batch, token

    def ready(self, batch, token):
        self.events.append(("ready", threading.get_ident(), id(batch[0])))
        return super().ready(batch, token)


def test_batches_are_made_inside_the_seam_and_handed_over_through_it(inet, monkeypatch):  # noqa: F811
    """On CUDA the seam is SideStream: decoding and cropping inside `produce` run on the prefetch
    thread's stream, and `ready` makes the training stream wait for them; on the CPU the same
    calls, in the same order, are no-ops."""
    events, real = [], stream.decode
    record = lambda blobs, device: events.append(("decode", threading.get_ident(), None)) or real(blobs, device)  # noqa: E731
    monkeypatch.setattr(stream, "decode", record)
    split = split_of(inet[3]["train"])
    split.sync = Recording(events)
    consumer = threading.get_ident()
    batches = [x for x, _ in split.train_batches(PLAN, 0, HPARAMS)]  # kept: their ids stay unique
    got = [id(x) for x in batches]
    split.close()
    producer = events[0][1]
    assert producer != consumer
    made = [e for e in events if e[0] == "made" and e[2] is not None]
    assert [e[2] for e in made] == got  # every batch made once, in order, and received
    assert [e[2] for e in events if e[0] == "ready"] == got  # each handed over through `ready`
    assert all(thread == consumer for what, thread, _ in events if what == "ready")
    for b, batch in enumerate(got):  # decoded inside produce, in the producing thread
        start = [i for i, e in enumerate(events) if e[0] == "produce"][b]
        end = events.index(("made", producer, batch))
        ready = events.index(("ready", consumer, batch))
        assert any(e[0] == "decode" and e[1] == producer for e in events[start:end]) and end < ready


def test_the_next_window_is_read_while_the_current_one_is_decoded(inet):  # noqa: F811
    """Window 1's bytes are being read before the last batch of window 0 is made (the reader
    thread runs a window ahead), so the first batch of a window does not wait for its reads."""
    split = split_of(inet[3]["train"])
    windows = stream.epoch_windows(split.counts, 2, 5)  # 10 + 10 + 4 samples
    started, release = [], threading.Event()

    def load(indices):
        started.append(set(indices.tolist()))
        if set(indices.tolist()) == set(windows[1].tolist()):
            assert release.wait(DEADLINE_S)
        return {int(i): None for i in indices}

    split._load = load

    def make(part, blobs):
        lo, hi = part
        if hi == len(windows[0]):  # the last batch inside window 0
            deadline = time.monotonic() + DEADLINE_S
            while set(windows[1].tolist()) not in started:
                assert time.monotonic() < deadline, "window 1 is not being read ahead"
                time.sleep(0.01)
            release.set()
        return set(order[lo:hi].tolist()) <= set(blobs)  # the batch's bytes are at hand

    order = np.concatenate(windows)
    parts = [(lo, min(lo + 5, N_TRAIN)) for lo in range(0, N_TRAIN, 5)]  # batches of 5 over windows of 10
    assert list(split._stream(windows, parts, make)) == [True] * len(parts)
    assert started == [set(w.tolist()) for w in windows]  # each window read once, in order


def copy_shards(paths, folder):
    folder.mkdir()
    return [str(shutil.copy(p, folder / pathlib.Path(p).name)) for p in paths]


def test_one_of_several_processes_reads_its_part_once_the_shards_are_verified(inet, tmp_path, monkeypatch):  # noqa: F811
    """Rank 0 of 3 reads each shard whole once (verified), then only the samples of its parts of
    the batches; its batches are the ones it decoded from whole shards."""
    split = split_of(copy_shards(inet[3]["train"], tmp_path / "s"))
    world = distributed.World(0, 3, 0, None)
    whole_reads, asked, samples = [], [], stream.ShardReader.samples
    monkeypatch.setattr(stream, "read_shard", lambda p, names: whole_reads.append(p) or read_shard(p, names))

    def spy(reader, s, local):
        asked.extend((split.starts[s] + local).tolist())
        return samples(reader, s, local)

    monkeypatch.setattr(stream.ShardReader, "samples", spy)
    first = list(split.train_batches(PLAN, 0, HPARAMS, world=world))
    assert sorted(map(str, whole_reads)) == sorted(split.paths)  # every shard read whole, once
    whole_reads.clear(), asked.clear()
    second = list(split.train_batches(PLAN, 0, HPARAMS, world=world))
    split.close()
    assert whole_reads == []
    order, bs = stream.epoch_order(split.counts, 2, 5), HPARAMS["batch_size"]
    mine = [int(i) for b in range(0, N_TRAIN, bs) for i in order[b : b + world.part(min(bs, N_TRAIN - b))[1]]]
    assert sorted(asked) == sorted(mine) and len(mine) < N_TRAIN  # its part, nothing else
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_a_byte_that_changes_after_verification_is_caught_naming_the_file(inet, tmp_path):  # noqa: F811
    paths = copy_shards(inet[3]["train"], tmp_path / "s")
    split = split_of(paths)
    list(split.train_batches(PLAN, 0, HPARAMS))  # every shard read whole and verified
    flip_byte_in_chunk(paths[0], "jpeg")  # then the disk damages one byte of one sample
    kind, got = consume(split.train_batches(PLAN, 0, HPARAMS))
    assert kind == "error" and isinstance(got, ShardError), got
    assert f"{paths[0]}: sample" in str(got) and "changed since this job verified the file" in str(got)
    shutil.copy(inet[3]["train"][1], paths[0])  # a different shard put in its place
    kind, got = consume(split.train_batches(PLAN, 0, HPARAMS))
    split.close()
    assert kind == "error" and f"{paths[0]}: rewritten since this job verified it" in str(got), got
