"""What the fast pass hands a fast method's compute function: the tensors it captured.

A fast method declares what it needs from the pass (registry.PASS_NEEDS); the pass captures the
union of what the requested methods need, once, and calls each method's pure compute function
with one `FastInputs` per target round: row i is an image of the batch and its target
`targets[i]`. Only what some requested method declared is present; the rest is None / [].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from saliency.models import LoadedModel


@dataclass(frozen=True)
class FastInputs:
    model: LoadedModel
    x: torch.Tensor  # [n, C, H, W] the model input (normalised), detached
    logits: torch.Tensor  # [n, classes], detached
    targets: tuple[int, ...]  # one class per row
    input_grad: torch.Tensor | None = None  # [n, C, H, W] dS_target/dx (INPUT_GRAD)
    acts: torch.Tensor | None = None  # [n, K, h, w] CAM-layer activations, detached (CAM_ACTS)
    cam_grad: torch.Tensor | None = None  # [n, K, h, w] dS_target/dA (CAM_GRAD)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer [n, heads, N, N]

    @property
    def size(self) -> tuple[int, int]:
        """The input's (H, W): every map is delivered at this size."""
        return tuple(self.x.shape[-2:])
