"""Which operations the modified backward rules cover: the tables the model probe classifies
every call of a forward against (guided backprop / deconvnet, DeepLIFT's rescale, LRP).

The rules act on torch-function calls (`hooks.backward_rule`, `relevance.relevance_mode`), so a
model is judged by the calls its forward makes, not by its module types: the probe records each
call that touches the input's data and asks `op_rules` which rule families handle it. A call
no family knows (GELU, SiLU, softmax, a product of two input-dependent tensors, ...) would keep
autograd's gradient and give a map that is neither method, so that method is refused for the
model, naming the call and the module it was made in.

Families:
- route: reshapes, indexing, concatenation, padding, dropout in eval: every rule passes through
  them unchanged (their gradient routes values, which is what each rule wants).
- linear in the input-dependent arguments (conv, linear, eval BatchNorm, average pooling, sums,
  products with a constant): their gradient is exact for guided backprop and DeepLIFT (a linear
  map's multiplier is its gradient); LRP needs its own rule for each.
- rectifiers (ReLU / ReLU6 in any spelling `hooks` knows): every family has a rule.
- max pooling: DeepLIFT has a rule; guided and LRP route through the winner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from saliency.instrument.rectifiers import parse_rectifier

GUIDED, RESCALE, LRP = "guided", "rescale", "lrp"
FAMILIES = (GUIDED, RESCALE, LRP)
_ALL = frozenset(FAMILIES)
_LINEAR = frozenset({GUIDED, RESCALE})

_T = torch.Tensor
_ROUTE: set[Callable] = {
    _T.view, _T.view_as, _T.reshape, _T.reshape_as, _T.flatten, _T.unflatten, _T.permute,
    _T.transpose, _T.contiguous, _T.squeeze, _T.unsqueeze, _T.expand, _T.expand_as,
    _T.__getitem__, _T.split, _T.chunk, _T.narrow, _T.unbind, _T.repeat, _T.to, _T.float,
    _T.type_as, _T.clone, _T.flip, _T.roll,
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.cat, torch.concat, torch.stack, torch.split, torch.chunk, torch.narrow, torch.unbind,
    torch.clone, torch.flip, torch.roll,
    F.pad, F.dropout, F.dropout2d, F.pixel_shuffle, F.pixel_unshuffle,
}
_ROUTE_PROPERTIES = {"T", "mT"}
# Linear whatever the number of input-dependent arguments.
_ADDITIVE: set[Callable] = {
    torch.add, _T.add, _T.add_, _T.__add__, _T.__radd__, _T.__iadd__,
    torch.sub, _T.sub, _T.sub_, _T.__sub__, _T.__rsub__, _T.__isub__,
    torch.neg, _T.neg, _T.__neg__,
    torch.sum, _T.sum, torch.mean, _T.mean, torch.cumsum, _T.cumsum,
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.linear,
    F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
}
# Linear when at most one argument depends on the input (else a product of two: not linear).
_PRODUCTS: set[Callable] = {
    torch.mul, _T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__,
    torch.div, _T.div, _T.div_, _T.__truediv__, _T.__itruediv__,
    torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__, torch.bmm, _T.bmm, torch.einsum,
}
# What `relevance_mode` gives its own rule.
_LRP_LAYERS: set[Callable] = {F.conv2d, F.linear, F.adaptive_avg_pool2d, F.avg_pool2d}
_LRP_SUMS: set[Callable] = {torch.add, _T.add, _T.__add__, _T.__radd__}
_MAX_POOLS: set[Callable] = {F.max_pool2d, F.adaptive_max_pool2d}


def op_name(func: Callable) -> str:
    """A readable, stable name for a torch-function call: torch.nn.functional.gelu,
    Tensor.__add__, torch.cat, aten::conv2d (an exported program's operators)."""
    if isinstance(func, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return f"aten::{func.__name__.split('.')[0]}" if func.namespace == "aten" else str(func)
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a Tensor property, e.g. x.T
        owner = getattr(func, "__self__", None)
        return f"Tensor.{getattr(owner, '__name__', 'property')}"
    qualname = getattr(func, "__qualname__", name)
    if qualname.startswith(("TensorBase.", "Tensor.", "_TensorBase.")):
        return "Tensor." + qualname.split(".", 1)[1]
    module = getattr(func, "__module__", None) or ""
    if module.startswith("torch._C._nn") or module == "torch.nn.functional":
        return f"torch.nn.functional.{name}"
    if module.startswith("torch._C") or module in ("torch", "torch.functional"):
        return f"torch.{name}"
    return f"{module}.{qualname}" if module else qualname


def op_rules(func: Callable, args: Sequence, kwargs: dict, dependent: int) -> frozenset[str]:
    """The rule families (GUIDED, RESCALE, LRP) that handle `func(*args, **kwargs)`, a call with
    `dependent` arguments that depend on the model's input."""
    if func in _ROUTE or op_name(func).split(".")[-1] in _ROUTE_PROPERTIES and op_name(func).startswith("Tensor."):
        if func in (F.dropout, F.dropout2d) and _flag(args, kwargs, "training", 2, default=True):
            return frozenset()
        return _ALL
    try:
        if parse_rectifier(func, tuple(args), dict(kwargs)) is not None:
            return _ALL
    except TypeError:
        pass
    if func in _MAX_POOLS:
        return _ALL
    if func is F.batch_norm:
        return _ALL if not _flag(args, kwargs, "training", 5, default=False) else frozenset()
    if func in _ADDITIVE:
        lrp = func in _LRP_LAYERS or (func in _LRP_SUMS and dependent == 2 and _same_shapes(args, kwargs))
        return _ALL if lrp else _LINEAR
    if func in _PRODUCTS and dependent <= 1:
        return _LINEAR
    if func is F.interpolate and _arg(args, kwargs, "mode", 2, "nearest") in ("nearest", "bilinear", "linear"):
        return _LINEAR
    return frozenset()


def _arg(args: Sequence, kwargs: dict, name: str, position: int, default):
    return kwargs[name] if name in kwargs else (args[position] if len(args) > position else default)


def _flag(args: Sequence, kwargs: dict, name: str, position: int, default: bool) -> bool:
    return bool(_arg(args, kwargs, name, position, default))


def _same_shapes(args: Sequence, kwargs: dict) -> bool:
    a = args[0] if args else None
    b = args[1] if len(args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", 1)
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and alpha == 1
