"""CAM-layer maps from the prediction's own pass (fast methods): Grad-CAM and Grad-CAM++ from
the activations and their gradient for the target, Eigen-CAM from the activations alone
(class-agnostic). The formulas are in attribution/cams.py; maps are upsampled to the input's
size, the feature-resolution map [h, w] is kept as `raw`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saliency.attribution import cams
from saliency.attribution.fast_inputs import FastInputs
from saliency.attribution.reduce import upsample
from saliency.attribution.registry import CAM_ACTS, CAM_GRAD, register


@dataclass(frozen=True)
class CamParams:
    """No parameters (one API message, `cam`, serves every CAM method)."""


@register(
    "gradcam", "fast", CamParams, "Grad-CAM (Selvaraju et al. 2017)",
    enum="METHOD_GRADCAM", oneof="cam", needs_from_pass=(CAM_ACTS, CAM_GRAD),
)
def gradcam(params: CamParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    raw = cams.grad_cam(inputs.acts, inputs.cam_grad)
    return upsample(raw, inputs.size), raw


@register(
    "gradcam_pp", "fast", CamParams, "Grad-CAM++ (Chattopadhyay et al. 2018)",
    enum="METHOD_GRADCAM_PP", oneof="cam", needs_from_pass=(CAM_ACTS, CAM_GRAD),
)
def gradcam_pp(params: CamParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    raw = cams.grad_cam_pp(inputs.acts, inputs.cam_grad)
    return upsample(raw, inputs.size), raw


@register(
    "eigencam", "fast", CamParams, "Eigen-CAM, class-agnostic (Muhammad & Yeasin 2020)",
    enum="METHOD_EIGENCAM", oneof="cam", needs_from_pass=(CAM_ACTS,), class_agnostic=True,
)
def eigencam(params: CamParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    raw = cams.eigen_cam(inputs.acts)
    return upsample(raw, inputs.size), raw
