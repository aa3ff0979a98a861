"""Batched preprocessing on the training device: crops, flip + rotation, per-image standardisation.

An epoch's randomness (sample order, crop offsets, flips, angles) is drawn once, up front, into
device tensors (`epoch_plan`); a step only slices them (`train_batch`). So the step draws nothing
and has fixed shapes: it can be captured as a CUDA graph or compiled, and resumed mid-epoch
from the saved plan. Every function takes a whole batch (N x C x H x W); no Python loop touches
a sample.
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


def crop_source_size(shape, size, pad):
    """(H, W) that random crops are taken from: images already size x size are zero-padded first."""
    h, w = shape[-2:]
    return (h + 2 * pad, w + 2 * pad) if (h, w) == (size, size) else (h, w)


def random_crop(x, size, pad, generator=None, top=None, left=None):
    """A size x size window per sample, at offsets `top`/`left` (N,) or drawn from `generator`."""
    if x.shape[-2:] == (size, size):
        x = F.pad(x, (pad, pad, pad, pad))
    n, c, h, w = x.shape
    dev = x.device
    if top is None:
        top = torch.randint(0, h - size + 1, (n,), generator=generator, device=dev)
        left = torch.randint(0, w - size + 1, (n,), generator=generator, device=dev)
    top, left = top.view(n, 1, 1), left.view(n, 1, 1)
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


def draw_flips_angles(n, degrees, generator, device):
    """Left-right flip with p = 0.5 and a rotation angle uniform in [-degrees, degrees], per sample."""
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    angles = (torch.rand(n, generator=generator, device=device) * 2 - 1) * math.radians(degrees)
    return flips, angles


def augment(x, degrees, generator):
    """Random left-right flip (p = 0.5) and rotation uniform in [-degrees, degrees], per sample."""
    return flip_rotate(x, *draw_flips_angles(x.shape[0], degrees, generator, x.device))


def standardize(x):
    """TF's per_image_standardization: (x - mean) / max(std, 1/sqrt(numel)), per image."""
    var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
    floor = 1.0 / math.sqrt(x[0].numel())  # a constant image becomes zeros, not NaN
    return (x - mean) / var.sqrt().clamp_min(floor)


def epoch_plan(n, image_shape, hp, generator, device):
    """An epoch's randomness, drawn up front in a fixed order: the sample order, then (when on)
    each sample's crop offsets, then its flip and angle. Indexed by position in the epoch."""
    return {
        "perm": torch.randperm(n, generator=generator, device=device),
        **sample_draws(n, image_shape, hp, generator, device),
    }


def sample_draws(n, image_shape, hp, generator, device):
    """Per-sample crop offsets and flips/angles for n samples (only those the regularizer uses)."""
    plan = {}
    if hp["random_crop"]:
        h, w = crop_source_size(image_shape, hp["crop_size"], hp["crop_pad"])
        plan["top"] = torch.randint(0, h - hp["crop_size"] + 1, (n,), generator=generator, device=device)
        plan["left"] = torch.randint(0, w - hp["crop_size"] + 1, (n,), generator=generator, device=device)
    if hp["augment"]:
        plan["flip"], plan["angle"] = draw_flips_angles(n, hp["rotate_degrees"], generator, device)
    return plan


def train_batch(images, plan, lo, hi, hp):
    """Positions lo:hi of the epoch -> (the samples cropped, augmented, standardised; their indices)."""
    part = {name: values[lo:hi] for name, values in plan.items()}
    idx, size = part["perm"], hp["crop_size"]
    if hp["random_crop"]:  # cropping uint8 moves 4x fewer bytes
        x = random_crop(images[idx], size, hp["crop_pad"], top=part["top"], left=part["left"])
    else:
        x = centre_crop(images[idx], size)
    x = to_float(x)
    if hp["augment"]:
        x = flip_rotate(x, part["flip"], part["angle"])
    return standardize(x), idx


def train_view(images, hp, generator):
    """A training view of a batch with randomness drawn from `generator` (benchmarks, tests)."""
    n, dev = len(images), images.device
    plan = {"perm": torch.arange(n, device=dev), **sample_draws(n, images.shape[1:], hp, generator, dev)}
    return train_batch(images, plan, 0, n, hp)[0]


def eval_view(images, crop_size):
    """The deterministic view used for every evaluation: centre crop, standardised."""
    return standardize(to_float(centre_crop(images, crop_size)))
