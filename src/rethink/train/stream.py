"""Splits the trainer reads batch by batch: in memory (small datasets) or streamed from JPEG shards.

Both kinds answer the same three questions for a Member (rethink.train.loop): `epoch_plan` (the
epoch's randomness, drawn from the cell's data generator, saved in checkpoints), `train_batches`
(the epoch's batches from a given step on, so a resumed epoch continues where it stopped) and
`eval_batches` (the whole split in a fixed order, deterministic views).

`InMemorySplit` is the small-dataset path: the whole split on the device, batched tensor
preprocessing (rethink.train.preprocess), exactly as before streaming existed.

`StreamedSplit` reads shards of JPEG bytes (rethink.data.imagenet):
- order: an epoch's plan is one seed drawn from the cell's generator; from it, the shards are
  permuted, taken `window_shards` at a time, and the samples of each window permuted together.
  The order is a pure function of the seed, so a checkpoint (which stores the plan and the step)
  resumes mid-epoch at the very batch it stopped at, bit for bit;
- reading (`ShardReader`): a shard's first read in a job is whole and verified by its checksums
  (rethink.data.shards) and leaves a digest of each sample; later reads take only the samples
  a process uses, each checked against its digest. A second thread reads the JPEG bytes of the
  next window while the current one is decoded;
- augmentation as TF-slim's Inception preprocessing does it for training: a random crop whose
  area is 5-100% of the image and aspect ratio 3/4-4/3 (sample_distorted_bounding_box with
  min_object_covered 0.1, 100 attempts, else the whole image), resized (bilinear) to crop_size,
  a random left-right flip; colours scaled to [-1, 1]. `random_crop` switches the crop, `augment`
  the flip; off, training sees the evaluation view: TF-slim's central crop of 87.5% of the
  image, resized. Its colour distortion is left out (README, "Deviations and choices"). Each
  batch's draws come from a generator seeded by (epoch seed, batch number): the same on resume
  and whichever thread makes it;
- decoding: Pillow on the CPU; `torchvision.io.decode_jpeg(device="cuda")` (nvJPEG) on a GPU,
  on a stream of the prefetch thread's own that the training stream waits for (`SideStream`);
- prefetch: a background thread prepares the next PREFETCH_BATCHES batches; whatever it raises
  is raised in the training loop;
- several processes (rethink.train.distributed): each draws the whole batch's crops and flips
  and decodes only its part of the batch.
"""

import collections
import concurrent.futures
import hashlib
import io
import math
import pathlib
import queue
import threading

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from rethink.data.shards import ShardError, read_shard, stored_checksum
from rethink.errors import RethinkError
from rethink.train import distributed, preprocess

# Evaluation batch: bounds memory. On CPU the results do not depend on it; on CUDA, cuDNN picks
# kernels per shape, so another batch size can move a logit in its last bits. Fixed, so that a
# cell's numbers do not depend on anything but the cell.
EVAL_BATCH = 500
# Batches the background thread prepares ahead; it changes speed only, never a number.
PREFETCH_BATCHES = 4
# TF-slim inception_preprocessing: distorted_bounding_box_crop's defaults, central_crop's fraction
CROP_AREA = (0.05, 1.0)
CROP_ASPECT = (0.75, 1.33)
CROP_MIN_COVERED = 0.1
CROP_ATTEMPTS = 100
EVAL_FRACTION = 0.875
DIGEST_BYTES = 16  # of a sample's sha256, kept to check its later reads: 128 bits


class InMemorySplit:
    """The whole split on the device; batches are slices of it (the small datasets' path)."""

    def __init__(self, images, labels, num_classes):
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.n, self.image_shape = len(labels), tuple(images.shape[1:])

    def epoch_plan(self, hp, generator, device):
        return preprocess.epoch_plan(self.n, self.image_shape, hp, generator, device)

    def train_batches(self, plan, start, hp, world=distributed.ONE):
        """The epoch's batches from step `start` on: this process's part of each (positions of the
        epoch: the same draws as the whole batch's; one process: the whole batch)."""
        bs = hp["batch_size"]
        for lo in range(start * bs, self.n, bs):
            hi = min(lo + bs, self.n)
            first, last = world.part(hi - lo)
            lo, hi = lo + first, lo + last
            x, idx = preprocess.train_batch(self.images, plan, lo, hi, hp)
            yield x, self.labels[idx]

    def eval_batches(self, crop_size):
        for i in range(0, self.n, EVAL_BATCH):
            yield preprocess.eval_view(self.images[i : i + EVAL_BATCH], crop_size), self.labels[i : i + EVAL_BATCH]

    def close(self):
        pass


