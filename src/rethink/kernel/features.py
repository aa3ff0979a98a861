"""What the kernel sees of an image (Table 3's rows), each a config choice (`kernel.rows.<row>.features`).

- `raw`: the pixels scaled to [0, 1], flattened (the first author's MNIST code: pixels / 255);
- `scattering`: a 2D scattering transform (Morlet, i.e. Gabor-like, wavelets with modulus and
  averaging: kymatio's `Scattering2D`), the kept-library stand-in for the paper's "Gabor wavelet
  transform", of the [0, 1] pixels; settings `kernel.scattering.{J, L, max_order}`;
- `random_conv`: the paper's "random filters" on CIFAR-10: `kernel.random_conv.filters` filters
  of `size` x `size` x C drawn i.i.d. N(0, 1) from `seed` and scaled to unit norm, convolved
  (stride 1, no padding) with the [0, 1] pixels, ReLU, then pooled (`pool`: avg or max) over a
  `pool_grid` x `pool_grid` grid of regions. The paper gives only the filter count.

The featurisers run `batch` images at a time in float32 on the solve's device and return float64
features for the kernel (raw pixels are float64 throughout).
"""

import math

import torch
import torch.nn.functional as F

from rethink.errors import RethinkError

NAMES = ("raw", "scattering", "random_conv")


def _pixels(images, device):
    return images.to(device=device, dtype=torch.float32) / 255.0


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


def _random_conv(settings, shape, device):
    channels, height, width = shape
    if settings["size"] > min(height, width):
        raise RethinkError(f"kernel.random_conv.size = {settings['size']} is larger than the {height}x{width} images")
    filters = random_filters(settings, channels).to(device)
    pool = F.adaptive_avg_pool2d if settings["pool"] == "avg" else F.adaptive_max_pool2d
    grid = settings["pool_grid"]
    return lambda x: pool(F.relu(F.conv2d(x, filters)), grid).flatten(1)


def featurise(name, settings, images, batch, device):
    """images: N x C x H x W uint8 (a CPU tensor) -> N x D float64 features on `device`."""
    if name == "raw":  # straight to float64: the pixels are exactly k / 255
        return images.to(device=device, dtype=torch.float64).flatten(1) / 255.0
    make = {"scattering": _scattering, "random_conv": _random_conv}[name]
    transform = make(settings[name], tuple(images.shape[1:]), device)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            parts.append(transform(_pixels(images[start : start + batch], device)).double())
    return torch.cat(parts)


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
