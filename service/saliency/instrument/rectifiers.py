"""Which torch calls are rectifiers (ReLU, ReLU6), in every spelling nn.ReLU and nn.ReLU6 reach.

One table for everything that treats rectifiers specially: the backward rules of `hooks`
(guided backprop, deconvnet, DeepLIFT's rescale), LRP's `relevance` mode, the op rule table of
`propagation` and the model probe. It imports nothing of saliency, so all of them can.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Parsed = tuple[torch.Tensor, float | None, bool]  # (input, upper bound or None, in place)


def _relu_args(x: torch.Tensor, inplace: bool = False) -> Parsed:
    return x, None, inplace


def _relu6_args(x: torch.Tensor, inplace: bool = False) -> Parsed:
    return x, 6.0, inplace


def _hardtanh_args(x: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Parsed | None:
    # Only hardtanh(0, m) is a rectifier (nn.ReLU6 calls hardtanh(x, 0, 6)); others keep autograd's rule.
    return (x, float(max_val), inplace) if min_val == 0 and max_val > 0 else None


# Every public spelling of the rectifiers nn.ReLU and nn.ReLU6 reach, with its argument parser.
_RECTIFIERS: dict[Callable, Callable[..., Parsed | None]] = {
    F.relu: _relu_args,
    F.relu_: lambda x: (x, None, True),
    torch.relu: _relu_args,
    torch.relu_: lambda x: (x, None, True),
    torch.Tensor.relu: _relu_args,
    torch.Tensor.relu_: lambda x: (x, None, True),
    F.relu6: _relu6_args,
    F.hardtanh: _hardtanh_args,
    F.hardtanh_: lambda x, min_val=-1.0, max_val=1.0: _hardtanh_args(x, min_val, max_val, True),
}


def parse_rectifier(func: Callable, args: tuple, kwargs: dict) -> Parsed | None:
    """(input, upper bound or None, in place) when `func(*args, **kwargs)` is a ReLU / ReLU6."""
    parse = _RECTIFIERS.get(func)
    return parse(*args, **kwargs) if parse is not None else None