# ----------------------------------------------------------------------------- streamed


def epoch_windows(counts, window, seed):
    """The epoch's sample order (indices into the split) as its windows: the shards permuted, then
    the samples of each `window` consecutive shards permuted together."""
    rng = np.random.default_rng([seed, 1])
    starts = np.concatenate([[0], np.cumsum(counts)])
    shard_order = rng.permutation(len(counts))
    windows = []
    for g in range(0, len(shard_order), window):
        members = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shard_order[g : g + window]])
        windows.append(members[rng.permutation(len(members))])
    return windows


def epoch_order(counts, window, seed):
    return np.concatenate(epoch_windows(counts, window, seed))


def crop_box(rng, height, width):
    """TF's sample_distorted_bounding_box for the whole image: (top, left, h, w)."""
    for _ in range(CROP_ATTEMPTS):
        area = rng.uniform(*CROP_AREA) * height * width
        aspect = rng.uniform(*CROP_ASPECT)
        h, w = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 1 <= h <= height and 1 <= w <= width and h * w >= CROP_MIN_COVERED * height * width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


def central_box(height, width):
    h, w = max(1, round(height * EVAL_FRACTION)), max(1, round(width * EVAL_FRACTION))
    return (height - h) // 2, (width - w) // 2, h, w


def decode(blobs, device):
    """JPEG bytes -> list of uint8 C x H x W RGB tensors (nvJPEG on CUDA, Pillow on the CPU)."""
    if device.type == "cuda":
        from rethink.torchvision_guard import torchvision

        tensors = [torch.from_numpy(b) for b in blobs]
        return torchvision.io.decode_jpeg(tensors, mode=torchvision.io.ImageReadMode.RGB, device=device)
    from PIL import Image

    out = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            out.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
    return out


def view(image, box, size, flip):
    """Crop `box` out of a uint8 C x H x W image, resize to size x size, flip; scale to [-1, 1]."""
    top, left, h, w = box
    x = image[None, :, top : top + h, left : left + w].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x.flip(-1) if flip else x
    return (x[0] / 255.0 - 0.5) * 2.0


