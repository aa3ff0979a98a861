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
- reading: whole shards, each verified by its checksums (rethink.data.shards) when loaded, the
  current window cached;
- augmentation as TF-slim's Inception preprocessing does it for training: a random crop whose
  area is 5-100% of the image and aspect ratio 3/4-4/3 (sample_distorted_bounding_box with
  min_object_covered 0.1, 100 attempts, else the whole image), resized (bilinear) to crop_size,
  a random left-right flip; colours scaled to [-1, 1]. `random_crop` switches the crop, `augment`
  the flip; off, training sees the evaluation view: TF-slim's central crop of 87.5% of the
  image, resized. Its colour distortion is left out (README, "Deviations and choices"). Each
  batch's draws come from a generator seeded by (epoch seed, batch number): the same on resume
  and whichever thread makes it;
- decoding: Pillow on the CPU; `torchvision.io.decode_jpeg(device="cuda")` (nvJPEG) on a GPU;
- prefetch: a background thread prepares the next PREFETCH_BATCHES batches;
- several processes (rethink.train.distributed): each draws the whole batch's crops and flips
  and decodes only its part of the batch.
"""

import io
import math
import queue
import threading

import numpy as np
import torch
import torch.nn.functional as F

from rethink.data.shards import ShardError, read_shard
from rethink.errors import RethinkError
from rethink.train import preprocess

EVAL_BATCH = 500  # see loop.EVAL_BATCH: fixed, so a cell's numbers depend on nothing but the cell
# Batches the background thread prepares ahead; it changes speed only, never a number.
PREFETCH_BATCHES = 4
# TF-slim inception_preprocessing: distorted_bounding_box_crop's defaults, central_crop's fraction
CROP_AREA = (0.05, 1.0)
CROP_ASPECT = (0.75, 1.33)
CROP_MIN_COVERED = 0.1
CROP_ATTEMPTS = 100
EVAL_FRACTION = 0.875


class InMemorySplit:
    """The whole split on the device; batches are slices of it (the small datasets' path)."""

    def __init__(self, images, labels, num_classes):
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.n, self.image_shape = len(labels), tuple(images.shape[1:])

    def epoch_plan(self, hp, generator, device):
        return preprocess.epoch_plan(self.n, self.image_shape, hp, generator, device)

    def train_batches(self, plan, start, hp, world=None):
        """The epoch's batches from step `start` on; with a `world` (several processes), this
        rank's part of each (positions of the epoch: the same draws as the whole batch's)."""
        bs = hp["batch_size"]
        for lo in range(start * bs, self.n, bs):
            hi = min(lo + bs, self.n)
            if world is not None:
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


def epoch_order(counts, window, seed):
    """The epoch's sample order (indices into the split): shards permuted, then the samples of
    each window of `window` consecutive shards permuted together."""
    rng = np.random.default_rng([seed, 1])
    starts = np.concatenate([[0], np.cumsum(counts)])
    shard_order = rng.permutation(len(counts))
    parts = []
    for g in range(0, len(shard_order), window):
        members = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shard_order[g : g + window]])
        parts.append(members[rng.permutation(len(members))])
    return np.concatenate(parts)


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
        self._cache, self._prefetch = {}, None

    # --- shards

    def _shard(self, s):
        """Shard s's JPEG bytes and offsets, verified; the current window's shards stay cached."""
        if s not in self._cache:
            arrays, _ = read_shard(self.paths[s], ["jpeg", "offsets"])
            if len(self._cache) >= 2 * self.window:
                self._cache.pop(next(iter(self._cache)))
            self._cache[s] = arrays
        return self._cache[s]

    def _blobs(self, indices):
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        blobs = []
        for index, s in zip(indices, shards):
            arrays, local = self._shard(int(s)), int(index - self.starts[s])
            blobs.append(arrays["jpeg"][arrays["offsets"][local] : arrays["offsets"][local + 1]])
        return blobs

    def _batch(self, indices, boxes, flips, size):
        images = decode(self._blobs(indices), self.device)
        x = torch.stack([view(im, box, size, flip) for im, box, flip in zip(images, boxes, flips)])
        return x, self.labels[torch.from_numpy(np.asarray(indices))]

    # --- what a Member asks

    def epoch_plan(self, hp, generator, device):
        return {"seed": torch.randint(0, 2**62, (1,), generator=generator, device=device)}

    def train_batches(self, plan, start, hp, world=None):
        seed, bs, size = int(plan["seed"].item()), hp["batch_size"], hp["crop_size"]
        order = epoch_order(self.counts, self.window, seed)

        def produce():
            for b in range(start, math.ceil(self.n / bs)):
                indices = order[b * bs : (b + 1) * bs]
                rng = np.random.default_rng([seed, 2, b])  # this batch's draws, whoever makes it
                boxes, flips = [], []
                for i in indices:
                    h, w = (int(v) for v in self.sizes[i])
                    boxes.append(crop_box(rng, h, w) if hp["random_crop"] else central_box(h, w))
                    flips.append(bool(rng.random() < 0.5) if hp["augment"] else False)
                if world is not None:  # the whole batch's draws were made: decode this rank's part
                    lo, hi = world.part(len(indices))
                    indices, boxes, flips = indices[lo:hi], boxes[lo:hi], flips[lo:hi]
                yield self._batch(indices, boxes, flips, size)

        return self._prefetched(produce())

    def eval_batches(self, crop_size):
        def produce():
            for lo in range(0, self.n, EVAL_BATCH):
                indices = np.arange(lo, min(lo + EVAL_BATCH, self.n))
                boxes = [central_box(*(int(v) for v in self.sizes[i])) for i in indices]
                yield self._batch(indices, boxes, [False] * len(indices), crop_size)

        return self._prefetched(produce())

    def _prefetched(self, batches):
        self.close()
        self._prefetch = Prefetch(batches, PREFETCH_BATCHES)
        return iter(self._prefetch)

    def close(self):
        if self._prefetch is not None:
            self._prefetch.stop()
            self._prefetch = None


class Prefetch:
    """Runs a batch generator in a background thread, `depth` batches ahead; its errors surface
    in the consumer (a damaged shard stops training naming the file, as it does in memory)."""

    _DONE = object()

    def __init__(self, batches, depth):
        self._queue, self._stopped = queue.Queue(maxsize=depth), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True)
        self._thread.start()

    def _run(self, batches):
        try:
            for item in batches:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except (RethinkError, ShardError, OSError, RuntimeError, ValueError) as err:
            self._put(err)

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
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def stop(self):
        self._stopped.set()
        self._thread.join()
