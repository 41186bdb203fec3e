"""Probe a model once, at load: one traced forward and one backward on a seeded input, and
what they show about the model, as data (`ModelProfile`).

Recorded during the forward (a thread-local torch-function mode plus module hooks that live
only for the probe, `hooks.trace_module_calls`):
- every module call and its output, in completion order (a container finishes after its
  children), and how often each module is called (reuse);
- every torch-function call that touches the input's data (tracked from the input through each
  call's outputs), with the module it was made in and the backward-rule families that handle
  it (`attribution.propagation.op_rules`);
- Conv2d -> BatchNorm2d pairs where the BatchNorm reads the conv's output and nothing else does
  (what serving may fold, `models/optimize.py`);
- fused attention calls (F.scaled_dot_product_attention, nn.MultiheadAttention).

Then the backward of the logits' sum tells which module outputs lie on the path to the logits.
From these facts:
- the CAM layer (`auto`): the last module output on that path that is a spatial map
  [B, C, h, w] with h, w > 1, or a vision transformer's patch tokens [B, prefix + h*w, C] (whose
  patch rows get a gradient: after the last block only the class token reaches the head);
  a module called several times can be the CAM layer only through its last call (captures keep
  the last output), so an earlier call is refused, naming the module;
- the CAM head (`auto`): a Linear whose logits are, numerically, global average pooling of the
  CAM layer followed by it;
- attention: fused calls (recomputed per request from their queries and keys), or modules whose
  output is attention probabilities [B, heads, N, N]; the number of tokens before the patch grid.
Which methods can explain the model is decided from this profile (`attribution/requirements.py`),
once, and that answer serves ListModels, `saliency models inspect` and request validation.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from saliency.errors import InvalidArgument
from saliency.instrument.hooks import is_fused_attention, trace_module_calls
from saliency.instrument.propagation import FAMILIES, op_name, op_rules
from saliency.instrument.rectifiers import parse_rectifier

PROBE_BATCH = 2
PROBE_SEED = 0
MAX_PREFIX_TOKENS = 16  # CLS + register / distillation tokens before the patch grid
KINDS = ("module", "torchscript", "exported")
KIND_NAMES = {"module": "a module", "torchscript": "a TorchScript module", "exported": "an exported program"}


@dataclass(frozen=True)
class OpUse:
    """A torch-function call on the input's data: which, where, and the rule families handling it."""

    op: str  # e.g. torch.nn.functional.gelu
    where: str  # e.g. blocks.3.act (torch.nn.GELU)
    rules: frozenset[str]


@dataclass(frozen=True)
class Candidate:
    """A module output that could serve as the CAM layer."""

    path: str
    shape: tuple[int, ...]  # of the probe's output (batch PROBE_BATCH)
    calls: int  # how often the module runs per forward
    note: str = ""  # why it cannot be used; "" when it can


@dataclass(frozen=True)
class ModelProfile:
    """What the probe found. Paths are dotted module paths; "" means none."""

    kind: str  # module | torchscript | exported
    num_classes: int
    input_gradient: str | None  # None when d logits / d input exists and is finite, else why not
    cam_layer: str
    cam_tokens: tuple[int, int, int] | None  # (prefix, h, w) when the CAM layer is tokens
    cam_note: str  # how the CAM layer was chosen, or why there is none
    cam_candidates: tuple[Candidate, ...]
    classifier: str  # the Linear of a GAP + Linear head
    head_note: str
    attention_layers: tuple[str, ...]  # modules whose output is attention probabilities
    fused_attention: int  # fused attention calls per forward (probabilities recomputed)
    prefix_tokens: int  # tokens before the patch grid in attention (CLS first)
    attention_note: str
    ops: tuple[OpUse, ...]
    rectifiers: int  # ReLU / ReLU6 calls met
    reused: tuple[tuple[str, int], ...]  # (module path, calls) for modules called more than once
    foldable: tuple[tuple[str, str], ...]  # (conv path, batchnorm path)
    seconds: float = 0.0
    parity: Any = field(default=None, compare=False)  # optimize.Parity, set by the loader

    @property
    def has_attention(self) -> bool:
        return bool(self.attention_layers or self.fused_attention) and self.prefix_tokens >= 1

    def rule_gap(self, family: str) -> str | None:
        """None when the backward rules of `family` (propagation.FAMILIES) cover every call of
        the forward, else why not (the first call no rule handles, and where it was made)."""
        if family not in FAMILIES:
            raise ValueError(f"unknown rule family {family!r}; known: {FAMILIES}")
        if self.kind == "torchscript":
            return "a TorchScript module runs in the TorchScript interpreter, where Python backward rules cannot reach its calls"
        if self.kind == "exported":
            return "an exported program calls ATen operators directly; the backward rules apply to torch.nn.functional calls"
        if not self.ops:
            return "the probe saw no torch function call on the input's data"
        for use in self.ops:
            if family not in use.rules:
                return f"no rule for {use.op} at {use.where}"
        return None


