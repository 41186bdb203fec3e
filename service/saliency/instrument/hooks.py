"""The one place that registers hooks on a model, and only inside a context manager.

Hooks are removed in `finally`, so an exception in any method leaves the model as it was.
A captured output is recorded only for the thread that opened the context: a model shared by
threads never hands one request's activations to another.

Modified backward rules (guided backpropagation, deconvnet, DeepLIFT's rescale, LRP) attach
nothing to the model at all: `backward_rule` is a thread-local torch-function mode that, while
it is open, makes every ReLU / ReLU6 *call in this thread* (for LRP: every layer call, see
`relevance.py`) record a custom autograd node. The rule therefore lives in the autograd graph
of the calls made inside the context and nowhere else.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from saliency.errors import InvalidArgument
from saliency.instrument.rectifiers import parse_rectifier
from saliency.instrument.relevance import RelevanceRules, relevance_mode

BACKWARD_RULES = ("guided", "deconvnet", "rescale")
# Rules whose chunks hold (input, reference) row pairs: rows 2i and 2i + 1 belong together.
PAIRED_RULES = ("rescale",)
RESCALE_EPS = 1e-10  # |x - x'| below this: the plain derivative (as Captum's DeepLift)


def is_backward_rule(rule: object) -> bool:
    """A rule name of BACKWARD_RULES or an LRP rule set."""
    return isinstance(rule, RelevanceRules) or (isinstance(rule, str) and rule in BACKWARD_RULES)


def is_paired(rule: object) -> bool:
    return isinstance(rule, str) and rule in PAIRED_RULES


def resolve_layer(model: nn.Module, dotted_name: str) -> nn.Module:
    """Find a submodule by its dotted path (as in `named_modules`)."""
    modules = dict(model.named_modules())
    if dotted_name not in modules:
        raise InvalidArgument(f"model has no layer named {dotted_name!r}", "target_layer")
    return modules[dotted_name]


@contextmanager
def capture_output(
    model: nn.Module, layer: str, tokens: tuple[int, int, int] | None = None
) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives `layer`'s output tensor on every forward call in this thread.

    tokens (prefix, h, w): the output is a token sequence [B, prefix + h * w, C] (a vision
    transformer's CLS / register tokens, then the patch grid row by row); what is recorded is the
    patch grid [B, C, h, w], and the layer's output is replaced by the same values rebuilt from
    that grid, so the grid lies on the forward's graph and gradients reach it.
    """
    module = resolve_layer(model, layer)
    owner = threading.get_ident()
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner:
            return None
        if tokens is None:
            captured.append(output)
            return None
        grid = tokens_to_grid(output, tokens)
        captured.append(grid)
        return torch.cat([output[:, : tokens[0]], grid.flatten(2).transpose(1, 2)], dim=1)

    handle = module.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


def tokens_to_grid(output: torch.Tensor, tokens: tuple[int, int, int]) -> torch.Tensor:
    """[B, prefix + h * w, C] -> the patch tokens as a grid [B, C, h, w]."""
    prefix, h, w = tokens
    if output.ndim != 3 or output.shape[1] != prefix + h * w:
        raise InvalidArgument(
            f"expected tokens [batch, {prefix} + {h}x{w}, channels], got {list(output.shape)}", "target_layer"
        )
    return output[:, prefix:].transpose(1, 2).reshape(output.shape[0], output.shape[2], h, w)


