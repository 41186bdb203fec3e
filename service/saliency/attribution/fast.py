"""The fast pass: prediction and every cheap map from ONE forward and one backward per target.

For k targets the forward runs once and the backward k times over the retained graph (faster
on the CPU than a k-replicated batch or `is_grads_batched`: docs/engine.md). Gradients come from `torch.autograd.grad` with respect to the
input and the CAM layer only, so no parameter gradient is computed or written.
Vision transformers' attention maps (methods/attention.py) come from the same forward: each
block's attention probabilities are captured, for this thread only, when one is requested.
A CAM layer that is a transformer's tokens is read as its patch grid (`ModelSpec.cam_tokens`).

The pass knows no method by name: each fast method declares what it needs (registry.PASS_NEEDS:
the input gradient, the CAM layer's activations and their gradient, attention), the pass
captures the union once and calls each method's pure compute function (attribution/fast_inputs.py)
per target round, or once per image for class-agnostic methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from saliency.attribution.fast_inputs import FastInputs
from saliency.attribution.methods.attention import capture as capture_attention
from saliency.attribution.registry import (
    ATTENTION_PROBS,
    CAM_ACTS,
    CAM_GRAD,
    INPUT_GRAD,
    MethodInfo,
    get_method,
)
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.errors import require
from saliency.instrument.hooks import capture_output
from saliency.models import LoadedModel
from saliency.wire.types import top_classes


@dataclass
class FastResult:
    """The prediction and fast maps for one image of the batch."""

    logits: torch.Tensor  # [num_classes]
    predictions: list[Prediction]  # best first
    targets: tuple[int, ...]
    attributions: list[Attribution]


def fast_pass(
    model: LoadedModel,
    inputs: torch.Tensor,
    targets: Sequence[Targets],
    methods: Mapping[str, Any],
    n_predictions: int = 5,
) -> list[FastResult]:
    """inputs [B, 3, H, W] (normalised), one Targets per image, {fast method name: params}.

    Returns one FastResult per image, its maps method by method in request order, each
    method's targets in the image's order. Images in one batch may ask for different targets.
    What is captured and differentiated is the union of what the methods declare they need.
    """
    require(len(targets) == inputs.shape[0], "targets", "need one Targets per image")
    infos = {name: get_method(name) for name in methods}
    for name, info in infos.items():
        require(info.kind == "fast", "methods", f"{name} is not a fast method")
    for name, info in infos.items():  # before any work: e.g. a missing head or layer
        if info.check is not None:
            info.check(model, methods[name])
    needs = frozenset().union(*(info.needs for info in infos.values()))
    spec, module = model.spec, model.module
    need_input_grad = INPUT_GRAD in needs
    need_cam_grad = CAM_GRAD in needs
    need_acts = need_cam_grad or CAM_ACTS in needs
    need_backward = need_input_grad or need_cam_grad

    x = inputs.detach().to(model.device, torch.float32)
    if model.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(need_input_grad)
    capture = capture_output(module, spec.target_layer, spec.cam_tokens) if need_acts else nullcontext([])
    with ExitStack() as stack:
        captured = stack.enter_context(capture)
        # Attention probabilities are captured only when a method needs them.
        attention_probs = stack.enter_context(capture_attention(model, x.shape[0], ATTENTION_PROBS in needs))
        stack.enter_context(torch.enable_grad() if need_backward else torch.inference_mode())
        logits = module(x)
    acts = captured[-1] if need_acts else None
    attns = attention_probs()

    per_image_targets = [t.resolve(row) for t, row in zip(targets, logits.detach())]
    results = [
        FastResult(row, _top_predictions(row, spec.labels, n_predictions), tg, [])
        for row, tg in zip(logits.detach(), per_image_targets)
    ]
    if not methods:
        return _on_host(results)
    # maps[name][b]: image b's Attributions of method `name`, in target order
    maps: dict[str, list[list[Attribution]]] = {name: [[] for _ in results] for name in methods}
    x_seen = x.detach()
    acts_seen = acts.detach() if acts is not None else None

    def inputs_for(rows: list[int], classes: list[int], input_grad=None, cam_grad=None) -> FastInputs:
        index = rows if len(rows) < len(results) else slice(None)
        return FastInputs(
            model, x_seen[index], logits.detach()[index], tuple(classes),
            input_grad=input_grad,
            acts=acts_seen[index] if acts_seen is not None else None,
            cam_grad=cam_grad,
            attention=[a[index] for a in attns],
        )

    every = list(range(len(results)))
    for name, info in infos.items():
        if info.class_agnostic:  # one map per image, delivered for each of its targets
            mapped, raw = _computed(info, methods[name], inputs_for(every, [tg[0] for tg in per_image_targets]))
            for b, tg in enumerate(per_image_targets):
                maps[name][b] = [_attribution(name, t, mapped, raw, b, len(every)) for t in tg]

    per_target = {n: i for n, i in infos.items() if not i.class_agnostic}
    wrt = ([x] if need_input_grad else []) + ([acts] if need_cam_grad else [])
    k_max = max(len(t) for t in per_image_targets)
    for j in range(k_max if per_target else 0):
        rows = [b for b, tg in enumerate(per_image_targets) if len(tg) > j]
        classes = [per_image_targets[b][j] for b in rows]
        input_grad = cam_grad = None
        if need_backward:
            score = logits[rows, torch.tensor(classes, device=logits.device)].sum()
            # images are independent: one sum, per-image gradients
            grads = list(torch.autograd.grad(score, wrt, retain_graph=j < k_max - 1))
            index = rows if len(rows) < len(results) else slice(None)
            input_grad = grads.pop(0)[index] if need_input_grad else None
            cam_grad = grads.pop(0)[index] if need_cam_grad else None
        round_inputs = inputs_for(rows, classes, input_grad, cam_grad)
        for name, info in per_target.items():
            mapped, raw = _computed(info, methods[name], round_inputs)
            for i, b in enumerate(rows):
                maps[name][b].append(_attribution(name, classes[i], mapped, raw, i, len(rows)))
    for b, result in enumerate(results):
        for name in methods:
            result.attributions.extend(maps[name][b])
    return _on_host(results)


def _computed(info: MethodInfo, params: Any, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    mapped, raw = info.compute(params, inputs)
    n = len(inputs.targets)
    require(
        mapped.ndim == 3 and mapped.shape[0] == n and tuple(mapped.shape[1:]) == inputs.size,
        info.name,
        f"its compute function returned a map of shape {list(mapped.shape)}, not [{n}, *{list(inputs.size)}]",
    )
    return mapped, raw


def _attribution(name: str, target: int, mapped: torch.Tensor, raw: torch.Tensor | None, i: int, n: int) -> Attribution:
    """Row i of a method's maps [n, H, W] (and raw [n, ...]); a copy when the rows share storage
    with other images', so one request's result never holds another's memory."""
    one, fine = mapped[i], raw[i] if raw is not None else None
    if n > 1:
        one, fine = one.clone(), fine.clone() if fine is not None else None
    return Attribution(name, target, one, fine)


def _on_host(results: list[FastResult]) -> list[FastResult]:
    """Maps and logits on the CPU whatever the model's device, as the deep methods deliver them."""
    for result in results:
        result.logits = result.logits.cpu()
        for a in result.attributions:
            a.map = a.map.cpu()
            a.raw = a.raw.cpu() if a.raw is not None else None
    return results


def _top_predictions(logits: torch.Tensor, labels: Sequence[str], n: int) -> list[Prediction]:
    """The n best classes, ranked as top_k targets are (by logit: top_classes)."""
    probs = logits.float().softmax(-1)
    return [Prediction(c, labels[c], float(logits[c]), float(probs[c])) for c in top_classes(logits, n)]
