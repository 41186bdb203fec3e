"""The one place that registers hooks on a model, and only inside a context manager.

Hooks are removed in `finally`, so an exception in any method leaves the model as it was.
A captured output is recorded only for the thread that opened the context: a model shared by
threads never hands one request's activations to another.

Modified backward rules (guided backpropagation, deconvnet) attach nothing to the model at
all: `backward_rule` is a thread-local torch-function mode that, while it is open, makes every
ReLU / ReLU6 *call in this thread* record a custom autograd node. The rule therefore lives in
the autograd graph of the calls made inside the context and nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from saliency.errors import InvalidArgument

BACKWARD_RULES = ("guided", "deconvnet")


def resolve_layer(model: nn.Module, dotted_name: str) -> nn.Module:
    """Find a submodule by its dotted path (as in `named_modules`)."""
    modules = dict(model.named_modules())
    if dotted_name not in modules:
        raise InvalidArgument(f"model has no layer named {dotted_name!r}", "target_layer")
    return modules[dotted_name]


@contextmanager
def capture_output(model: nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives `layer`'s output tensor on every forward call in this thread."""
    module = resolve_layer(model, layer)
    owner = threading.get_ident()
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if threading.get_ident() == owner:
            captured.append(output)

    handle = module.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


def has_hooks(model: nn.Module) -> bool:
    """True if any module of `model` carries a forward/backward hook (used by hygiene tests)."""
    for module in model.modules():
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            return True
    return False


# --------------------------------------------------------------------------- modified backward


class _RuleActivation(torch.autograd.Function):
    """y = clamp(x, 0, upper) (ReLU when upper is None, ReLU6 when 6) with a modified backward.

    guided (Springenberg et al.): dx = relu(dy) where the forward passed its input through
        unchanged, i.e. 0 < x (< upper), else 0. For ReLU6 the plain gradient is already zero
        where x >= 6; guided keeps that and also drops negative dy.
    deconvnet (Zeiler & Fergus): dx = relu(dy), whatever the forward input was.
    x, y: any shape; the mask is taken from y (0 < y < upper iff 0 < x < upper).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float | None, rule: str) -> torch.Tensor:
        y = torch.relu(x) if upper is None else torch.clamp(x, 0.0, upper)
        ctx.rule, ctx.upper = rule, upper
        if rule == "guided":
            ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        positive = grad.clamp(min=0)
        if ctx.rule == "deconvnet":
            return positive, None, None
        (y,) = ctx.saved_tensors
        # autograd's own ReLU / hardtanh backward kernels, applied to relu(dy): they pass the
        # gradient where 0 < y (< upper), and y is inside that range exactly where x is.
        if ctx.upper is None:
            return torch.ops.aten.threshold_backward(positive, y, 0), None, None
        return torch.ops.aten.hardtanh_backward(positive, y, 0.0, ctx.upper), None, None


def _relu_args(x: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, float | None, bool]:
    return x, None, inplace


def _relu6_args(x: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, float | None, bool]:
    return x, 6.0, inplace


def _hardtanh_args(
    x: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> tuple[torch.Tensor, float | None, bool] | None:
    # Only hardtanh(0, m) is a rectifier (nn.ReLU6 calls hardtanh(x, 0, 6)); others keep autograd's rule.
    return (x, float(max_val), inplace) if min_val == 0 and max_val > 0 else None


# Every public spelling of the rectifiers nn.ReLU and nn.ReLU6 reach, with its argument parser
# -> (input, upper bound or None, whether the call is in place).
_RECTIFIERS: dict[Callable, Callable[..., tuple[torch.Tensor, float | None, bool] | None]] = {
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


class _BackwardRuleMode(TorchFunctionMode):
    """Routes rectifier calls of this thread through `_RuleActivation`; all else unchanged."""

    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parse = _RECTIFIERS.get(func)
        parsed = parse(*args, **kwargs) if parse is not None else None
        if parsed is None:
            return func(*args, **kwargs)
        x, upper, inplace = parsed
        y = _RuleActivation.apply(x, upper, self.rule)
        # An in-place call must still leave its result in x: copy it in, so autograd routes
        # x's gradient through the rule node (x is never saved by it, so this is legal).
        return x.copy_(y) if inplace else y


@contextmanager
def backward_rule(rule: str) -> Iterator[None]:
    """Apply `rule` ("guided" or "deconvnet") to every ReLU / ReLU6 call made in this thread
    inside the context (forward time is what matters: the rule is recorded in the graph).

    Nothing is registered on any module and nothing is swapped: torch-function modes are
    thread-local, so a plain request running the same model object in another thread at the
    same moment gets plain gradients. Covers nn.ReLU / nn.ReLU6 modules and the functional
    F.relu / F.relu6 / F.hardtanh(x, 0, m) / torch.relu / Tensor.relu calls (and their in-place
    forms); a rectifier written another way (e.g. torch.clamp) keeps autograd's own rule.
    """
    if rule not in BACKWARD_RULES:
        raise ValueError(f"unknown backward rule {rule!r}; known: {BACKWARD_RULES}")
    with _BackwardRuleMode(rule):
        yield