@contextmanager
def trace_module_calls(
    model: nn.Module,
    enter: Callable[[str, nn.Module], None],
    leave: Callable[[str, nn.Module, Any], None],
) -> Iterator[None]:
    """Call enter(path, module) before and leave(path, module, output) after every module call
    of `model` (the root included, path ""), for the model probe at load time. All hooks are
    removed on exit; on a TorchScript module (no Python hooks) nothing is registered."""
    handles = []
    try:
        for path, sub in model.named_modules():
            if isinstance(sub, torch.jit.ScriptModule):
                continue
            handles.append(sub.register_forward_pre_hook(lambda m, _i, p=path: enter(p, m)))
            handles.append(sub.register_forward_hook(lambda m, _i, out, p=path: leave(p, m, out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


ATTENTION_FUNCTIONS = ("scaled_dot_product_attention", "multi_head_attention_forward")


def is_fused_attention(func: Callable) -> bool:
    """F.scaled_dot_product_attention, or nn.MultiheadAttention's functional core."""
    return getattr(func, "__name__", "") in ATTENTION_FUNCTIONS and getattr(func, "__module__", "") in (
        "torch.nn.functional", "torch._C._nn", None,
    )


def sdpa_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """The probabilities F.scaled_dot_product_attention applies, which it never materialises:
    softmax(q k^T * scale + mask) for q [B, heads, L, E], k [B, heads_k, S, E] -> [B, heads, L, S]
    (dropout ignored: eval mode)."""
    q, k = query.detach().float(), key.detach().float()
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: each key head serves several
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(dim=-1)


class _AttentionRecorder(TorchFunctionMode):
    """Records the attention probabilities of every fused attention call of this thread."""

    def __init__(self, captured: list[torch.Tensor]):
        super().__init__()
        self.captured = captured

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not is_fused_attention(func):
            return func(*args, **kwargs)
        if func.__name__ == "scaled_dot_product_attention":
            self.captured.append(sdpa_probabilities(*args, **kwargs))
            return func(*args, **kwargs)
        # nn.MultiheadAttention: its functional core returns per-head weights when asked (the
        # same softmax it applies); the caller gets what it asked for.
        call = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs).arguments
        wanted, average = call.get("need_weights", True), call.get("average_attn_weights", True)
        out, weights = func(**{**call, "need_weights": True, "average_attn_weights": False})
        self.captured.append(weights.detach().float())
        if not wanted:
            return out, None
        return out, weights.mean(dim=1) if average else weights


@contextmanager
def capture_fused_attention() -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives, per fused attention call made in this thread inside the
    context (F.scaled_dot_product_attention, nn.MultiheadAttention), its probabilities
    [B, heads, L, S], recomputed from the call's queries and keys. Nothing touches the model."""
    captured: list[torch.Tensor] = []
    with _AttentionRecorder(captured):
        yield captured


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
    rescale (DeepLIFT, Shrikumar et al. 2017): rows come in (input, reference) pairs;
        dx = dy * (y - y') / (x - x') for both rows of a pair, the plain derivative of each row
        where |x - x'| < RESCALE_EPS. The multiplier is computed in the forward (an in-place
        call overwrites x afterwards).
    x, y: any shape; the mask is taken from y (0 < y < upper iff 0 < x < upper).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float | None, rule: str) -> torch.Tensor:
        y = torch.relu(x) if upper is None else torch.clamp(x, 0.0, upper)
        ctx.rule, ctx.upper = rule, upper
        if rule == "guided":
            ctx.save_for_backward(y)
        elif rule == "rescale":
            ctx.save_for_backward(_rescale_multiplier(x, y, upper))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.rule == "rescale":
            (multiplier,) = ctx.saved_tensors
            return grad * multiplier, None, None
        positive = grad.clamp(min=0)
        if ctx.rule == "deconvnet":
            return positive, None, None
        (y,) = ctx.saved_tensors
        # autograd's own ReLU / hardtanh backward kernels, applied to relu(dy): they pass the
        # gradient where 0 < y (< upper), and y is inside that range exactly where x is.
        if ctx.upper is None:
            return torch.ops.aten.threshold_backward(positive, y, 0), None, None
        return torch.ops.aten.hardtanh_backward(positive, y, 0.0, ctx.upper), None, None


def _rescale_multiplier(x: torch.Tensor, y: torch.Tensor, upper: float | None) -> torch.Tensor:
    """DeepLIFT's rescale multiplier for rows paired as (input, reference): [N, ...] -> [N, ...]."""
    if x.dim() == 0 or x.shape[0] % 2:
        raise RuntimeError(f"the rescale rule needs (input, reference) row pairs; got {tuple(x.shape)}")
    pairs_x, pairs_y = x.detach().unflatten(0, (-1, 2)), y.detach().unflatten(0, (-1, 2))
    dx = pairs_x[:, 0] - pairs_x[:, 1]
    dy = pairs_y[:, 0] - pairs_y[:, 1]
    far = dx.abs() >= RESCALE_EPS
    ratio = torch.where(far, dy / torch.where(far, dx, 1.0), 0.0)
    derivative = (pairs_x > 0) if upper is None else (pairs_x > 0) & (pairs_x < upper)
    return torch.where(far[:, None], ratio[:, None], derivative.to(x.dtype)).flatten(0, 1)


