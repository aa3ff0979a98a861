"""What the kernel sees of an image (Table 3's rows), each a config choice (`kernel.rows.<row>.features`).

- `raw`: the pixels scaled to [0, 1], flattened (the first author's MNIST code: pixels / 255);
- `scattering`: a 2D scattering transform (Morlet, i.e. Gabor-like, wavelets with modulus and
  averaging: kymatio's `Scattering2D`), the kept-library stand-in for the paper's "Gabor wavelet
  transform", of the [0, 1] pixels; settings `kernel.scattering.{J, L, max_order}`;
- `random_conv`: the paper's "random filters" on CIFAR-10: `kernel.random_conv.filters` filters
  of `size` x `size` x C drawn i.i.d. N(0, 1) from `seed` and scaled to unit norm, convolved
  (stride 1, no padding) with the [0, 1] pixels, ReLU, then pooled (`pool`: avg or max) over a
  `pool_grid` x `pool_grid` grid of regions. The paper gives only the filter count.

The featurisers run in float32 on the solve's device and write float64 features for the kernel
into one N x D array (raw pixels are float64 throughout). `scattering` runs `kernel.batch` images
at a time (measured on CPU: ~0.1 MB per image and channel at J 2, L 8 on 28x28). `random_conv`'s
maps are what need memory: at the paper's 32,000 filters one 32x32 CIFAR image's 5x5 maps take
32,000 x 28 x 28 float32 = 100 MB, so `kernel.batch` = 1,024 images would take 96 GiB. So
`batching` sizes its steps from the memory at hand: `kernel.batch` images where they fit, fewer
where not (another batch can make oneDNN or cuDNN pick another convolution algorithm: the
features then differ within float32 rounding), and one image with its filters a chunk at a time
where not even one image fits (the same features bit for bit: each filter's map is computed
alone either way). The row's log names the step it took.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from rethink.errors import RethinkError
from rethink.progress import Progress

NAMES = ("raw", "scattering", "random_conv")


# The share of the memory left after the features that one featurisation batch may take: the rest
# is headroom for the convolution's workspace (cuDNN, oneDNN) and the allocator's slack.
FEATURISE_SHARE = 0.5


def _pixels(images, device):
    return images.to(device=device, dtype=torch.float32).div_(255.0)


def _scattering(settings, shape, device):
    from kymatio.torch import Scattering2D

    _, height, width = shape
    if min(height, width) < 2 ** settings["J"]:
        raise RethinkError(
            f"kernel.scattering.J = {settings['J']} needs images of at least {2 ** settings['J']} pixels per side; "
            f"these are {height}x{width}"
        )
    transform = Scattering2D(J=settings["J"], shape=(height, width), L=settings["L"], max_order=settings["max_order"])
    transform = transform.to(device)
    return lambda x: transform(x).flatten(1)


def random_filters(settings, channels):
    """The random filter bank, from its own seeded generator (independent of the device)."""
    generator = torch.Generator().manual_seed(settings["seed"])
    size = settings["size"]
    filters = torch.randn(settings["filters"], channels, size, size, generator=generator)
    return filters / filters.flatten(1).norm(dim=1)[:, None, None, None]


def _random_conv(settings, shape, device, chunk):
    """x -> its features, the filters `chunk` at a time; ReLU in place on the maps."""
    channels, height, width = shape
    if settings["size"] > min(height, width):
        raise RethinkError(f"kernel.random_conv.size = {settings['size']} is larger than the {height}x{width} images")
    filters = random_filters(settings, channels).to(device)
    pool = F.adaptive_avg_pool2d if settings["pool"] == "avg" else F.adaptive_max_pool2d
    grid = settings["pool_grid"]

    def transform(x, out):
        for first in range(0, len(filters), chunk):  # one expression: a chunk's maps die before the next's
            out[:, first * grid**2 : (first + chunk) * grid**2] = pool(
                F.conv2d(x, filters[first : first + chunk]).relu_(), grid
            ).flatten(1)

    return transform


@dataclasses.dataclass(frozen=True)
class Batching:
    """How a featuriser steps through the images: `images` per batch, `filters` per chunk
    (random_conv), and the transient bytes one such step holds besides the features."""

    images: int
    filters: int | None
    bytes: int


def _random_conv_bytes(settings, shape):
    """random_conv's transient bytes per image: (fixed, per filter). Fixed: the image (uint8, then
    float32); per filter: its float32 map (ReLU in place) and pooled values (max pooling also
    keeps int64 indices)."""
    channels, height, width = shape
    size, cells = settings["size"], settings["pool_grid"] ** 2
    per_filter = (height - size + 1) * (width - size + 1) * 4 + cells * (4 + (8 if settings["pool"] == "max" else 0))
    return channels * height * width * (1 + 4), per_filter


def batching(name, settings, shape, cap, available):
    """The featuriser's steps within FEATURISE_SHARE of `available` bytes (the memory at hand less
    the features), at most `cap` images per batch. random_conv: as many whole images as fit;
    when not even one does, one image with as many filters as fit; at the least one image and
    one filter, whose bytes the memory check then refuses if even they do not fit."""
    if name != "random_conv":  # raw: no transient; scattering: `cap` images (small, see above)
        return Batching(cap, None, 0)
    conv = settings["random_conv"]
    (fixed, per_filter), filters = _random_conv_bytes(conv, shape), conv["filters"]
    budget = int(available * FEATURISE_SHARE)
    images = min(cap, budget // (fixed + filters * per_filter))
    if images >= 1:
        return Batching(images, filters, images * (fixed + filters * per_filter))
    chunk = min(filters, max(1, (budget - fixed) // per_filter))
    return Batching(1, chunk, fixed + chunk * per_filter)


def featurise(name, settings, images, steps, device, what="images"):
    """images: N x C x H x W uint8 (a CPU tensor) -> N x D float64 features on `device`, in the
    Batching `steps`; `what` names the images in the progress lines."""
    shape = tuple(images.shape[1:])
    if name == "raw":  # straight to float64: the pixels are exactly k / 255
        return images.to(device=device, dtype=torch.float64).flatten(1).div_(255.0)
    out = torch.empty(len(images), feature_dim(name, settings, shape), dtype=torch.float64, device=device)
    if name == "scattering":
        scatter = _scattering(settings[name], shape, device)

        def transform(x, rows):
            rows.copy_(scatter(x))
    else:
        transform = _random_conv(settings[name], shape, device, steps.filters)
    # on CUDA each batch's copy to the device waits for the batch before it: the count is the work done
    with torch.no_grad(), Progress(f"{name} features {what}", len(images), "images") as bar:
        for start in range(0, len(images), steps.images):
            batch = images[start : start + steps.images]
            transform(_pixels(batch, device), out[start : start + len(batch)])
            bar.update(len(batch))
    return out


def feature_dim(name, settings, shape):
    """D of a featuriser for C x H x W images, without computing anything (for the memory check)."""
    channels, height, width = shape
    if name == "raw":
        return channels * height * width
    if name == "scattering":
        s = settings["scattering"]
        j, angles = s["J"], s["L"]
        paths = 1 + j * angles + (angles**2 * j * (j - 1) // 2 if s["max_order"] == 2 else 0)
        return channels * paths * math.ceil(height / 2**j) * math.ceil(width / 2**j)
    return settings["random_conv"]["filters"] * settings["random_conv"]["pool_grid"] ** 2
