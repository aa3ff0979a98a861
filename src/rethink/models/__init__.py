"""The one registry from config names to models: build_model(name, input_shape, num_classes, ...)."""

import functools
import math

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
    # truncated-normal init (std 0.1 for conv/linear), not PyTorch's default
    return torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=True, num_classes=num_classes, dropout=dropout
    )


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def build_model(name, input_shape, num_classes, width=1.0, dropout=0.0):
    """Build architecture `name` for images of shape (C, H, W) and `num_classes` outputs.

    `width` multiplies every channel/unit count (1.0 = the paper's model); `dropout` is the
    rate of a dropout layer before the final linear layer (0 = off, same parameter count).
    """
    if name not in _REGISTRY:
        raise RethinkError(f"unknown model {name!r}; known models: {', '.join(ARCHITECTURES)}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(_is_int(v) and v >= 1 for v in shape):
        raise RethinkError(
            f"model {name}: input_shape={input_shape!r} must be three positive ints (C, H, W)"
        )
    if not _is_int(num_classes) or num_classes < 1:
        raise RethinkError(f"model {name}: num_classes={num_classes!r} must be a positive int")
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise RethinkError(f"model {name}: width={width!r} must be a finite number > 0")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise RethinkError(f"model {name}: dropout={dropout!r} must be in [0, 1)")
    build = _REGISTRY[name] or _inception_v3
    return build(shape, num_classes, width=float(width), dropout=float(dropout))


def count_parameters(model):
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ARCHITECTURES", "build_model", "count_parameters"]