def probe_model(
    module: nn.Module,
    input_size: tuple[int, int],
    kind: str = "module",
    cam: str = "auto",
    classifier: str = "auto",
    attention: str | tuple[str, ...] = "auto",
    device: torch.device | str = "cpu",
    channels: int = 3,
) -> ModelProfile:
    """Probe `module` (eval mode, on `device`) with a seeded input [PROBE_BATCH, channels, H, W].

    cam / classifier: "auto", "none" or a dotted path; attention: "auto", "none" or paths.
    Raises InvalidArgument naming the config field ("model", "layers.cam", ...) for a model
    whose output is not [batch, classes] logits, or a named layer that does not qualify.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    started = time.perf_counter()
    h, w = input_size
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randn(PROBE_BATCH, channels, h, w, generator=generator).to(device).requires_grad_(True)
    trace = _Trace(module, x)
    try:
        with trace_module_calls(module, trace.enter, trace.leave), trace, torch.enable_grad():
            logits = module(x)
    except Exception as exc:
        raise InvalidArgument(
            f"the probe forward on a [{PROBE_BATCH}, {channels}, {h}, {w}] input failed: {type(exc).__name__}: {exc}", "model"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != PROBE_BATCH:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InvalidArgument(
            f"the model's output must be logits [batch, classes]; for a [{PROBE_BATCH}, {channels}, {h}, {w}] input it returned {got}",
            "model",
        )
    if not torch.isfinite(logits).all():
        raise InvalidArgument("the model's logits on the probe input are not finite", "model")

    grads = trace.gradients(logits)
    input_gradient = _input_gradient_reason(grads.get(id(x)))
    attention_found = _attention(trace, attention, kind)
    cam_found = _cam_layer(trace, grads, cam, kind, attention_found)
    head = _head(trace, logits, cam_found, classifier)
    calls = Counter(path for path, _ in trace.outputs)
    return ModelProfile(
        kind=kind,
        num_classes=int(logits.shape[1]),
        input_gradient=input_gradient,
        cam_layer=cam_found.path,
        cam_tokens=cam_found.tokens,
        cam_note=cam_found.note,
        cam_candidates=cam_found.candidates,
        classifier=head[0],
        head_note=head[1],
        attention_layers=attention_found.layers,
        fused_attention=attention_found.fused,
        prefix_tokens=attention_found.prefix,
        attention_note=attention_found.note,
        ops=tuple(OpUse(op, where, rules) for (op, where), rules in trace.ops.items()),
        rectifiers=trace.rectifiers,
        reused=tuple((p, n) for p, n in calls.items() if n > 1 and p),
        foldable=trace.foldable(),
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------ the trace


class _Trace(TorchFunctionMode):
    """Records module calls (through hooks) and input-dependent function calls (as a mode)."""

    def __init__(self, module: nn.Module, x: torch.Tensor):
        super().__init__()
        self.x = x
        self.dependent: set[int] = {id(x)}
        self.alive: list[torch.Tensor] = [x]  # keeps ids unique while the trace lives
        self.stack: list[tuple[str, nn.Module]] = []
        self.outputs: list[tuple[str, Any]] = []  # (module path, output) in completion order
        self.modules = dict(module.named_modules())
        self.ops: dict[tuple[str, str], frozenset[str]] = {}
        self.uses: Counter[int] = Counter()  # tensor id -> calls that read it
        self.conv_outputs: dict[int, str] = {}  # tensor id -> conv module path
        self.bn_inputs: list[tuple[int, str]] = []  # (input tensor id, batchnorm path)
        self.attention_calls: list[tuple[int, int, int]] = []  # (heads, queries, keys)
        self.rectifiers = 0

    def enter(self, path: str, module: nn.Module) -> None:
        self.stack.append((path, module))

    def leave(self, path: str, module: nn.Module, output: Any) -> None:
        if self.stack and self.stack[-1][0] == path:
            self.stack.pop()
        self.outputs.append((path, output))

    def where(self) -> str:
        if not self.stack:
            return "the model's forward"
        path, module = self.stack[-1]
        kind = _type_name(module)
        if next(module.children(), None) is None:
            return f"{path or '<root>'} ({kind})"
        return f"{path or '<root>'} ({kind}.forward)"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        dependent = [t for t in inputs if id(t) in self.dependent]
        if not dependent:
            return out
        results = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not results:
            return out  # sizes, dims, flags: nothing flows on
        for t in results:
            self.dependent.add(id(t))
            self.alive.append(t)
        for t in dependent:
            self.uses[id(t)] += 1
        key = (op_name(func), self.where())
        rules = op_rules(func, args, kwargs, len(dependent))
        self.ops[key] = self.ops.get(key, rules) & rules
        self._note_layers(func, args, kwargs, results)
        return out

    def _note_layers(self, func, args, kwargs, results) -> None:
        try:
            if parse_rectifier(func, tuple(args), dict(kwargs)) is not None:
                self.rectifiers += 1
        except TypeError:
            pass
        owner = self.stack[-1] if self.stack else ("", None)
        if func is F.conv2d and isinstance(owner[1], nn.Conv2d) and len(args) > 1 and args[1] is owner[1].weight:
            self.conv_outputs[id(results[0])] = owner[0]
        elif func is F.batch_norm and isinstance(owner[1], nn.BatchNorm2d) and args:
            self.bn_inputs.append((id(args[0]), owner[0]))
        elif is_fused_attention(func):
            self.attention_calls.append(_attention_shape(func, args, kwargs))

    def gradients(self, logits: torch.Tensor) -> dict[int, torch.Tensor | None]:
        """d sum(logits) / d t for the input and every module output tensor, by id."""
        wanted = {id(self.x): self.x}
        for _, out in self.outputs:
            if isinstance(out, torch.Tensor) and out.requires_grad and out.ndim in (3, 4):
                wanted.setdefault(id(out), out)
        if not logits.requires_grad:
            return dict.fromkeys(wanted)
        tensors = list(wanted.values())
        grads = torch.autograd.grad(logits.sum(), tensors, allow_unused=True)
        return {id(t): g for t, g in zip(tensors, grads)}

    def foldable(self) -> tuple[tuple[str, str], ...]:
        calls = Counter(path for path, _ in self.outputs)
        pairs = []
        for tensor_id, bn in self.bn_inputs:
            conv = self.conv_outputs.get(tensor_id)
            if conv is not None and self.uses[tensor_id] == 1 and calls[conv] == 1 and calls[bn] == 1:
                module = self.modules[bn]
                if module.track_running_stats and module.running_mean is not None:
                    pairs.append((conv, bn))
        return tuple(pairs)


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    if cls.__module__.startswith("torch.nn.modules"):
        return f"torch.nn.{cls.__name__}"
    if cls.__module__.startswith("saliency_user_models."):  # a model_file: its name, not our import key
        return f"{cls.__module__.split('.', 1)[1].rsplit('_', 1)[0]}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _attention_shape(func, args, kwargs) -> tuple[int, int, int]:
    """(heads, queries, keys) of a fused attention call."""
    import inspect

    if func.__name__ == "scaled_dot_product_attention":
        q, k = args[0] if args else kwargs["query"], args[1] if len(args) > 1 else kwargs["key"]
        heads = q.shape[-3] if q.ndim >= 3 else 1
        return int(heads), int(q.shape[-2]), int(k.shape[-2])
    call = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs).arguments
    return int(call["num_heads"]), int(call["query"].shape[0]), int(call["key"].shape[0])


def _input_gradient_reason(grad: torch.Tensor | None) -> str | None:
    if grad is None:
        return "the logits do not depend differentiably on the input (no gradient reaches it)"
    if not torch.isfinite(grad).all():
        return "the input gradient on the probe input is not finite"
    if not grad.abs().sum() > 0:
        return "the input gradient is zero everywhere on the probe input (does the forward detach or quantise its input?)"
    return None


# ------------------------------------------------------------------------------ attention


@dataclass(frozen=True)
class _Attention:
    layers: tuple[str, ...] = ()
    fused: int = 0
    prefix: int = 0
    tokens: int = 0
    heads: int = 0
    note: str = ""


def _is_probabilities(out: Any) -> bool:
    if not (isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] == out.shape[-2] and out.shape[-1] > 1):
        return False
    p = out.detach().float()
    return bool((p >= 0).all()) and bool(torch.allclose(p.sum(-1), torch.ones(()), atol=1e-3))


def _attention(trace: _Trace, request: str | tuple[str, ...], kind: str) -> _Attention:
    if request == "none":
        return _Attention(note="layers.attention: none")
    calls = Counter(path for path, _ in trace.outputs)
    if isinstance(request, tuple):
        for i, path in enumerate(request):
            field = f"layers.attention[{i}]"
            if path not in trace.modules:
                raise InvalidArgument(f"the model has no module {path!r}", field)
            outs = [out for p, out in trace.outputs if p == path]
            if len(outs) != 1 or not _is_probabilities(outs[0]):
                shape = list(outs[0].shape) if outs and isinstance(outs[0], torch.Tensor) else None
                raise InvalidArgument(
                    f"{path!r} ran {len(outs)} time(s) per forward with output {shape}; an attention layer runs "
                    "once and outputs probabilities [batch, heads, tokens, tokens] (rows summing to 1)",
                    field,
                )
        first = next(out for p, out in trace.outputs if p == request[0])
        return _with_prefix(trace, _Attention(layers=request, tokens=first.shape[-1], heads=first.shape[1]))
    if trace.attention_calls:
        shapes = set(trace.attention_calls)
        heads, queries, keys = trace.attention_calls[0]
        if len(shapes) > 1 or queries != keys:
            return _Attention(note=f"fused attention calls of differing shapes {sorted(shapes)} (heads, queries, keys): "
                                   "attention maps need self-attention over one token sequence")
        return _with_prefix(trace, _Attention(fused=len(trace.attention_calls), tokens=queries, heads=heads))
    if kind != "module":
        return _Attention(note=f"{KIND_NAMES[kind]} shows no attention call or module to the probe")
    layers = tuple(p for p, out in trace.outputs if p and calls[p] == 1 and _is_probabilities(out))
    if layers:
        first = next(out for p, out in trace.outputs if p == layers[0])
        return _with_prefix(trace, _Attention(layers=layers, tokens=first.shape[-1], heads=first.shape[1]))
    return _Attention(note="no attention: no F.scaled_dot_product_attention or nn.MultiheadAttention call, and no "
                           "module whose output is attention probabilities [batch, heads, tokens, tokens]")


def _with_prefix(trace: _Trace, found: _Attention) -> _Attention:
    """Set how many tokens precede the patch grid, from the patch embedding's grid."""
    n = found.tokens
    for _, out in trace.outputs:
        if _is_spatial(out) and not _looks_like_heads(out, found) and 0 <= n - out.shape[2] * out.shape[3] <= MAX_PREFIX_TOKENS:
            prefix = n - out.shape[2] * out.shape[3]
            grid = f"{out.shape[2]}x{out.shape[3]}"
            how = f"{found.fused} fused call(s)" if found.fused else f"{len(found.layers)} module(s)"
            if prefix == 0:
                return _Attention(note=f"attention over {n} tokens = a {grid} patch grid with no class token: "
                                       "attention maps read the class token's row")
            return _Attention(found.layers, found.fused, prefix, n, found.heads,
                              f"{how}, {found.heads} heads, {n} tokens = {prefix} before a {grid} patch grid")
    return _Attention(note=f"attention over {n} tokens, but no spatial map [batch, channels, h, w] with h*w within "
                           f"{MAX_PREFIX_TOKENS} of {n} (the patch embedding) shows where the patch grid is")


