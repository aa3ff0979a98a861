"""The paper's randomizations: statistics, coupling, seeding, and what they leave alone."""

import math

import numpy as np
import pytest

from rethink.data.randomize import (
    DEFAULT_OPTIONS,
    channel_stats,
    label_corruption,
    noise_options,
    parse_noise,
    randomize_shard,
)
from rethink.errors import RethinkError

N, K = 20000, 10


def labels(n=N, seed=0):
    return np.random.default_rng(seed).integers(0, K, n)


def positional_images(n, channels=3, side=16):
    """Images whose channel 0 holds each pixel's position (16x16 = 256 positions, all distinct),
    channel 1 a copy and channel 2 the reverse, so a permutation can be read off exactly."""
    pos = np.arange(side * side, dtype=np.uint8).reshape(side, side)
    base = np.stack([pos, pos, 255 - pos][:channels])
    return np.repeat(base[None], n, axis=0)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_label_corruption_changes_about_0_9p_within_binomial_bounds(p):
    true = labels()
    out = randomize_shard(label_corruption(p), 0, "train", 0, None, true, K)
    changed = out["labels"] != true
    expected = p * (K - 1) / K
    sigma = math.sqrt(expected * (1 - expected) / N)
    assert abs(changed.mean() - expected) < 4 * sigma
    np.testing.assert_array_equal(out["changed"], changed.astype(np.uint8))
    # the replacement classes are uniform over the classes other than the true one
    counts = np.bincount((out["labels"][changed] - true[changed]) % K, minlength=K)
    assert counts[0] == 0
    assert counts[1:].min() > 0.8 * counts[1:].mean() and counts[1:].max() < 1.2 * counts[1:].mean()


def test_random_labels_are_uniform_and_independent_of_the_truth():
    true = labels()
    out = randomize_shard(parse_noise("random_labels"), 3, "train", 0, None, true, K)["labels"]
    agree = (out == true).mean()
    assert abs(agree - 1 / K) < 4 * math.sqrt(0.1 * 0.9 / N)
    assert np.bincount(out, minlength=K).min() > 0.9 * N / K


def test_corruption_levels_are_nested_for_one_seed():
    true = labels()
    low = randomize_shard(label_corruption(0.2), 7, "train", 0, None, true, K)["changed"]
    high = randomize_shard(label_corruption(0.6), 7, "train", 0, None, true, K)["changed"]
    assert low.sum() < high.sum()
    assert not (low & ~high).any()


def test_same_seed_same_draws_other_seed_or_shard_other_draws():
    true, noise = labels(), label_corruption(0.5)
    a = randomize_shard(noise, 1, "train", 0, None, true, K)["labels"]
    np.testing.assert_array_equal(a, randomize_shard(noise, 1, "train", 0, None, true, K)["labels"])
    assert (a != randomize_shard(noise, 2, "train", 0, None, true, K)["labels"]).any()
    assert (a != randomize_shard(noise, 1, "train", 1, None, true, K)["labels"]).any()


def test_shuffled_pixels_one_permutation_for_train_test_and_every_shard():
    images = positional_images(5)
    outs = [
        randomize_shard(parse_noise("shuffled_pixels"), 4, split, shard, images, labels(5), K)["images"]
        for split, shard in [("train", 0), ("train", 3), ("test", 0)]
    ]
    permutation = outs[0][0, 0].reshape(-1).astype(int)  # channel 0 held each pixel's position
    assert sorted(permutation) == list(range(256)) and (permutation != np.arange(256)).any()
    for out in outs:
        for image in out:
            np.testing.assert_array_equal(image[0].reshape(-1), permutation)
            np.testing.assert_array_equal(image[1].reshape(-1), permutation)  # channels move together
            np.testing.assert_array_equal(image[2].reshape(-1), 255 - permutation)
    other = randomize_shard(parse_noise("shuffled_pixels"), 5, "train", 0, images, labels(5), K)
    assert (other["images"][0, 0].reshape(-1) != permutation).any()


def test_shuffled_pixels_of_real_content_is_the_permuted_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    out = randomize_shard(parse_noise("shuffled_pixels"), 0, "test", 0, images, labels(8), K)["images"]
    for before, after in zip(images, out):
        np.testing.assert_array_equal(np.sort(before.reshape(-1)), np.sort(after.reshape(-1)))


def test_random_pixels_a_different_permutation_per_image():
    n = 200
    out = randomize_shard(parse_noise("random_pixels"), 0, "train", 0, positional_images(n), labels(n), K)
    perms = out["images"][:, 0].reshape(n, -1).astype(int)
    assert all(sorted(p) == list(range(256)) for p in perms)  # each image a permutation of itself
    assert len({p.tobytes() for p in perms}) == n  # and no two images share one
    np.testing.assert_array_equal(out["images"][:, 1].reshape(n, -1), perms)
    np.testing.assert_array_equal(out["images"][:, 2].reshape(n, -1), 255 - perms)
    assert out["changed"].all()


