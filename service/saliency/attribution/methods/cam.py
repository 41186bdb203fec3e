"""CAM, the original class activation map (Zhou et al. 2016), computed in the fast pass.

For a network whose head is global average pooling of the CAM layer followed by one Linear,
logit_c = sum_k W[c, k] * mean_ij(A_k) + b_c, so M_c = sum_k W[c, k] * A_k is the class's
evidence per location: mean_ij(M_c) + b_c = logit_c exactly. It needs no gradient: the fast
pass's forward already captures A [B, K, h, w].

The map is kept signed (negative where a location argues against the class); Grad-CAM on such
a network is ReLU(M_c) / (h * w), since dS_c/dA_k = W[c, k] / (h * w) at every location.

Which models qualify is declared, then checked: the spec names the Linear
(`ModelSpec.classifier_layer`); it must be an nn.Linear taking K features, and on every call the
identity mean_ij(M_c) + b_c = logit_c must hold for every class (to float32 tolerance) — a head
with anything between the pooling and the Linear, or another pooling, fails it. Either failure
is an InvalidArgument naming "cam".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from saliency.attribution.fast_inputs import FastInputs
from saliency.attribution.methods.grad_cam import CamParams  # no parameters: the `cam` message
from saliency.attribution.reduce import upsample
from saliency.attribution.registry import CAM_ACTS, register
from saliency.attribution.requirements import CAM_HEAD, CAM_LAYER, needs
from saliency.errors import InvalidArgument, require
from saliency.instrument.hooks import resolve_layer
from saliency.models import LoadedModel


def classifier(model: LoadedModel) -> nn.Linear:
    """The model's final Linear, checked to be one; raises InvalidArgument("cam") otherwise."""
    spec = model.spec
    require(
        bool(spec.classifier_layer),
        "cam",
        f"model {spec.name} declares no global-average-pool + linear head (classifier_layer); "
        "use gradcam instead",
    )
    try:
        layer = resolve_layer(model.module, spec.classifier_layer)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{spec.name}'s classifier_layer: {exc}", "cam") from None
    require(
        isinstance(layer, nn.Linear),
        "cam",
        f"{spec.name}'s classifier_layer {spec.classifier_layer!r} is a "
        f"{type(layer).__name__}, not nn.Linear",
    )
    return layer


def class_activation_maps(
    layer: nn.Linear, acts: torch.Tensor, logits: torch.Tensor, targets: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """acts [B, K, h, w], logits [B, classes] -> per image b, maps [len(targets[b]), h, w].

    Raises InvalidArgument("cam") unless logits = GAP(acts) @ W^T + b, i.e. unless the CAM
    layer reaches `layer` through global average pooling alone.
    """
    weight = layer.weight.detach().float()
    require(
        acts.ndim == 4 and weight.shape[1] == acts.shape[1],
        "cam",
        f"the classifier takes {weight.shape[1]} features but the CAM layer has "
        f"{acts.shape[1] if acts.ndim == 4 else list(acts.shape)} channels",
    )
    acts = acts.detach().float()
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(len(weight))
    predicted = acts.mean(dim=(2, 3)) @ weight.T + bias.to(acts.device)
    observed = logits.detach().float()
    scale = float(observed.abs().max()) + 1.0
    if not torch.allclose(predicted, observed, rtol=1e-3, atol=1e-4 * scale):
        gap = float((predicted - observed).abs().max())
        raise InvalidArgument(
            f"the model's logits are not global-average-pool + linear of its CAM layer "
            f"(off by up to {gap:.3g}); CAM does not apply, use gradcam",
            "cam",
        )
    return [
        torch.einsum("tk,khw->thw", weight[list(classes)], acts[b])
        for b, classes in enumerate(targets)
    ]


def check_head(model: LoadedModel, params: CamParams) -> None:
    """Before the forward: the spec names a Linear classifier."""
    classifier(model)


@register(
    "cam",
    "fast",
    CamParams,
    "CAM (Zhou et al. 2016): classifier weights x activations; GAP + linear heads only",
    signed=True,
    supports=needs(CAM_LAYER, CAM_HEAD),
    enum="METHOD_CAM",
    oneof="cam",
    needs_from_pass=(CAM_ACTS,),
    check=check_head,
)
def cam(params: CamParams, inputs: FastInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """map [n, H, W] upsampled, raw [n, h, w]: each row's target class's activation map."""
    maps = class_activation_maps(classifier(inputs.model), inputs.acts, inputs.logits, [[t] for t in inputs.targets])
    raw = torch.cat(maps)
    return upsample(raw, inputs.size), raw
