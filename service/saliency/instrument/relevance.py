"""Layer-wise relevance propagation as a thread-local torch-function mode (no hooks, no copies).

While `relevance_mode(rules)` is open, the layer calls of this thread are routed through
autograd Functions whose backward propagates *relevance* instead of the gradient: the
"gradient" handed down is R itself, so the input's "gradient" is the input relevance. The
forward values are the model's own. Like `hooks.backward_rule`, the rules live only in the
autograd graph of the forward made inside the context: nothing is attached to the model,
nothing is swapped, a concurrent plain request on the same model object is unaffected.

Per layer type (x the layer input, z its output, R the relevance of z):
- conv2d / linear: the chosen rule (epsilon, gamma, alpha1_beta0, alpha2_beta1), see `_rule_backward`.
- batch_norm (eval) right after a conv / linear is *folded into it* (the canonizer): the pair
  is explained as one conv with weights W * a and bias (b - mean) * a + beta, a = weight /
  sqrt(var + eps). A BatchNorm after anything else is its own per-channel affine layer.
- avg / adaptive-avg pooling: linear; R is split in proportion to each input's share of z.
- max pooling, padding, reshapes, dropout (eval): autograd's own backward, which routes R to
  the winner / crops it / reshapes it: relevance passes unchanged.
- ReLU / ReLU6 (any spelling `hooks` knows): relevance passes through unchanged.
- tensor + tensor of equal shapes (residual additions): R split in proportion to each
  summand's value, R_a = a R / z, R_b = b R / z.
Biases are constant inputs: they keep their share of the relevance (so the input relevance
sums to the logit only up to what the biases and epsilon absorb; `stats` reports it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from saliency.instrument.rectifiers import parse_rectifier

LRP_RULES = ("epsilon", "gamma", "alpha1_beta0", "alpha2_beta1")
STABILIZER = 1e-9  # keeps denominators off zero (Captum's PropagationRule.STABILITY_FACTOR)


@dataclass(frozen=True)
class RelevanceRules:
    """The rule for every conv / linear layer (frozen and hashable: chunks group by it)."""

    rule: str = "epsilon"
    epsilon: float = 0.25  # rules epsilon and gamma: z + epsilon * sign(z)
    gamma: float = 0.25  # rule="gamma": contributions z_ij + gamma * max(z_ij, 0)

    def __post_init__(self) -> None:
        if self.rule not in LRP_RULES:
            raise ValueError(f"unknown LRP rule {self.rule!r}; known: {LRP_RULES}")


def _stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), sign(0) = 1, so the result is never zero for eps > 0."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


@dataclass(frozen=True, eq=False)
class _Affine:
    """A linear layer z = op(x, weight) + bias: conv2d (with its geometry), linear or a
    per-channel scale (a standalone BatchNorm). weight/bias already folded where needed."""

    kind: str  # "conv2d" | "linear" | "scale"
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "conv2d":
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        z = x * _channel_view(weight, x)
        return z if bias is None else z + _channel_view(bias, x)

    def input_grad(self, x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Transpose of x -> op(x, weight) applied to s (shape of z) -> shape of x."""
        if self.kind == "linear":
            return s @ weight
        if self.kind == "scale":
            return s * _channel_view(weight, x)
        if isinstance(self.padding, str):  # "same" / "valid": let autograd transpose it
            with torch.enable_grad():
                xx = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.apply(xx, weight, None), xx, s)
            return g
        return torch.nn.grad.conv2d_input(
            x.shape, weight, s, self.stride, self.padding, self.dilation, self.groups
        )

    def folded(self, bn_weight, bn_bias, mean, var, eps: float) -> _Affine:
        """This layer followed by an eval-mode BatchNorm, as one layer."""
        a = torch.rsqrt(var + eps)
        if bn_weight is not None:
            a = a * bn_weight
        shift = -mean * a if bn_bias is None else bn_bias - mean * a
        bias = shift if self.bias is None else self.bias * a + shift
        weight = self.weight * a.view(-1, *([1] * (self.weight.dim() - 1)))
        return _Affine(self.kind, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector [C] shaped to broadcast over x [N, C, ...]."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _rule_backward(layer: _Affine, rules: RelevanceRules, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Input relevance of a linear layer, x the input, z = layer(x), r the relevance of z.

    epsilon: R_i = sum_j z_ij R_j / (z_j + eps sign(z_j)), z_ij = x_i w_ij, z_j = sum_i z_ij + b_j
    gamma: the same with z_ij + gamma (z_ij)+ and b_j + gamma b+_j: positive contributions
        amplified. For x >= 0 that is Montavon et al.'s w + gamma w+; it also holds for signed
        inputs (the network's input, after residual additions). Stabilized by eps as well.
    alpha-beta: R_i = sum_j (alpha (x_i w_ij)+ / z+_j - beta (x_i w_ij)- / z-_j) R_j with
        z+_j = sum_i (x_i w_ij)+ + b+_j, z-_j = sum_i (x_i w_ij)- + b-_j (Montavon et al. 2019)
    """
    w, b = layer.weight, layer.bias
    if rules.rule == "epsilon":  # epsilon = 0 (LRP-0) still keeps the denominator off zero
        return x * layer.input_grad(x, w, r / _stabilize(z, max(rules.epsilon, STABILIZER)))
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    if rules.rule == "gamma":
        # z_ij + gamma (z_ij)+: positive contributions x+ W+ and x- W- amplified
        g = rules.gamma
        bg = None if b is None else b + g * b.clamp(min=0)
        zg = layer.apply(x, w, bg) + g * (layer.apply(xp, wp, None) + layer.apply(xn, wn, None))
        s = r / _stabilize(zg, max(rules.epsilon, STABILIZER))
        return x * layer.input_grad(x, w, s) + g * (xp * layer.input_grad(x, wp, s) + xn * layer.input_grad(x, wn, s))
    alpha, beta = (1.0, 0.0) if rules.rule == "alpha1_beta0" else (2.0, 1.0)

    def part(w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # Contributions of one sign: x+ w1 and x- w2 (w1 = W+, w2 = W- for the positive part).
        z_part = layer.apply(xp, w1, bias) + layer.apply(xn, w2, None)
        s = r / _stabilize(z_part, STABILIZER)
        return xp * layer.input_grad(x, w1, s) + xn * layer.input_grad(x, w2, s)

    relevance = alpha * part(wp, wn, None if b is None else b.clamp(min=0))
    if beta:
        relevance = relevance - beta * part(wn, wp, None if b is None else b.clamp(max=0))
    return relevance


class _LinearRelevance(torch.autograd.Function):
    """z = layer(x) forward (or a precomputed z); backward: the rule's input relevance.

    Outputs are never saved, only inputs: a model may overwrite an output in place (a ReLU with
    inplace=True after a conv or a residual sum), so the backward recomputes z from x.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: _Affine, rules: RelevanceRules, z: torch.Tensor | None) -> torch.Tensor:
        z = layer.apply(x, layer.weight, layer.bias) if z is None else z
        ctx.layer, ctx.rules = layer, rules
        ctx.save_for_backward(x)
        return z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        with torch.no_grad():
            z = layer.apply(x, layer.weight, layer.bias)
        return _rule_backward(layer, ctx.rules, x, z, r), None, None, None


class _PoolRelevance(torch.autograd.Function):
    """A linear pooling y = pool(x); backward: R_i = x_i sum_j d y_j/d x_i R_j / y_j."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pool, args: tuple, kwargs: dict) -> torch.Tensor:
        y = pool(x, *args, **kwargs)
        ctx.pool, ctx.args, ctx.kwargs = pool, args, kwargs
        ctx.save_for_backward(x)  # not y: see _LinearRelevance
        return y

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = ctx.pool(xx, *ctx.args, **ctx.kwargs)
            (g,) = torch.autograd.grad(y, xx, r / _stabilize(y.detach(), STABILIZER))
        return x * g, None, None, None


class _SumRelevance(torch.autograd.Function):
    """z = a + b (same shapes); backward: R_a = a R / z, R_b = b R / z."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)  # not a + b: see _LinearRelevance
        return a + b

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor):
        a, b = ctx.saved_tensors
        s = r / _stabilize(a + b, STABILIZER)
        return a * s, b * s


