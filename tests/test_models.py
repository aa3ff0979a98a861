"""The model registry: exact paper parameter counts, shapes, padding, dropout, init, errors."""

import math
import re

import pytest
import torch
import torch.nn as nn

from rethink.errors import RethinkError
from rethink.models import ARCHITECTURES, build_model, count_parameters
from rethink.models.small import Downsample, Inception, MaxPoolSame

PAPER_COUNTS = {  # docs/PAPER.md "Models", 28x28x3 input, 10 classes
    "inception": 1_649_402,
    "inception_nobn": 1_649_402,
    "alexnet": 1_387_786,
    "mlp_1x512": 1_209_866,
    "mlp_3x512": 1_735_178,
}
SMALL = tuple(PAPER_COUNTS)
# first layer's weights per input channel: k*k*C_out (conv) or H*W*units (MLP)
FIRST_LAYER_PER_CHANNEL = {
    "inception": 3 * 3 * 96,
    "inception_nobn": 3 * 3 * 96,
    "alexnet": 5 * 5 * 64,
    "mlp_1x512": 28 * 28 * 512,
    "mlp_3x512": 28 * 28 * 512,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_names():
    assert set(ARCHITECTURES) == set(SMALL) | {"inception_v3"}


@pytest.mark.parametrize("name", SMALL)
def test_paper_parameter_count(name):
    assert count_parameters(build_model(name, (3, 28, 28), 10)) == PAPER_COUNTS[name]


@pytest.mark.parametrize("name", SMALL)
def test_grayscale_differs_only_in_first_layer(name):
    rgb = count_parameters(build_model(name, (3, 28, 28), 10))
    gray = count_parameters(build_model(name, (1, 28, 28), 10))
    assert rgb - gray == 2 * FIRST_LAYER_PER_CHANNEL[name]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", SMALL)
def test_forward_backward(name, channels):
    model = build_model(name, (channels, 28, 28), 10)
    out = model(torch.randn(4, channels, 28, 28))
    assert out.shape == (4, 10)
    out.square().mean().backward()
    first = next(model.parameters())
    assert first.shape[1] in (channels, channels * 28 * 28)  # it really is the first layer
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["inception", "inception_nobn"])
def test_inception_spatial_sizes(name):
    model = build_model(name, (3, 28, 28), 10)
    blocks = [m for m in model.modules() if isinstance(m, (Inception, Downsample))]
    downs = [m for m in blocks if isinstance(m, Downsample)]
    assert len(downs) == 2
    watched = [downs[0], downs[1], blocks[-1]]
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for m in watched]
    model(torch.randn(2, 3, 28, 28))
    for h in hooks:
        h.remove()
    assert shapes == [(160, 14, 14), (240, 7, 7), (336, 7, 7)]


def test_max_pool_same_padding_matches_tensorflow():
    # TF "same" with stride 2 on an even size pads only bottom/right: windows start at 0, 2, ...
    x = torch.arange(28.0).view(1, 1, 1, 28).expand(1, 1, 28, 28)
    y = MaxPoolSame(3, 2)(x)
    assert y.shape == (1, 1, 14, 14)
    assert y[0, 0, 0].tolist() == [float(min(2 * i + 2, 27)) for i in range(14)]
    neg = MaxPoolSame(3, 2)(-torch.ones(1, 1, 28, 28))
    assert (neg == -1).all()  # the pad never wins the max


@pytest.mark.parametrize("name", SMALL)
def test_width_multiplier(name):
    full = count_parameters(build_model(name, (3, 28, 28), 10))
    model = build_model(name, (3, 28, 28), 10, width=0.25)
    assert count_parameters(model) < full
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", SMALL)
def test_dropout_train_vs_eval(name):
    model = build_model(name, (3, 28, 28), 10, dropout=0.5)
    assert count_parameters(model) == PAPER_COUNTS[name]
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))
        no_drop = build_model(name, (3, 28, 28), 10, dropout=0.0).train()
        assert torch.equal(no_drop(x), no_drop(x))  # the difference above is the dropout


@pytest.mark.parametrize("name", SMALL)
def test_channels_last_bf16_autocast(name):
    model = build_model(name, (3, 28, 28), 10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 28, 28).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_unknown_name_lists_known_names():
    with pytest.raises(RethinkError) as err:
        build_model("resnet", (3, 28, 28), 10)
    assert "resnet" in str(err.value)
    assert all(name in str(err.value) for name in ARCHITECTURES)


