"""The fast pass: prediction and every cheap map from ONE forward and one backward per target.

For k targets the forward runs once and the backward k times over the retained graph
(measured on EfficientNet-Lite0, CPU, k=3: 57 ms, against 72 ms for a k-replicated batch and
73 ms for `is_grads_batched`). Gradients come from `torch.autograd.grad` with respect to the
input and the CAM layer only, so no parameter gradient is computed or written.
Vision transformers' attention maps (methods/attention.py) come from the same forward: each
block's attention probabilities are captured, for this thread only, when one is requested.
A CAM layer that is a transformer's tokens is read as its patch grid (`ModelSpec.cam_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from saliency.attribution import cams
from saliency.attribution.hooks import capture_output
from saliency.attribution.limits import Limits
from saliency.attribution.methods import attention, cam
from saliency.attribution.reduce import CHANNEL_REDUCTIONS, reduce_channels, upsample
from saliency.attribution.registry import get_method, register
from saliency.attribution.requirements import CAM_LAYER, INPUT_GRADIENT
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.errors import require
from saliency.models import LoadedModel


@dataclass(frozen=True)
class GradientParams:
    """Channel reduction of the per-channel map: max |g| (Simonyan et al.), sum, or l2."""

    reduction: str = field(default="max", metadata={"choices": CHANNEL_REDUCTIONS})

    def validate(self, limits: Limits) -> None:
        require(
            self.reduction in CHANNEL_REDUCTIONS,
            "reduction",
            f"{self.reduction!r} is not one of {CHANNEL_REDUCTIONS}",
        )


@dataclass(frozen=True)
class InputXGradientParams(GradientParams):
    reduction: str = field(default="sum", metadata={"choices": CHANNEL_REDUCTIONS})


@dataclass(frozen=True)
class CamParams:
    def validate(self, limits: Limits) -> None:
        pass


register("vanilla", "fast", GradientParams, "vanilla gradient |dS/dx| (Simonyan et al. 2014)",
         supports=INPUT_GRADIENT)(None)
register("input_x_gradient", "fast", InputXGradientParams, "input x gradient", signed=True,
         supports=INPUT_GRADIENT)(None)
register("gradcam", "fast", CamParams, "Grad-CAM (Selvaraju et al. 2017)", supports=CAM_LAYER)(None)
register("gradcam_pp", "fast", CamParams, "Grad-CAM++ (Chattopadhyay et al. 2018)", supports=CAM_LAYER)(None)
register("eigencam", "fast", CamParams, "Eigen-CAM, class-agnostic (Muhammad & Yeasin 2020)",
         supports=CAM_LAYER)(None)

_INPUT_GRAD_METHODS = {"vanilla", "input_x_gradient"}
_CAM_GRAD_METHODS = {"gradcam", "gradcam_pp"}


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
    """inputs [B, 3, H, W] (normalised), one Targets per image, {method name: params}.

    Returns one FastResult per image. Images in one batch may ask for different targets.
    """
    require(len(targets) == inputs.shape[0], "targets", "need one Targets per image")
    for name in methods:
        require(get_method(name).kind == "fast", "methods", f"{name} is not a fast method")
    spec, module = model.spec, model.module
    need_input_grad = bool(_INPUT_GRAD_METHODS & methods.keys())
    need_cam_grad = bool(_CAM_GRAD_METHODS & methods.keys())
    need_acts = need_cam_grad or "eigencam" in methods or "cam" in methods
    cam_classifier = cam.classifier(model) if "cam" in methods else None  # checked before the forward
    need_backward = need_input_grad or need_cam_grad

    x = inputs.detach().to(model.device, torch.float32)
    if model.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(need_input_grad)
    capture = capture_output(module, spec.target_layer, spec.cam_tokens) if need_acts else nullcontext([])
    with ExitStack() as stack:
        captured = stack.enter_context(capture)
        # Attention probabilities are captured only when an attention map is asked for.
        attention_probs = stack.enter_context(attention.capture(model, methods, x.shape[0]))
        stack.enter_context(torch.enable_grad() if need_backward else torch.inference_mode())
        logits = module(x)
    acts = captured[-1] if need_acts else None
    attns = attention_probs()

    per_image_targets = [t.resolve(row) for t, row in zip(targets, logits.detach())]
    results = [
        FastResult(row, _top_predictions(row, spec.labels, n_predictions), tg, [])
        for row, tg in zip(logits.detach(), per_image_targets)
    ]
    size = tuple(x.shape[-2:])
    if "eigencam" in methods:
        eigen_raw = cams.eigen_cam(acts.detach())
        eigen_up = upsample(eigen_raw, size)
        for b, result in enumerate(results):
            for target in result.targets:
                result.attributions.append(
                    Attribution("eigencam", target, eigen_up[b], eigen_raw[b])
                )
    if attns:
        per_image = attention.attention_attributions(methods, attns, per_image_targets, size, spec.prefix_tokens)
        for result, maps in zip(results, per_image):
            result.attributions.extend(maps)
    if cam_classifier is not None:
        per_image = cam.cam_attributions(cam_classifier, acts, logits, per_image_targets, size)
        for result, maps in zip(results, per_image):
            result.attributions.extend(maps)
    if not need_backward:
        return _on_host(results)

    wrt = ([x] if need_input_grad else []) + ([acts] if need_cam_grad else [])
    k_max = max(len(t) for t in per_image_targets)
    for j in range(k_max):
        rows = [b for b, tg in enumerate(per_image_targets) if len(tg) > j]
        classes = torch.tensor([per_image_targets[b][j] for b in rows], device=logits.device)
        score = logits[rows, classes].sum()  # images are independent: one sum, per-image grads
        grads = list(torch.autograd.grad(score, wrt, retain_graph=j < k_max - 1))
        input_grad = grads.pop(0) if need_input_grad else None
        cam_grad = grads.pop(0) if need_cam_grad else None
        cam_maps = _cam_maps(methods, acts, cam_grad, rows)
        for i, b in enumerate(rows):
            target = per_image_targets[b][j]
            out = results[b].attributions
            if input_grad is not None:
                g = input_grad[b].detach().contiguous()
                if "vanilla" in methods:
                    magnitude = g.abs()
                    red = methods["vanilla"].reduction
                    out.append(Attribution("vanilla", target, reduce_channels(magnitude, red), magnitude))
                if "input_x_gradient" in methods:
                    ixg = x[b].detach().contiguous() * g
                    red = methods["input_x_gradient"].reduction
                    out.append(Attribution("input_x_gradient", target, reduce_channels(ixg, red), ixg))
            for name, raw in cam_maps.items():
                out.append(Attribution(name, target, upsample(raw[i], size), raw[i]))
    return _on_host(results)


def _on_host(results: list[FastResult]) -> list[FastResult]:
    """Maps and logits on the CPU whatever the model's device, as the deep methods deliver them."""
    for result in results:
        result.logits = result.logits.cpu()
        for a in result.attributions:
            a.map = a.map.cpu()
            a.raw = a.raw.cpu() if a.raw is not None else None
    return results


def _cam_maps(methods, acts, cam_grad, rows) -> dict[str, torch.Tensor]:
    if cam_grad is None:
        return {}
    a, g = acts.detach()[rows], cam_grad[rows]
    maps = {}
    if "gradcam" in methods:
        maps["gradcam"] = cams.grad_cam(a, g)
    if "gradcam_pp" in methods:
        maps["gradcam_pp"] = cams.grad_cam_pp(a, g)
    return maps


def _top_predictions(logits: torch.Tensor, labels: Sequence[str], n: int) -> list[Prediction]:
    probs = logits.float().softmax(-1)
    top = probs.topk(min(n, logits.shape[-1]))
    return [
        Prediction(int(c), labels[int(c)], float(logits[c]), float(p))
        for p, c in zip(top.values, top.indices)
    ]
