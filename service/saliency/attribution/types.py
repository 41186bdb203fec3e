"""Value types shared by the fast pass and the deep methods.

`Targets` and `Prediction` are the API's own (`saliency.wire.types`, no torch), so the engine,
the servers and the client use one class each; `Attribution` holds torch maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.wire.types import Prediction, Targets

__all__ = ["Attribution", "Prediction", "Targets"]  # the API's value types, shared with the client


@dataclass
class Attribution:
    """One map: `method` explaining class `target`.

    map: [H, W] float32 at input resolution (signed for IG / input x gradient).
    raw: per-channel attribution [C, H, W] for gradient methods, the feature-resolution map
         [h, w] for CAM methods; None when the method has nothing finer to offer.
    stats: per-method numbers (e.g. IG completeness error, samples used).
    cached: not computed for this request: the serving layer's explanation cache had it, or
         an identical request's computation in flight at the same time (runtime/explanation_cache.py).
    """

    method: str
    target: int
    map: torch.Tensor
    raw: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    cached: bool = False
