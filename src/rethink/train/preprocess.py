"""Batched preprocessing on the training device: crops, flip + rotation, per-image standardisation.

Every function takes a whole batch (N x C x H x W) and draws its randomness from the
torch.Generator it is given, so a run is reproducible and no Python loop touches a sample.
"""

import math

import torch
import torch.nn.functional as F


def to_float(images):
    """uint8 (or float32 in 0..255 pixel units, as for gaussian noise) -> float32 / 255."""
    return images.to(torch.float32) / 255.0


def centre_crop(x, size):
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x, size, pad, generator):
    """A random size x size window per sample; images already that size are zero-padded first."""
    if x.shape[-2:] == (size, size):
        x = F.pad(x, (pad, pad, pad, pad))
    n, c, h, w = x.shape
    dev = x.device
    top = torch.randint(0, h - size + 1, (n, 1, 1), generator=generator, device=dev)
    left = torch.randint(0, w - size + 1, (n, 1, 1), generator=generator, device=dev)
    span = torch.arange(size, device=dev)
    # flat pixel index of every window position, one window per sample, gathered in one op
    index = (top + span.view(1, size, 1)) * w + left + span.view(1, 1, size)
    index = index.view(n, 1, size * size).expand(n, c, size * size)
    return x.flatten(2).gather(2, index).view(n, c, size, size)


def flip_rotate(x, flips, angles):
    """Flip samples where `flips` is True, then rotate each by `angles` (radians), zero fill."""
    n, _, h, w = x.shape
    x = torch.where(flips.view(n, 1, 1, 1), x.flip(-1), x)  # exact, no resampling
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    # rotation in pixel space written in affine_grid's normalised coordinates (h/w keeps
    # non-square images from shearing)
    theta = torch.stack([
        torch.stack([cos, -sin * h / w, zero], -1),
        torch.stack([sin * w / h, cos, zero], -1),
    ], 1)  # fmt: skip
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x, degrees, generator):
    """Random left-right flip (p = 0.5) and rotation uniform in [-degrees, degrees], per sample."""
    n, dev = x.shape[0], x.device
    flips = torch.rand(n, generator=generator, device=dev) < 0.5
    angles = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * math.radians(degrees)
    return flip_rotate(x, flips, angles)


def standardize(x):
    """TF's per_image_standardization: (x - mean) / max(std, 1/sqrt(numel)), per image."""
    var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
    floor = 1.0 / math.sqrt(x[0].numel())  # a constant image becomes zeros, not NaN
    return (x - mean) / var.sqrt().clamp_min(floor)


def train_view(images, hp, generator):
    """What the model trains on: random or centre crop, optional flip + rotation, standardised."""
    size = hp["crop_size"]
    if hp["random_crop"]:
        x = random_crop(images, size, hp["crop_pad"], generator)  # cropping uint8 moves 4x fewer bytes
    else:
        x = centre_crop(images, size)
    x = to_float(x)
    if hp["augment"]:
        x = augment(x, hp["rotate_degrees"], generator)
    return standardize(x)


def eval_view(images, crop_size):
    """The deterministic view used for every evaluation: centre crop, standardised."""
    return standardize(to_float(centre_crop(images, crop_size)))