def _is_spatial(out: Any) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[0] == PROBE_BATCH and out.shape[2] > 1 and out.shape[3] > 1


def _looks_like_heads(out: torch.Tensor, found: _Attention) -> bool:
    """[B, heads, tokens, d] (queries, keys, probabilities) is not a spatial map."""
    return bool(found.tokens) and out.shape[1] == found.heads and out.shape[2] == found.tokens


# ------------------------------------------------------------------------------ CAM layer


@dataclass(frozen=True)
class _Cam:
    path: str = ""
    tokens: tuple[int, int, int] | None = None
    note: str = ""
    candidates: tuple[Candidate, ...] = ()
    output: torch.Tensor | None = None


def _cam_layer(trace: _Trace, grads: dict, request: str, kind: str, attention: _Attention) -> _Cam:
    calls = Counter(path for path, _ in trace.outputs)
    last_call = {path: i for i, (path, _) in enumerate(trace.outputs)}
    grids = [out for _, out in trace.outputs if _is_spatial(out) and not _looks_like_heads(out, attention)]
    candidates: list[tuple[int, Candidate, tuple[int, int, int] | None]] = []
    for i, (path, out) in enumerate(trace.outputs):
        if not path or not isinstance(out, torch.Tensor):
            continue
        tokens = None
        if _is_spatial(out) and not _looks_like_heads(out, attention):
            grad = grads.get(id(out))
            on_path = grad is not None and bool(grad.abs().sum() > 0)
        elif out.ndim == 3 and out.shape[0] == PROBE_BATCH:
            tokens = _token_layout(out, grids)
            if tokens is None:
                continue
            grad = grads.get(id(out))
            on_path = grad is not None and bool(grad[:, tokens[0]:].abs().sum() > 0)
        else:
            continue
        note = ""
        if not on_path:
            note = "not on the path to the logits (no gradient reaches it)" if tokens is None else \
                "its patch tokens do not reach the logits (no gradient)"
        elif i != last_call[path]:
            note = f"called {calls[path]} times per forward; only its last call can be captured, and that one is not this map"
        elif tokens is not None and calls[path] > 1:
            note = f"called {calls[path]} times per forward: a token layer must run once"
        candidates.append((i, Candidate(path, tuple(out.shape), calls[path], note), tokens))

    listed = tuple(c for _, c, _ in candidates)
    if request == "none":
        return _Cam(note="layers.cam: none", candidates=listed)
    if kind != "module":
        return _Cam(note=f"{KIND_NAMES[kind]} has no submodules whose outputs can be captured", candidates=listed)
    if request != "auto":
        if request not in trace.modules:
            usable = [c.path for c in listed if not c.note]
            raise InvalidArgument(f"the model has no module {request!r}; usable CAM layers: {usable[-5:] or 'none'}",
                                  "layers.cam")
        mine = [(i, c, t) for i, c, t in candidates if c.path == request and i == last_call[request]]
        if not mine:
            out = next((o for p, o in reversed(trace.outputs) if p == request), None)
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidArgument(
                f"{request!r} outputs {shape if calls[request] else 'nothing (it is never called)'}; a CAM layer "
                "outputs a spatial map [batch, channels, h, w] with h, w > 1 (or patch tokens) on the path to the logits",
                "layers.cam",
            )
        i, chosen, tokens = mine[0]
        if chosen.note:
            raise InvalidArgument(f"{request!r} cannot be the CAM layer: {chosen.note}", "layers.cam")
        return _Cam(request, tokens, "layers.cam names it", listed, trace.outputs[i][1])
    for i, chosen, tokens in reversed(candidates):
        if not chosen.note:
            how = "the last module output on the path to the logits that is "
            how += f"a patch-token grid {tokens[1]}x{tokens[2]} after {tokens[0]} token(s)" if tokens else "a spatial map"
            if chosen.calls > 1:
                how += f" (the module runs {chosen.calls} times per forward; its last call is captured)"
            return _Cam(chosen.path, tokens, how, listed, trace.outputs[i][1])
    return _Cam(note="no module outputs a spatial map [batch, channels, h, w] with h, w > 1 on the path to the logits",
                candidates=listed)