def test_gaussian_matches_per_channel_mean_and_std():
    rng = np.random.default_rng(1)
    images = np.stack(
        [
            rng.integers(0, 100, (500, 32, 32)),
            rng.integers(100, 256, (500, 32, 32)),
            rng.integers(0, 256, (500, 32, 32)),
        ],
        axis=1,
    ).astype(np.uint8)
    stats = channel_stats([images[:200], images[200:]])
    np.testing.assert_allclose(stats["mean"], images.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], images.std(axis=(0, 2, 3)), rtol=1e-9)
    out = randomize_shard(parse_noise("gaussian"), 0, "train", 0, images, labels(500), K, stats)["images"]
    assert out.dtype == np.float32 and out.shape == images.shape
    n = stats["pixels_per_channel"]  # 4 standard errors of the sample mean and std
    np.testing.assert_array_less(
        np.abs(out.mean(axis=(0, 2, 3)) - stats["mean"]), 4 * np.array(stats["std"]) / math.sqrt(n)
    )
    np.testing.assert_array_less(np.abs(out.std(axis=(0, 2, 3)) / stats["std"] - 1), 4 / math.sqrt(2 * n))
    # pixels are independent of the image they replace: correlation with the original ~ 0
    corr = np.corrcoef(out[:, 2].reshape(-1), images[:, 2].reshape(-1))[0, 1]
    assert abs(corr) < 0.01


def test_noise_names_are_canonical_and_bad_ones_rejected():
    assert label_corruption(0).name == "true_labels"
    assert label_corruption(1.0).name == "random_labels"
    assert label_corruption(0.1 + 0.2).name == "corrupt_p0.3"
    assert parse_noise("corrupt_p0.25").level == 0.25
    assert parse_noise("shuffled_pixels").splits("clean") == ("train", "test")
    assert parse_noise("random_pixels").splits("clean") == ("train",)
    assert parse_noise("true_labels").splits("clean") == ()
    with pytest.raises(RethinkError, match=r"1\.5 is outside \[0, 1\]"):
        parse_noise("corrupt_p1.5")
    with pytest.raises(RethinkError, match="unknown noise 'blur'.*gaussian"):
        parse_noise("blur")


def test_test_labels_stay_clean_by_default():
    with pytest.raises(RethinkError, match=r"leaves the test split clean \(test_labels=clean\)"):
        randomize_shard(parse_noise("random_labels"), 0, "test", 0, None, labels(10), K)
    with pytest.raises(RethinkError, match="leaves the test split clean"):
        randomize_shard(parse_noise("random_pixels"), 0, "test", 0, positional_images(2), labels(2), K)
    assert parse_noise("random_labels").splits("clean") == ("train",)


def test_corrupted_test_labels_get_the_training_labels_process_from_their_own_stream():
    corrupted = {"test_labels": "corrupted"}
    for name in ("random_labels", "corrupt_p0.4"):
        assert parse_noise(name).splits("corrupted") == ("train", "test")
    for name in ("true_labels", "random_pixels", "gaussian", "shuffled_pixels"):  # no labels to corrupt
        assert parse_noise(name).splits("corrupted") == parse_noise(name).splits("clean")
    true = labels()
    test = randomize_shard(label_corruption(0.4), 5, "test", 0, None, true, K, options=corrupted)
    train = randomize_shard(label_corruption(0.4), 5, "train", 0, None, true, K, options=corrupted)
    expected = 0.4 * (K - 1) / K
    assert abs(test["changed"].mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / N)
    assert (test["labels"] != train["labels"]).mean() > 0.3  # not the training split's draws
    # the option changes which splits are written, never the training labels' draws
    clean_train = randomize_shard(label_corruption(0.4), 5, "train", 0, None, true, K)
    np.testing.assert_array_equal(train["labels"], clean_train["labels"])
    with pytest.raises(RethinkError, match="test_labels='noisy' is unknown; allowed: clean, corrupted"):
        randomize_shard(parse_noise("random_labels"), 0, "test", 0, None, labels(10), K, None, {"test_labels": "noisy"})


def test_a_noise_depends_only_on_the_options_that_shape_it():
    options = {"permute": "values", "gaussian_stats": "global", "test_labels": "corrupted"}
    assert noise_options(parse_noise("corrupt_p0.2"), options) == {"test_labels": "corrupted"}
    assert noise_options(parse_noise("random_pixels"), options) == {"permute": "values"}
    assert noise_options(parse_noise("gaussian"), options) == {"gaussian_stats": "global"}
    assert (
        noise_options(parse_noise("random_labels"))
        == {"test_labels": DEFAULT_OPTIONS["test_labels"]}
        == {"test_labels": "clean"}
    )
    with pytest.raises(RethinkError, match="unknown randomization option 'test_lables'; known: permute"):
        noise_options(parse_noise("random_labels"), {"test_lables": "clean"})


def test_permuting_values_instead_of_positions_separates_the_channels():
    out = randomize_shard(
        parse_noise("shuffled_pixels"), 4, "train", 0, positional_images(2), labels(2), K, options={"permute": "values"}
    )["images"]
    # channel 0 no longer holds a permutation of its own positions: values crossed channels
    assert sorted(out[0, 0].reshape(-1).tolist()) != list(range(256))
    np.testing.assert_array_equal(np.sort(out[0].reshape(-1)), np.sort(positional_images(1)[0].reshape(-1)))


def test_global_gaussian_statistics_pool_the_channels():
    rng = np.random.default_rng(2)
    images = np.stack([rng.integers(0, 50, (300, 8, 8)), rng.integers(200, 256, (300, 8, 8))], axis=1).astype(np.uint8)
    stats = channel_stats([images])
    out = randomize_shard(
        parse_noise("gaussian"), 0, "train", 0, images, labels(300), K, stats, {"gaussian_stats": "global"}
    )["images"]
    pooled = images.astype(np.float64)
    for channel in out.transpose(1, 0, 2, 3):
        assert abs(channel.mean() - pooled.mean()) < 4 * pooled.std() / math.sqrt(channel.size)
        assert abs(channel.std() / pooled.std() - 1) < 4 / math.sqrt(2 * channel.size)
