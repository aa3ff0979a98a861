"""The one registry from config names to models: build_model(name, input_shape, num_classes, ...).

A name is a model of the registry below, or a user's own model as "package.module:function": the
function is called as the registry's factories are, `function(input_shape, num_classes,
width=..., dropout=...)`, and returns a torch.nn.Module (config key `architectures.<name>.model`).
"""

import functools
import importlib
import math

import torch.nn as nn

from rethink.errors import RethinkError
from rethink.models import small

V3_MIN_SIZE = 75  # below this torchvision's Inception V3 shrinks a feature map to nothing

_REGISTRY = {
    "inception": functools.partial(small.inception, bn=True),
    "inception_nobn": functools.partial(small.inception, bn=False),
    "alexnet": small.alexnet,
    "mlp_1x512": functools.partial(small.mlp, depth=1),
    "mlp_3x512": functools.partial(small.mlp, depth=3),
    "inception_v3": None,  # built below; torchvision is imported only when asked for
}
ARCHITECTURES = tuple(_REGISTRY)


def _tensorflow_init(model):
    """TensorFlow's layer defaults, which the paper's (TF) code would have used: tf.layers,
    tf.contrib.layers / TF-slim and Keras conv and dense layers all start with Glorot-uniform
    kernels, U(+-sqrt(6 / (fan_in + fan_out))) with fan = k*k*channels, and zero biases. The
    small Inception's BatchNorm has no scale/shift, so there is nothing else to initialise (its
    running statistics start at mean 0, variance 1 in both frameworks)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


# config value (hparams.init) -> what it does to a freshly built small model. `pytorch` keeps the
# layers' own initialisation: kaiming-uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases.
INITS = {"tensorflow": _tensorflow_init, "pytorch": lambda model: model}


def _inception_v3(input_shape, num_classes, width=1.0, dropout=0.0):
    if width != 1.0:
        raise RethinkError(f"model inception_v3: width={width!r} is not supported; it must be 1.0")
    if input_shape[0] != 3 or min(input_shape[1:]) < V3_MIN_SIZE:
        raise RethinkError(
            f"model inception_v3: input_shape={tuple(input_shape)!r} is not supported; it needs "
            f"3 channels and H, W >= {V3_MIN_SIZE} (the paper uses 299x299)"
        )
    from rethink.torchvision_guard import torchvision

    # aux head off [choice]: one loss, like the small models. init_weights=True: torchvision's
    # truncated-normal init (std 0.1 for conv/linear), whatever build_model's `init` says
    return torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=True, num_classes=num_classes, dropout=dropout
    )


def _user_model(name, input_shape, num_classes, width, dropout):
    """A user's model, "package.module:function", imported as the trainer's Python finds it."""
    module, _, function = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as err:
        raise RethinkError(f"model {name}: cannot import {function} from {module} ({err})") from None
    model = factory(input_shape, num_classes, width=width, dropout=dropout)
    if not isinstance(model, nn.Module):
        raise RethinkError(f"model {name}: {function} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def build_model(name, input_shape, num_classes, width=1.0, dropout=0.0, init="tensorflow"):
    """Build architecture `name` for images of shape (C, H, W) and `num_classes` outputs.

    `width` multiplies every channel/unit count (1.0 = the paper's model); `dropout` is the
    rate of a dropout layer before the final linear layer (0 = off, same parameter count);
    `init` is one of INITS (for every model but Inception V3, which keeps torchvision's; `pytorch`
    leaves a user's model as its function built it). Weights are drawn from torch's global RNG:
    seed it first for a reproducible model.
    """
    user = isinstance(name, str) and ":" in name
    if not user and name not in _REGISTRY:
        raise RethinkError(
            f"unknown model {name!r}; known models: {', '.join(ARCHITECTURES)}, or package.module:function"
        )
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(_is_int(v) and v >= 1 for v in shape):
        raise RethinkError(f"model {name}: input_shape={input_shape!r} must be three positive ints (C, H, W)")
    if not _is_int(num_classes) or num_classes < 1:
        raise RethinkError(f"model {name}: num_classes={num_classes!r} must be a positive int")
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise RethinkError(f"model {name}: width={width!r} must be a finite number > 0")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise RethinkError(f"model {name}: dropout={dropout!r} must be in [0, 1)")
    if not isinstance(init, str) or init not in INITS:
        raise RethinkError(f"model {name}: init={init!r} is unknown; allowed: {', '.join(INITS)}")
    if user:
        return INITS[init](_user_model(name, shape, num_classes, float(width), float(dropout)))
    if _REGISTRY[name] is None:
        return _inception_v3(shape, num_classes, width=float(width), dropout=float(dropout))
    return INITS[init](_REGISTRY[name](shape, num_classes, width=float(width), dropout=float(dropout)))


def count_parameters(model):
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ARCHITECTURES", "INITS", "build_model", "count_parameters"]
