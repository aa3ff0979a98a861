"""Batched preprocessing: standardisation, crops, flip + rotation, determinism."""

import math

import pytest
import torch

from rethink.train import preprocess

HP = {"crop_size": 28, "crop_pad": 2, "random_crop": True, "augment": True, "rotate_degrees": 25.0}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_to_float_scales_uint8_and_float_pixels():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert preprocess.to_float(x).dtype == torch.float32
    assert torch.allclose(preprocess.to_float(x), torch.tensor([0.0, 0.2, 1.0]))
    assert torch.allclose(preprocess.to_float(torch.tensor([-25.5, 510.0])), torch.tensor([-0.1, 2.0]))


def test_standardize_known_values():
    # one image with values 0..3: mean 1.5, population std sqrt(1.25)
    x = torch.arange(4.0).view(1, 1, 2, 2)
    expected = (torch.arange(4.0) - 1.5) / math.sqrt(1.25)
    assert torch.allclose(preprocess.standardize(x).flatten(), expected)
    # each image uses its own statistics, over all channels together
    y = torch.stack([torch.arange(8.0).view(2, 2, 2), 10 * torch.arange(8.0).view(2, 2, 2)])
    out = preprocess.standardize(y)
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out.var(dim=(1, 2, 3), correction=0), torch.ones(2), atol=1e-5)


def test_standardize_floor_for_flat_images():
    # a constant image has std 0: the 1/sqrt(numel) floor keeps it finite (all zeros)
    flat = torch.full((1, 3, 4, 4), 0.7)
    assert torch.equal(preprocess.standardize(flat), torch.zeros_like(flat))
    # a tiny std below the floor is divided by the floor, not by itself
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1e-3
    numel_floor = 1 / math.sqrt(4)
    expected = (x - x.mean()) / numel_floor
    assert torch.allclose(preprocess.standardize(x), expected)


def test_centre_crop_picks_the_centre_and_is_noop_at_size():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    out = preprocess.centre_crop(x, 28)
    assert out.shape == (1, 1, 28, 28)
    assert torch.equal(out, x[..., 2:30, 2:30])
    same = torch.rand(2, 3, 28, 28)
    assert torch.equal(preprocess.centre_crop(same, 28), same)


def _windows(image, size):
    h, w = image.shape[-2:]
    return {(i, j): image[..., i : i + size, j : j + size] for i in range(h - size + 1) for j in range(w - size + 1)}


@pytest.mark.parametrize("shape,pad", [((3, 32, 32), 0), ((1, 28, 28), 2)])
def test_random_crop_is_a_real_window_per_sample(shape, pad):
    n = 64
    # every pixel unique within its image (uint8 range is too small, so use int32 codes)
    images = torch.arange(n * math.prod(shape), dtype=torch.int32).view(n, *shape)
    out = preprocess.random_crop(images, 28, pad, gen())
    assert out.shape == (n, shape[0], 28, 28) and out.dtype == images.dtype
    offsets = []
    for k in range(n):
        source = torch.nn.functional.pad(images[k], (pad,) * 4) if shape[1] == 28 else images[k]
        match = [ij for ij, win in _windows(source, 28).items() if torch.equal(win, out[k])]
        assert len(match) == 1, f"sample {k} is not a window of its own input"
        offsets.append(match[0])
    assert len(set(offsets)) > 10  # windows differ within one batch
    if pad:  # padding is zeros, and some windows reach into it
        assert any(ij != (pad, pad) for ij in offsets) and (out == 0).any()


def test_random_crop_uint8_matches_float():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a, b = preprocess.random_crop(x, 28, 0, gen(3)), preprocess.random_crop(x.float(), 28, 0, gen(3))
    assert a.dtype == torch.uint8 and torch.equal(a.float(), b)


def test_rotation_zero_without_flip_is_identity():
    x = torch.rand(4, 3, 28, 28)
    no = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(preprocess.flip_rotate(x, no, torch.zeros(4)), x, atol=1e-5)
    yes = torch.ones(4, dtype=torch.bool)
    assert torch.allclose(preprocess.flip_rotate(x, yes, torch.zeros(4)), x.flip(-1), atol=1e-5)


def test_rotation_by_90_degrees_is_rot90():
    # pixel centres of a square image map onto pixel centres, so this is exact up to rounding
    x = torch.rand(2, 1, 8, 8)
    out = preprocess.flip_rotate(x, torch.zeros(2, dtype=torch.bool), torch.full((2,), math.pi / 2))
    candidates = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 3)]
    assert any(torch.allclose(out, c, atol=1e-5) for c in candidates)
    assert not torch.allclose(out, x, atol=1e-2)


def test_augment_changes_samples_independently():
    x = torch.rand(1, 3, 28, 28).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = preprocess.augment(x, 25.0, gen())
    distinct = {tuple(out[k].flatten()[:50].tolist()) for k in range(64)}
    assert len(distinct) > 32  # each sample draws its own flip and angle
    assert not torch.allclose(out, x, atol=1e-3)
    # rotation zero-fills the corners that come from outside the image
    assert (out[:, :, 0, 0] == 0).float().mean() > 0.5


def test_augment_without_rotation_only_flips():
    x = torch.rand(32, 1, 6, 6)
    out = preprocess.augment(x, 0.0, gen())
    flipped = torch.tensor([torch.allclose(o, s.flip(-1), atol=1e-5) for o, s in zip(out, x)])
    kept = torch.tensor([torch.allclose(o, s, atol=1e-5) for o, s in zip(out, x)])
    assert torch.all(flipped | kept) and flipped.any() and kept.any()


def test_same_generator_seed_same_output():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a, b = preprocess.train_view(x, HP, gen(7)), preprocess.train_view(x, HP, gen(7))
    c = preprocess.train_view(x, HP, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 3, 28, 28) and a.dtype == torch.float32


def test_eval_view_is_deterministic_centre_crop_standardised():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    expected = preprocess.standardize(x[..., 2:30, 2:30].float() / 255)
    assert torch.allclose(preprocess.eval_view(x, 28), expected)
