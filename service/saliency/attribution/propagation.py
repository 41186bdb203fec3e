"""Which models the propagation methods (DeepLIFT, LRP) can explain: a check of the module tree.

Both methods replace the backward of the layers they know (`hooks` rescale rule, `relevance`
mode). A layer they do not know would silently keep autograd's gradient and give a map that
is neither method, so a model with any leaf module outside the list is refused up front,
naming the first such module. Containers are accepted: their forward's own functional calls
(F.conv2d, F.relu, tensor additions, ...) are what the rules intercept.
"""

from __future__ import annotations

import threading
import weakref

from torch import nn

from saliency.errors import InvalidArgument

# Leaf module types with a rule (or whose gradient already is the rule: reshapes, dropout in
# eval mode, identity). Subclasses count (EfficientNet-Lite's SameConv2d pads, then F.conv2d).
SUPPORTED_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)

_cache: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def propagation_support(module: nn.Module) -> str | None:
    """None when DeepLIFT and LRP can explain `module`, else why not (the first unsupported
    leaf module's path and type). Cached per module object."""
    with _lock:
        if module in _cache:
            return _cache[module]
    reason = None
    for path, sub in module.named_modules():
        if next(sub.children(), None) is None and not isinstance(sub, SUPPORTED_LEAVES):
            known = ", ".join(t.__name__ for t in SUPPORTED_LEAVES)
            reason = f"module {path or '<root>'} ({type(sub).__name__}) has no propagation rule; supported: {known}"
            break
    with _lock:
        _cache[module] = reason
    return reason


def require_propagation_support(method: str, module: nn.Module) -> None:
    """Raise InvalidArgument (field "methods") when `method` cannot explain `module`."""
    reason = propagation_support(module)
    if reason is not None:
        raise InvalidArgument(f"{method} cannot explain this model: {reason}", "methods")


def cnn_only(spec) -> str | None:
    """`supports` for the registry: propagation rules exist for convolutional models only."""
    if spec.architecture != "cnn":
        return f"propagation rules cover convolutional networks, not architecture {spec.architecture!r}"
    return None
