"""Make `import torchvision` work with a torch build its compiled ops were not built for.

The torchvision wheel that pairs with torch 2.13 is a CUDA build; on a CPU-only torch its
`_C.so` cannot load, and torchvision's own meta registrations then fail with
"operator torchvision::nms does not exist". When (and only when) the extension cannot be
loaded we declare the two operator schemas torchvision registers fakes for at import time.
Detection, NMS and friends then stay unavailable, which this project never uses; where the
extension loads, this module does nothing.

Import torchvision through `rethink.torchvision_guard.torchvision` (or import this module
first).
"""

import importlib.util
import pathlib

import torch

_LIBRARY = None  # keeps the fallback schema registration alive for the process


def _extension_path():
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(pathlib.Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)


def ensure_loadable():
    """Return True when torchvision's compiled ops loaded, False when the fallback was used."""
    global _LIBRARY
    if _LIBRARY is not None:
        return False
    so = _extension_path()
    if so is not None:
        try:
            torch.ops.load_library(str(so))
            return True
        except (OSError, RuntimeError):
            pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    return False


EXTENSION_LOADED = ensure_loadable()

import torchvision  # noqa: E402  (must come after the guard)

__all__ = ["EXTENSION_LOADED", "torchvision"]