def _max_pool_args(
    x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
) -> tuple:
    if return_indices:
        raise InvalidArgument("max_pool2d(return_indices=True) has no DeepLIFT rule here", "methods")
    return x, (kernel_size, stride, padding, dilation, ceil_mode)


class _RescaleMaxPool(torch.autograd.Function):
    """Max pooling under DeepLIFT's rescale rule (Captum's `maxpool`), rows paired (x, x').

    Each output's difference y - y' is split into the input's part max(y, y') - y' (routed to
    x's winner) and the reference's part y - max(y, y') (to x''s winner); a position's
    multiplier is the sum of what reached it over x - x' (the plain gradient where
    |x - x'| < RESCALE_EPS). Overlapping windows add up (Captum's unpool overwrites).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, geometry: tuple) -> torch.Tensor:
        kernel, stride, padding, dilation, ceil_mode = geometry
        y, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        if x.shape[0] % 2:
            raise RuntimeError(f"the rescale rule needs (input, reference) row pairs; got {tuple(x.shape)}")
        ctx.save_for_backward(x, y, indices)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, y, indices = ctx.saved_tensors

        def unpool(values: torch.Tensor) -> torch.Tensor:  # [N, C, h, w] -> [N, C, H, W], summed
            out = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], dtype=grad.dtype, device=grad.device)
            return out.scatter_add_(2, indices.flatten(2), values.flatten(2)).view(x.shape)

        pairs_y = y.unflatten(0, (-1, 2))
        top = torch.maximum(pairs_y[:, 0], pairs_y[:, 1])
        share = torch.stack([top - pairs_y[:, 1], pairs_y[:, 0] - top], 1).flatten(0, 1)
        reached = unpool(grad * share).unflatten(0, (-1, 2)).sum(1)  # [N/2, C, H, W]
        pairs_x = x.unflatten(0, (-1, 2))
        dx = pairs_x[:, 0] - pairs_x[:, 1]
        far = dx.abs() >= RESCALE_EPS
        rescaled = torch.where(far, reached / torch.where(far, dx, 1.0), 0.0)
        plain = unpool(grad).unflatten(0, (-1, 2))
        return torch.where(far[:, None], rescaled[:, None], plain).flatten(0, 1), None


class _BackwardRuleMode(TorchFunctionMode):
    """Routes rectifier calls of this thread through `_RuleActivation`; all else unchanged."""

    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d and self.rule == "rescale":
            return _RescaleMaxPool.apply(*_max_pool_args(*args, **kwargs))
        parsed = parse_rectifier(func, args, kwargs)
        if parsed is None:
            return func(*args, **kwargs)
        x, upper, inplace = parsed
        y = _RuleActivation.apply(x, upper, self.rule)
        # An in-place call must still leave its result in x: copy it in, so autograd routes
        # x's gradient through the rule node (x is never saved by it, so this is legal).
        return x.copy_(y) if inplace else y


@contextmanager
def backward_rule(rule: str | RelevanceRules) -> Iterator[None]:
    """Apply `rule` ("guided", "deconvnet", "rescale") to every ReLU / ReLU6 call made in this
    thread inside the context (forward time is what matters: the rule is recorded in the graph);
    a `RelevanceRules` makes every layer call propagate relevance (`relevance.relevance_mode`).

    Nothing is registered on any module and nothing is swapped: torch-function modes are
    thread-local, so a plain request running the same model object in another thread at the
    same moment gets plain gradients. Covers nn.ReLU / nn.ReLU6 modules and the functional
    F.relu / F.relu6 / F.hardtanh(x, 0, m) / torch.relu / Tensor.relu calls (and their in-place
    forms); a rectifier written another way (e.g. torch.clamp) keeps autograd's own rule.
    """
    if not is_backward_rule(rule):
        raise ValueError(f"unknown backward rule {rule!r}; known: {BACKWARD_RULES} or RelevanceRules")
    with relevance_mode(rule) if isinstance(rule, RelevanceRules) else _BackwardRuleMode(rule):
        yield
