"""The paper's CIFAR-10 models (small Inception with/without BatchNorm, small AlexNet, MLPs).

Every builder takes an input shape (C, H, W) and a class count and returns a plain
nn.Sequential of stock ops, so channels_last and bfloat16 autocast work unchanged.
Init: the layers' PyTorch defaults; build_model applies the configured one (models.INITS).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled(channels, width):
    """A channel/unit count times the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def tf_same_pad(x, k, s, value=0.0):
    # TensorFlow "same": out = ceil(n / s), the odd pixel of padding goes bottom/right.
    # PyTorch's symmetric padding would shift every stride-2 window by one pixel.
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class MaxPoolSame(nn.Module):
    """Max-pool with TF "same" padding; the pad is -inf so it never wins the max, as in TF."""

    def __init__(self, k=3, s=2):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        return F.max_pool2d(tf_same_pad(x, self.k, self.s, float("-inf")), self.k, self.s)


class Conv(nn.Module):
    """Conv(k, C, s): conv with bias -> BatchNorm without affine -> ReLU.

    The conv bias plus a BN without scale/shift is the only layout that reproduces the
    paper's 1,649,402 parameters; bn=False gives the "Inception w/o BatchNorm" variant.
    """

    def __init__(self, cin, cout, k, s, bn):
        super().__init__()
        self.k, self.s = k, s
        # stride 1 with an odd kernel is symmetric, so the conv pads itself (no F.pad)
        self.conv = nn.Conv2d(cin, cout, k, s, padding=k // 2 if s == 1 else 0)
        self.bn = nn.BatchNorm2d(cout, affine=False) if bn else nn.Identity()

    def forward(self, x):
        if self.s > 1:
            x = tf_same_pad(x, self.k, self.s)
        return F.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Inception(C1, C3) = concat[Conv(1, C1, 1), Conv(3, C3, 1)]."""

    def __init__(self, cin, c1, c3, bn):
        super().__init__()
        self.b1, self.b3 = Conv(cin, c1, 1, 1, bn), Conv(cin, c3, 3, 1, bn)
        self.out_channels = c1 + c3

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x)], dim=1)


class Downsample(nn.Module):
    """Downsample(C3) = concat[Conv(3, C3, 2), max-pool 3x3 stride 2]; halves H and W."""

    def __init__(self, cin, c3, bn):
        super().__init__()
        self.conv, self.pool = Conv(cin, c3, 3, 2, bn), MaxPoolSame(3, 2)
        self.out_channels = c3 + cin  # the pool branch passes its input channels through

    def forward(self, x):
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


# Inception(C1, C3) as a pair, Downsample(C3) as a single int
INCEPTION_PLAN = [(32, 32), (32, 48), 80, (112, 48), (96, 64), (80, 80), (48, 96), 96, (176, 160), (176, 160)]


def inception(input_shape, num_classes, width=1.0, dropout=0.0, bn=True):
    """Small Inception (paper Fig. 3): 28x28 -> 14x14x160 -> 7x7x240 -> 7x7x336 -> GAP -> linear."""
    c = scaled(96, width)
    layers = [Conv(input_shape[0], c, 3, 1, bn)]
    for spec in INCEPTION_PLAN:
        if isinstance(spec, int):
            block = Downsample(c, scaled(spec, width), bn)
        else:
            block = Inception(c, scaled(spec[0], width), scaled(spec[1], width), bn)
        layers.append(block)
        c = block.out_channels
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers, *head)


def alexnet(input_shape, num_classes, width=1.0, dropout=0.0):
    """Small AlexNet: 2 x (conv 5x5 -> ReLU -> max-pool 3x3/2 -> LRN), FC 384 -> FC 192 -> linear."""
    cin, h, wd = input_shape
    c, f1, f2 = scaled(64, width), scaled(384, width), scaled(192, width)
    # LRN [choice, paper silent]: TF cifar10 tutorial values, tf.nn.lrn(depth_radius=4,
    # bias=1.0, alpha=0.001/9, beta=0.75). TF multiplies the raw sum of squares by alpha,
    # torch by alpha/size, so torch's alpha = (0.001/9) * 9 = 0.001 with size = 2*4+1 = 9.
    lrn = lambda: nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)  # noqa: E731
    for _ in range(2):  # two same-padded stride-2 pools: n -> ceil(n/2) -> ceil(n/4)
        h, wd = math.ceil(h / 2), math.ceil(wd / 2)
    return nn.Sequential(
        nn.Conv2d(cin, c, 5, padding=2), nn.ReLU(), MaxPoolSame(3, 2), lrn(),
        nn.Conv2d(c, c, 5, padding=2), nn.ReLU(), MaxPoolSame(3, 2), lrn(),
        nn.Flatten(),
        nn.Linear(c * h * wd, f1), nn.ReLU(),
        nn.Linear(f1, f2), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(f2, num_classes),
    )  # fmt: skip


def mlp(input_shape, num_classes, width=1.0, dropout=0.0, depth=1):
    """MLP with `depth` hidden layers of 512 ReLU units on the flattened image."""
    d, hidden, layers = math.prod(input_shape), scaled(512, width), [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(d, num_classes))