def _token_layout(out: torch.Tensor, grids: list[torch.Tensor]) -> tuple[int, int, int] | None:
    """(prefix, h, w) when `out` [B, N, C] is prefix tokens then an h x w grid seen earlier as a
    spatial map with C channels (the patch embedding), else None."""
    n, c = out.shape[1], out.shape[2]
    for grid in grids:
        prefix = n - grid.shape[2] * grid.shape[3]
        if grid.shape[1] == c and 0 <= prefix <= MAX_PREFIX_TOKENS:
            return prefix, int(grid.shape[2]), int(grid.shape[3])
    return None


# ------------------------------------------------------------------------------ CAM head


def _head(trace: _Trace, logits: torch.Tensor, cam: _Cam, request: str) -> tuple[str, str]:
    """(classifier path or "", how it was verified or why there is none)."""
    if request == "none":
        return "", "layers.classifier: none"
    if not cam.path or cam.output is None:
        if request != "auto":
            raise InvalidArgument("a CAM head needs a CAM layer, and there is none (see layers.cam)", "layers.classifier")
        return "", "CAM needs a CAM layer, and there is none"
    if cam.tokens is not None:
        if request != "auto":
            raise InvalidArgument("the CAM layer is patch tokens; CAM needs global average pooling of a spatial map",
                                  "layers.classifier")
        return "", "the CAM layer is patch tokens, not a spatial map a GAP + Linear head reads"
    acts = cam.output.detach().float()
    pooled = acts.mean(dim=(2, 3))
    observed = logits.detach().float()
    names = [request] if request != "auto" else [p for p, m in trace.modules.items() if isinstance(m, nn.Linear)]
    if request != "auto" and request not in trace.modules:
        raise InvalidArgument(f"the model has no module {request!r}", "layers.classifier")
    worst = math.inf
    for path in reversed(names):
        layer = trace.modules[path]
        if not isinstance(layer, nn.Linear):
            raise InvalidArgument(f"{path!r} is a {_type_name(layer)}, not torch.nn.Linear", "layers.classifier")
        if layer.in_features != acts.shape[1] or layer.out_features != observed.shape[1]:
            if request != "auto":
                raise InvalidArgument(
                    f"{path!r} maps {layer.in_features} -> {layer.out_features} features; the CAM layer "
                    f"{cam.path!r} has {acts.shape[1]} channels and the model {observed.shape[1]} classes",
                    "layers.classifier",
                )
            continue
        bias = layer.bias.detach().float() if layer.bias is not None else 0.0
        predicted = pooled @ layer.weight.detach().float().T + bias
        scale = float(observed.abs().max()) + 1.0
        gap = float((predicted - observed).abs().max())
        if torch.allclose(predicted, observed, rtol=1e-3, atol=1e-4 * scale):
            return path, f"logits = {path}(global average of {cam.path}), checked numerically (off by {gap:.2g})"
        worst = min(worst, gap)
        if request != "auto":
            raise InvalidArgument(
                f"the logits are not {path}(global average of {cam.path}) (off by up to {gap:.3g}): CAM does not apply",
                "layers.classifier",
            )
    if math.isinf(worst):
        return "", f"no Linear takes the {acts.shape[1]} channels of {cam.path} to the {observed.shape[1]} classes"
    return "", f"no Linear gives the logits from the global average of {cam.path} (closest off by {worst:.3g})"