class _PassRelevance(torch.autograd.Function):
    """An elementwise activation y = clamp(x, 0, upper): relevance passes through unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float | None) -> torch.Tensor:
        return torch.relu(x) if upper is None else torch.clamp(x, 0.0, upper)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor):
        return r, None


def _conv_layer(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> tuple[torch.Tensor, _Affine]:
    return x, _Affine("conv2d", weight, bias, stride, padding, dilation, groups)


def _linear_layer(x, weight, bias=None) -> tuple[torch.Tensor, _Affine]:
    return x, _Affine("linear", weight, bias)


class _RelevanceMode(TorchFunctionMode):
    """Routes this thread's layer calls through the relevance Functions; all else unchanged."""

    def __init__(self, rules: RelevanceRules):
        super().__init__()
        self.rules = rules
        # id(z) -> (z, x, layer) for the latest conv / linear outputs: a BatchNorm reading one
        # of them is folded into that layer.
        self.layer_outputs: dict[int, tuple[torch.Tensor, torch.Tensor, _Affine]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, F.linear):
            x, layer = (_conv_layer if func is F.conv2d else _linear_layer)(*args, **kwargs)
            z = _LinearRelevance.apply(x, layer, self.rules, None)
            self.layer_outputs[id(z)] = (z, x, layer)
            return z
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        if func in (F.adaptive_avg_pool2d, F.avg_pool2d):
            return _PoolRelevance.apply(args[0], func, tuple(args[1:]), kwargs)
        if func in (torch.Tensor.add, torch.add, torch.Tensor.__add__, torch.Tensor.__radd__):
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
            if (
                isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and kwargs.get("alpha", 1) == 1
            ):
                return _SumRelevance.apply(a, b)
            return func(*args, **kwargs)
        parsed = parse_rectifier(func, args, kwargs)
        if parsed is None:
            return func(*args, **kwargs)
        x, upper, inplace = parsed
        y = _PassRelevance.apply(x, upper)
        return x.copy_(y) if inplace else y

    def _batch_norm(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        p = {**dict(zip(names, args)), **kwargs}
        if p.get("training", False):
            raise RuntimeError("LRP needs BatchNorm in eval mode (training=True was passed)")
        x, eps = p["input"], p.get("eps", 1e-5)
        mean, var = p["running_mean"], p["running_var"]
        with torch.no_grad():
            y = func(x.detach(), mean, var, p.get("weight"), p.get("bias"), False, 0.0, eps)
        producer = self.layer_outputs.get(id(x))
        if producer is not None and producer[0] is x:
            _, layer_input, layer = producer
            fused = layer.folded(p.get("weight"), p.get("bias"), mean, var, eps)
            return _LinearRelevance.apply(layer_input, fused, self.rules, y)
        scale = _Affine("scale", torch.ones_like(mean), None).folded(p.get("weight"), p.get("bias"), mean, var, eps)
        # A standalone BatchNorm is an elementwise affine map: the epsilon rule with the
        # stabilizer only (a rule for mixing inputs means nothing for one input per output).
        return _LinearRelevance.apply(x, scale, RelevanceRules("epsilon", STABILIZER), y)


@contextmanager
def relevance_mode(rules: RelevanceRules) -> Iterator[None]:
    """Make the layer calls of this thread inside the context propagate relevance (module doc)."""
    with _RelevanceMode(rules):
        yield