@pytest.mark.parametrize(
    "name, kwargs, shown",
    [
        ("mlp_1x512", dict(width=0), "width=0"),
        ("mlp_1x512", dict(width=-1.0), "width=-1.0"),
        ("alexnet", dict(dropout=1.0), "dropout=1.0"),
        ("alexnet", dict(dropout=-0.1), "dropout=-0.1"),
        ("inception", dict(input_shape=(3, 28)), "(3, 28)"),
        ("inception", dict(input_shape=(3, 0, 28)), "(3, 0, 28)"),
        ("inception", dict(num_classes=0), "num_classes=0"),
        ("mlp_1x512", dict(init="glorot"), "init='glorot' is unknown; allowed: tensorflow, pytorch"),
        ("mlp_1x512", dict(init=None), "init=None"),
        ("inception_v3", dict(width=0.5), "width=0.5"),
        ("inception_v3", dict(input_shape=(3, 64, 64)), "(3, 64, 64)"),
        ("inception_v3", dict(input_shape=(1, 299, 299)), "(1, 299, 299)"),
    ],
)
def test_bad_arguments(name, kwargs, shown):
    args = dict(input_shape=(3, 299, 299) if name == "inception_v3" else (3, 28, 28), num_classes=10)
    with pytest.raises(RethinkError, match=re.escape(shown)):
        build_model(name, **{**args, **kwargs})


def test_inception_v3():
    model = build_model("inception_v3", (3, 299, 299), 10, dropout=0.3).eval()
    assert model.AuxLogits is None and model.fc.out_features == 10 and model.dropout.p == 0.3
    with torch.no_grad():
        out = model(torch.randn(2, 3, 299, 299))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def weighted_layers(model):
    """(weights as float64, bias, fan_in, fan_out) of every conv and linear layer; fans count
    the kernel's receptive field (k*k*channels), as both frameworks do."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().double()
            receptive = w[0, 0].numel()
            yield w.flatten(), m.bias.detach(), w.shape[1] * receptive, w.shape[0] * receptive


def assert_uniform(w, bound):
    """w looks like iid U(-bound, bound): inside the bound, and its mean square bound^2/3 within
    5 sampling standard deviations (Var(w^2) = 4 bound^4 / 45 for the uniform)."""
    assert w.abs().max().item() <= bound
    sd = math.sqrt(4 / 45) * bound**2 / math.sqrt(w.numel())
    assert abs(w.square().mean().item() - bound**2 / 3) < 5 * sd, (w.square().mean().item(), bound**2 / 3)


@pytest.mark.parametrize("name", SMALL)
def test_tensorflow_init_is_glorot_uniform_with_zero_biases(name):
    layers = list(weighted_layers(build_model(name, (3, 28, 28), 10, init="tensorflow")))
    assert len(layers) == {"inception": 20, "inception_nobn": 20, "alexnet": 5, "mlp_1x512": 2, "mlp_3x512": 4}[name]
    for w, bias, fan_in, fan_out in layers:
        # Glorot/Xavier uniform: U(+-sqrt(6 / (fan_in + fan_out))), variance 2 / (fan_in + fan_out)
        assert_uniform(w, math.sqrt(6 / (fan_in + fan_out)))
        assert torch.count_nonzero(bias) == 0


@pytest.mark.parametrize("name", SMALL)
def test_pytorch_init_is_the_layers_default(name):
    for w, bias, fan_in, _ in weighted_layers(build_model(name, (3, 28, 28), 10, init="pytorch")):
        # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), variance 1 / (3 fan_in); biases U(+-1/sqrt(fan_in))
        assert_uniform(w, 1 / math.sqrt(fan_in))
        assert bias.abs().max() <= 1 / math.sqrt(fan_in) and torch.count_nonzero(bias) == len(bias)


def test_init_draws_from_the_seeded_global_rng():
    torch.manual_seed(3)
    a = build_model("inception_nobn", (1, 28, 28), 10, width=0.125)
    torch.manual_seed(3)
    b = build_model("inception_nobn", (1, 28, 28), 10, width=0.125)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_inception_v3_keeps_torchvisions_init_whatever_init_says():
    models = []
    for init in ("tensorflow", "pytorch"):
        torch.manual_seed(0)
        models.append(build_model("inception_v3", (3, 299, 299), 10, init=init))
    assert all(torch.equal(x, y) for x, y in zip(models[0].state_dict().values(), models[1].state_dict().values()))
    # torchvision's normal with std 0.1 (truncated at +-2, i.e. hardly), not Glorot's std 0.031 for 2048 -> 10
    assert 0.095 < models[0].fc.weight.std() < 0.105
