"""Value types shared by the fast pass and the deep methods."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saliency.errors import require


@dataclass(frozen=True)
class Targets:
    """Which classes to explain: explicit `classes`, else the `top_k` predicted classes."""

    top_k: int = 1
    classes: tuple[int, ...] = ()

    def validate(self, num_classes: int, max_targets: int = 16) -> None:
        if self.classes:
            require(
                len(self.classes) <= max_targets,
                "targets.classes",
                f"{len(self.classes)} classes requested, at most {max_targets} allowed",
            )
            bad = [c for c in self.classes if not 0 <= c < num_classes]
            require(not bad, "targets.classes", f"class {bad[:3]} outside [0, {num_classes})")
            require(len(set(self.classes)) == len(self.classes), "targets.classes", "duplicate class")
        else:
            require(
                1 <= self.top_k <= min(max_targets, num_classes),
                "targets.top_k",
                f"top_k={self.top_k} must be in [1, {min(max_targets, num_classes)}]",
            )

    def resolve(self, logits: torch.Tensor) -> tuple[int, ...]:
        """logits [num_classes] -> the target class indices, best first for top_k."""
        if self.classes:
            return self.classes
        return tuple(int(c) for c in logits.topk(self.top_k).indices)


@dataclass(frozen=True)
class Prediction:
    class_index: int
    label: str
    logit: float
    probability: float


@dataclass
class Attribution:
    """One map: `method` explaining class `target`.

    map: [H, W] float32 at input resolution (signed for IG / input x gradient).
    raw: per-channel attribution [C, H, W] for gradient methods, the feature-resolution map
         [h, w] for CAM methods; None when the method has nothing finer to offer.
    stats: per-method numbers (e.g. IG completeness error, samples used).
    """

    method: str
    target: int
    map: torch.Tensor
    raw: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
