"""Modified-backpropagation maps: guided backpropagation, deconvnet and Guided Grad-CAM.

- Guided backpropagation (Springenberg et al. 2015): the input gradient with every ReLU's
  backward replaced by dx = relu(dy) * [0 < x]; for ReLU6 (EfficientNet-Lite) by
  dx = relu(dy) * [0 < x < 6] — the gradient passes only where the forward passed its input
  through unchanged, and only where it is positive.
- Deconvnet (Zeiler & Fergus 2014): dx = relu(dy) whatever the forward input was (ReLU and
  ReLU6 alike: the clip at 6 is a forward-only property the deconvnet ignores).
- Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times Grad-CAM upsampled to
  the input (bilinear by default, as the paper; Captum's GuidedGradCam defaults to nearest).

Each map is one gradient sample run on the executor under its `backward_rule`: the executor
never puts samples of different rules in one chunk and applies the rule only to that chunk's
own autograd graph (`hooks.backward_rule`, thread-local, nothing attached to the model). Guided
Grad-CAM's Grad-CAM half is a plain gradient sample that captures the CAM layer, so it packs
with IG / SmoothGrad work. Maps: raw is the signed per-channel attribution [C, H, W]; map is
its channel reduction (default: max of magnitudes, as the vanilla gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from saliency.attribution import cams
from saliency.attribution.executor import ChunkOutput, DeepPlan, SampleStream
from saliency.attribution.methods.score_cam import cam_channels, cam_layer_bytes
from saliency.attribution.reduce import CHANNEL_REDUCTIONS, reduce_channels, upsample
from saliency.attribution.registry import register
from saliency.attribution.requirements import CAM_LAYER, INPUT_GRADIENT, RULES_GUIDED, needs
from saliency.attribution.types import Attribution
from saliency.models import LoadedModel

INTERPOLATIONS = ("bilinear", "nearest")


@dataclass(frozen=True)
class GuidedBackpropParams:
    method: ClassVar[str] = "guided_backprop"
    reduction: str = field(default="max", metadata={"choices": CHANNEL_REDUCTIONS})


@dataclass(frozen=True)
class DeconvnetParams(GuidedBackpropParams):
    method: ClassVar[str] = "deconvnet"


@dataclass(frozen=True)
class GuidedGradCamParams(GuidedBackpropParams):
    method: ClassVar[str] = "guided_gradcam"
    # how Grad-CAM [h, w] is brought to the input's size before the product
    interpolation: str = field(default="bilinear", metadata={"choices": INTERPOLATIONS})


def _one_gradient(x: torch.Tensor, rule: str | None, capture_layer: bool = False) -> tuple[SampleStream, dict]:
    """A one-sample gradient stream on x [C, H, W]; its outputs land in the returned dict."""
    outputs: dict[str, torch.Tensor] = {}

    def the_input(start: int, stop: int) -> torch.Tensor:
        return x[None]

    def keep(start: int, out: ChunkOutput) -> None:
        outputs["grad"] = out.grads[0].detach().float().cpu()
        if capture_layer:
            outputs["layer"] = out.layer[0].detach().float().cpu()
            outputs["layer_grad"] = out.layer_grads[0].detach().float().cpu()

    stream = SampleStream(
        1, True, the_input, keep, backward_rule=rule, capture_layer=capture_layer, sample_shape=tuple(x.shape)
    )
    return stream, outputs


def _plan_rule(name: str, rule: str):
    def plan(model: LoadedModel, x: torch.Tensor, target: int, params: GuidedBackpropParams) -> DeepPlan:
        """x [C, H, W] normalised -> map [H, W] = reduction of the rule's input gradient."""
        stream, outputs = _one_gradient(x.detach().float().cpu(), rule)

        def finish() -> Attribution:
            g = outputs["grad"]
            return Attribution(name, target, reduce_channels(g, params.reduction), g)

        return DeepPlan(name, target, [stream], finish, held_bytes=4 * x.numel())  # the gradient [C, H, W]

    plan.__name__ = plan.__qualname__ = f"plan_{name}"
    return plan


plan_guided_backprop = register(
    "guided_backprop",
    "deep",
    GuidedBackpropParams,
    "guided backpropagation (Springenberg et al. 2015); ReLU and ReLU6",
    supports=needs(INPUT_GRADIENT, RULES_GUIDED),
    enum="METHOD_GUIDED_BACKPROP",
    oneof="guided_backprop",
    fallback="vanilla",
    samples=lambda p: 1,
)(_plan_rule("guided_backprop", "guided"))

plan_deconvnet = register(
    "deconvnet",
    "deep",
    DeconvnetParams,
    "deconvnet backward (Zeiler & Fergus 2014); ReLU and ReLU6",
    supports=needs(INPUT_GRADIENT, RULES_GUIDED),
    enum="METHOD_DECONVNET",
    oneof="guided_backprop",
    fallback="vanilla",
    samples=lambda p: 1,
)(_plan_rule("deconvnet", "deconvnet"))


@register(
    "guided_gradcam",
    "deep",
    GuidedGradCamParams,
    "Guided Grad-CAM: guided backpropagation x upsampled Grad-CAM (Selvaraju et al. 2017)",
    supports=needs(CAM_LAYER, INPUT_GRADIENT, RULES_GUIDED),
    enum="METHOD_GUIDED_GRADCAM",
    oneof="guided_gradcam",
    fallback="gradcam",
    samples=lambda p: 2,  # the guided gradient, and the plain one at the CAM layer
)
def plan_guided_gradcam(
    model: LoadedModel, x: torch.Tensor, target: int, params: GuidedGradCamParams
) -> DeepPlan:
    """x [C, H, W] normalised -> raw [C, H, W] = guided gradient * Grad-CAM at [H, W]."""
    x = x.detach().float().cpu()
    plain, cam_half = _one_gradient(x, None, capture_layer=True)
    guided, guided_half = _one_gradient(x, "guided")
    size = tuple(x.shape[-2:])

    def finish() -> Attribution:
        cam = cams.grad_cam(cam_half["layer"][None], cam_half["layer_grad"][None])[0]  # [h, w]
        if params.interpolation == "nearest":
            cam_up = F.interpolate(cam[None, None], size=size, mode="nearest")[0, 0]
        else:
            cam_up = upsample(cam, size)
        attr = guided_half["grad"] * cam_up
        return Attribution(
            "guided_gradcam", target, reduce_channels(attr, params.reduction), attr
        )

    # both gradients and attr [C, H, W]; the CAM layer's activations and their gradient (K
    # taken as 1024 when the spec declares no CAM classifier to read it from)
    channels = cam_channels(model) or 1024
    held = 3 * x.nbytes + 2 * cam_layer_bytes(channels, *size)
    return DeepPlan("guided_gradcam", target, [plain, guided], finish, held_bytes=held)
