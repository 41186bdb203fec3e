"""What a method needs from a model, as predicates over what the model probe found.

A method registers `supports=needs(INPUT_GRADIENT, CAM_LAYER, ...)` (a fast method that gives
none gets what its declared needs from the pass imply: registry.register); the predicate takes
the model's spec and returns None when the method can explain it, else why not. The answer comes
from the spec (its CAM layer, head and attention layers, which the probe filled in at load) and
the probe's profile (`models/probe.py`), so ListModels, `saliency models`, `saliency models
inspect` and request validation all give the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from saliency.instrument.propagation import GUIDED, LRP, RESCALE

if TYPE_CHECKING:
    from saliency.models import ModelSpec
    from saliency.models.probe import ModelProfile

Requirement = Callable[["ModelSpec"], "str | None"]


def _probed(spec: ModelSpec) -> tuple[ModelSpec, ModelProfile]:
    from saliency.models import profile_of

    return spec, profile_of(spec)


def input_gradient(spec: ModelSpec) -> str | None:
    """The logits have a finite, non-zero gradient with respect to the input."""
    return _probed(spec)[1].input_gradient


def cam_layer(spec: ModelSpec) -> str | None:
    """A CAM layer whose activations (and their gradient) can be captured."""
    spec, profile = _probed(spec)
    return None if spec.target_layer else f"it needs a CAM layer ({profile.cam_note})"


def cam_head(spec: ModelSpec) -> str | None:
    """A global-average-pool + Linear head on the CAM layer, verified numerically."""
    spec, profile = _probed(spec)
    return None if spec.classifier_layer else f"it needs a global-average-pool + linear head ({profile.head_note})"


def attention(spec: ModelSpec) -> str | None:
    """Attention probabilities over a class token and a patch grid, capturable per request."""
    spec, profile = _probed(spec)
    if spec.attention_layers or spec.fused_attention:
        return None
    return f"it reads a vision transformer's attention ({profile.attention_note})"


def rules(family: str, rectifier_rule: bool = False) -> Requirement:
    """Every call of the forward has a rule of `family` (propagation.FAMILIES); with
    `rectifier_rule`, the forward must also meet a ReLU / ReLU6 (else the rule changes nothing
    and the map would be a plain gradient under another name)."""

    def check(spec: ModelSpec) -> str | None:
        profile = _probed(spec)[1]
        gap = profile.rule_gap(family)
        if gap is not None:
            return gap
        if rectifier_rule and not profile.rectifiers:
            return "its rules modify ReLU / ReLU6 backward passes, and the forward calls none"
        return None

    check.__name__ = f"rules_{family}"
    return check


def needs(*requirements: Requirement) -> Requirement:
    """All of `requirements`: the first unmet one's reason."""

    def check(spec: ModelSpec) -> str | None:
        for requirement in requirements:
            reason = requirement(spec)
            if reason is not None:
                return reason
        return None

    return check


INPUT_GRADIENT = input_gradient
CAM_LAYER = cam_layer
CAM_HEAD = cam_head
ATTENTION = attention
RULES_GUIDED = rules(GUIDED, rectifier_rule=True)
RULES_RESCALE = rules(RESCALE)
RULES_LRP = rules(LRP)