class ShardReader:
    """Verified JPEG bytes of a split's shards, any subset of a shard's samples at a time.

    A shard's first read in a job is whole and checked against its recorded checksums
    (rethink.data.shards); it leaves a digest of every sample. Later reads take only the samples
    asked for from the file verified then (its recorded checksum unchanged), each checked against
    its digest. So every byte decoded has been verified, and a process that uses a part of every
    shard (one of several ranks) reads only that part after its first epoch. Digests take
    DIGEST_BYTES a sample (20 MB for ImageNet's 1.28M training images)."""

    def __init__(self, paths):
        self.paths = [pathlib.Path(p) for p in paths]
        self._verified = {}  # shard -> (data file, its content_sha256, dataset, offsets, digests)

    def samples(self, s, local):
        """{position in shard s: its JPEG bytes (uint8 array)} for the ascending positions `local`."""
        if s not in self._verified:
            return self._first_read(s, local)
        file, content_sha256, dataset, offsets, digests = self._verified[s]
        out = {}
        try:
            with h5py.File(file, "r", locking=False) as f:
                if str(f.attrs.get("content_sha256", "")) != content_sha256:
                    raise ShardError(f"{file}: rewritten since this job verified it; rerun the job")
                jpeg = f[dataset]
                for first, last in _runs(local):
                    block = jpeg[offsets[first] : offsets[last + 1]]
                    for i in range(first, last + 1):
                        out[i] = block[offsets[i] - offsets[first] : offsets[i + 1] - offsets[first]]
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise ShardError(f"{file}: unreadable since this job verified it ({err}); rebuild it") from None
        for i, blob in out.items():
            if not np.array_equal(_digest(blob), digests[i]):
                raise ShardError(f"{file}: sample {i} changed since this job verified the file (corrupted); rebuild it")
        return out

    def _first_read(self, s, local):
        path = self.paths[s]
        arrays, _ = read_shard(path, ["jpeg", "offsets"])  # whole, verified (through a link, too)
        jpeg, offsets = arrays["jpeg"], arrays["offsets"]
        digests = np.stack([_digest(jpeg[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)])
        with h5py.File(path, "r", locking=False) as f:
            link = f.get("jpeg", getlink=True)
        file, dataset = path, "jpeg"
        if isinstance(link, h5py.ExternalLink):  # a randomized shard's bytes are the clean shard's
            file, dataset = path.parent / link.filename, link.path.lstrip("/")  # as rethink.data.shards finds them
        self._verified[s] = (file, stored_checksum(file), dataset, offsets, digests)
        return {int(i): jpeg[offsets[i] : offsets[i + 1]].copy() for i in local}  # the rest is let go


def _digest(blob):
    return np.frombuffer(hashlib.sha256(blob).digest()[:DIGEST_BYTES], dtype=np.uint8)


def _runs(positions):
    """Maximal runs of consecutive ascending positions, as (first, last) pairs."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(run[0]), int(run[-1])) for run in np.split(np.asarray(positions), breaks)]


class StreamedSplit:
    """A split of JPEG shards, streamed: see the module docstring."""

    def __init__(self, paths, first_attrs, window_shards, device):
        self.paths, self.window, self.device = [str(p) for p in paths], int(window_shards), device
        metas = [read_shard(p, ["labels", "sizes"]) for p in self.paths]  # small, verified
        self.labels = torch.from_numpy(np.concatenate([m[0]["labels"] for m in metas]))
        self.sizes = np.concatenate([m[0]["sizes"] for m in metas])
        self.counts = [len(m[0]["labels"]) for m in metas]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.n, self.num_classes = len(self.labels), int(first_attrs["num_classes"])
        self.image_shape = (3, int(self.sizes[:, 0].min()), int(self.sizes[:, 1].min()))
        self.reader, self.sync, self._prefetch = ShardReader(self.paths), device_sync(device), None

    # --- reading

    def _load(self, indices):
        """{sample index: JPEG bytes} for the ascending sample `indices`, read shard by shard."""
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        blobs = {}
        for s in np.unique(shards):
            first = self.starts[s]
            for local, blob in self.reader.samples(int(s), indices[shards == s] - first).items():
                blobs[int(first + local)] = blob
        return blobs

    def _stream(self, windows, parts, make):
        """`make(part, blobs)` for each of `parts` (tuples whose first two entries are this process's
        positions [lo, hi) in the order, ascending), with the JPEG bytes of those samples; the
        order is the concatenated `windows` (arrays of sample indices). A second thread reads the
        bytes a window ahead; the bytes of at most two windows (of a batch no larger than a
        window) are held, only those of the samples this process uses."""
        ends = np.cumsum([len(w) for w in windows])
        order, used = np.concatenate(windows), np.zeros(ends[-1], dtype=bool)
        for lo, hi, *_ in parts:
            used[lo:hi] = True

        def wanted(g):
            lo = ends[g] - len(windows[g])
            return np.sort(order[lo : ends[g]][used[lo : ends[g]]])

        reader, loading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-reader"), {}
        try:
            for part in parts:
                lo, hi = part[:2]
                first, last = (int(np.searchsorted(ends, p, side="right")) for p in (lo, hi - 1))
                for g in [g for g in loading if g < first]:
                    del loading[g]
                for g in range(first, min(max(last, first + 1), len(windows) - 1) + 1):  # the next one ahead
                    if g not in loading:
                        loading[g] = reader.submit(self._load, wanted(g))
                yield make(part, collections.ChainMap(*(loading[g].result() for g in range(first, last + 1))))
        finally:  # stopped early (or failed): a read under way ends, a queued one is dropped
            reader.shutdown(cancel_futures=True)

    def _batch(self, indices, boxes, flips, size, blobs):
        images = decode([blobs[int(i)] for i in indices], self.device)
        x = torch.stack([view(im, box, size, flip) for im, box, flip in zip(images, boxes, flips)])
        return x, self.labels[torch.from_numpy(np.asarray(indices))]

    # --- what a Member asks

    def epoch_plan(self, hp, generator, device):
        return {"seed": torch.randint(0, 2**62, (1,), generator=generator, device=device)}

    def train_batches(self, plan, start, hp, world=distributed.ONE):
        seed, bs, size = int(plan["seed"].item()), hp["batch_size"], hp["crop_size"]
        windows = epoch_windows(self.counts, self.window, seed)
        order = np.concatenate(windows)
        parts = []  # (this process's [lo, hi) in the order, batch number, the whole batch's [lo, hi))
        for b in range(start, math.ceil(self.n / bs)):
            lo, hi = b * bs, min((b + 1) * bs, self.n)
            first, last = world.part(hi - lo)
            parts.append((lo + first, lo + last, b, lo, hi))

        def make(part, blobs):
            mine_lo, mine_hi, b, lo, hi = part
            rng = np.random.default_rng([seed, 2, b])  # this batch's draws, whoever makes it
            boxes, flips = [], []
            for i in order[lo:hi]:  # the whole batch's draws; this process decodes its part
                h, w = (int(v) for v in self.sizes[i])
                boxes.append(crop_box(rng, h, w) if hp["random_crop"] else central_box(h, w))
                flips.append(bool(rng.random() < 0.5) if hp["augment"] else False)
            mine = slice(mine_lo - lo, mine_hi - lo)
            return self._batch(order[mine_lo:mine_hi], boxes[mine], flips[mine], size, blobs)

        return self._prefetched(self._stream(windows, parts, make))

    def eval_batches(self, crop_size):
        shards = range(0, len(self.counts), self.window)  # windows of consecutive shards, in order
        windows = [np.arange(self.starts[g], self.starts[min(g + self.window, len(self.counts))]) for g in shards]
        parts = [(lo, min(lo + EVAL_BATCH, self.n)) for lo in range(0, self.n, EVAL_BATCH)]

        def make(part, blobs):
            indices = np.arange(*part)
            boxes = [central_box(*(int(v) for v in self.sizes[i])) for i in indices]
            return self._batch(indices, boxes, [False] * len(indices), crop_size, blobs)

        return self._prefetched(self._stream(windows, parts, make))

    def _prefetched(self, batches):
        self.close()
        self._prefetch = Prefetch(batches, PREFETCH_BATCHES, self.sync)
        return iter(self._prefetch)

    def close(self):
        if self._prefetch is not None:
            self._prefetch.stop()
            self._prefetch = None


# ----------------------------------------------------------------------------- the background thread


class SameStream:
    """The CPU: a batch is ready when it is made."""

    def produce(self, make):
        """In the producing thread: (make(), what `ready` needs)."""
        return make(), None

    def ready(self, batch, token):
        """In the consuming thread, before it uses the batch."""
        return batch


class SideStream(SameStream):
    """CUDA: the prefetch thread makes each batch on a stream of its own; the consumer's (training)
    stream waits for the batch's event before using it.

    torchvision's nvJPEG decode allocates its outputs on the calling thread's current stream and
    writes them from a stream of its own, which does not wait for the calling stream: memory the
    caching allocator hands out may still be read by kernels queued there. On this side stream the
    only such kernels are the previous batch's crops, so the thread waits for them before making
    the next batch (the training stream is never waited on). `record_stream` tells the allocator
    that the batch is used on the consumer's stream: its memory is not reused before that work
    is done."""

    def __init__(self, device):
        self.stream = torch.cuda.Stream(device)

    def produce(self, make):
        self.stream.synchronize()
        with torch.cuda.stream(self.stream):
            return make(), self.stream.record_event()

    def ready(self, batch, done):
        consumer = torch.cuda.current_stream(self.stream.device)
        consumer.wait_event(done)
        for tensor in batch:
            if tensor.is_cuda:
                tensor.record_stream(consumer)
        return batch


def device_sync(device):
    return SideStream(device) if device.type == "cuda" else SameStream()


class _Failed:
    def __init__(self, error):
        self.error = error


class Prefetch:
    """Runs a batch generator in a background thread, `depth` batches ahead, each batch made and
    handed over through `sync` (a SameStream). Any exception the generator raises ends the thread
    and is raised in the consumer: a RethinkError as it is (a damaged shard stops training naming
    the file, as it does in memory), any other as the cause of a RuntimeError. The consumer never
    waits on a thread that is gone."""

    _DONE = object()
    POLL_S = 1.0  # how often a waiting consumer checks that the thread is alive

    def __init__(self, batches, depth, sync):
        self._queue, self._stopped, self._sync = queue.Queue(maxsize=depth), threading.Event(), sync
        self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True)
        self._thread.start()

    def _run(self, batches):
        try:
            while not self._stopped.is_set():
                made = self._sync.produce(lambda: next(batches, self._DONE))
                if not self._put(made) or made[0] is self._DONE:
                    return
        except BaseException as err:  # every kind: one the consumer never saw would leave it waiting
            self._put((_Failed(err), None))
        finally:
            batches.close()

    def _put(self, item):
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            try:
                item, token = self._queue.get(timeout=self.POLL_S)
            except queue.Empty:
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                raise RuntimeError("the batch-reading thread ended without a batch or an error") from None
            if item is self._DONE:
                return
            if isinstance(item, _Failed):
                if isinstance(item.error, RethinkError):
                    raise item.error
                raise RuntimeError(f"the batch-reading thread failed: {item.error!r}") from item.error
            yield self._sync.ready(item, token)

    def stop(self):
        self._stopped.set()
        self._thread.join()
