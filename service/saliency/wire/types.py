"""The API's value types in plain Python: what a request asks for and what a response says.

No torch and no protobuf: the engine, the quality tools, the servers' codecs and the client
all use these same classes, so a result means one thing on both sides of the wire. Checks
raise InvalidArgument naming the request field to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saliency.errors import require

# ------------------------------------------------------------------------- what to explain


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

    def resolve(self, logits: Any) -> tuple[int, ...]:
        """logits [num_classes] (a torch tensor) -> the target classes, best first for top_k."""
        if self.classes:
            return self.classes
        return top_classes(logits, self.top_k)


def top_classes(logits: Any, k: int) -> tuple[int, ...]:
    """The k best classes of logits [num_classes] (a torch tensor), best first, a tie to the
    lower index. Targets and predictions are both ranked by it, from the same logits, so top_k
    targets are the first k predictions in their order (topk leaves ties in no set order, and
    a ranking by softmax probabilities can tie two logits that differ)."""
    return tuple(logits.sort(descending=True, stable=True).indices[:k].tolist())


@dataclass(frozen=True)
class Prediction:
    class_index: int
    label: str
    logit: float
    probability: float


MAP_DTYPES = ("float32", "float16")
NORMALIZATIONS = ("none", "max_abs", "min_max")
MAP_SIZES = ("input", "original")
MAX_TOP_PREDICTIONS = 100


@dataclass(frozen=True)
class OutputOptions:
    """How maps come back: dtype, normalisation of the values, a PNG overlay, predictions, and
    the maps' size: the model's input [h, w], or the image sent's (capped by the server)."""

    map_dtype: str = "float32"  # or "float16": half the bytes
    normalization: str = "none"  # none (raw), max_abs (divide by max |map|), min_max (to [0, 1])
    include_overlay: bool = False
    top_predictions: int = 5
    map_size: str = "input"  # or "original"

    @property
    def needs_frame(self) -> bool:
        """Whether maps are drawn on (overlay) or resized to (original) the image sent."""
        return self.include_overlay or self.map_size == "original"

    def validate(self) -> None:
        require(self.map_dtype in MAP_DTYPES, "output.map_dtype", f"{self.map_dtype!r} is not one of {MAP_DTYPES}")
        require(
            self.normalization in NORMALIZATIONS,
            "output.normalization",
            f"{self.normalization!r} is not one of {NORMALIZATIONS}",
        )
        require(self.map_size in MAP_SIZES, "output.map_size", f"{self.map_size!r} is not one of {MAP_SIZES}")
        require(
            1 <= self.top_predictions <= MAX_TOP_PREDICTIONS,
            "output.top_predictions",
            f"{self.top_predictions} is outside [1, {MAX_TOP_PREDICTIONS}]",
        )


# ----------------------------------------------------------------------- the latency policy

DEFAULT_COMPLETENESS_TARGET = 0.05
MAX_BUDGET_MS = 3_600_000.0


@dataclass(frozen=True)
class ExplainCondition:
    """Compute deep maps only if a set condition holds (None = not set)."""

    margin_below: float | None = None  # p(top-1) - p(top-2) < this
    probability_below: float | None = None  # p(top-1) < this

    def validate(self) -> None:
        require(
            self.margin_below is not None or self.probability_below is not None,
            "explain_if",
            "set margin_below and/or probability_below",
        )
        for name in ("margin_below", "probability_below"):
            value = getattr(self, name)
            if value is not None:
                require(0.0 < value <= 1.0, f"explain_if.{name}", f"{value} is outside (0, 1]")

    def holds(self, predictions: Sequence[Prediction]) -> tuple[bool, str]:
        """(whether to compute deep maps, why) from the predictions, best first."""
        p1 = predictions[0].probability
        p2 = predictions[1].probability if len(predictions) > 1 else 0.0
        margin = p1 - p2
        reasons = []
        if self.margin_below is not None:
            if margin < self.margin_below:
                return True, f"uncertain: top-1 minus top-2 probability {margin:.4f} < {self.margin_below:g}"
            reasons.append(f"margin {margin:.4f} >= {self.margin_below:g}")
        if self.probability_below is not None:
            if p1 < self.probability_below:
                return True, f"uncertain: top-1 probability {p1:.4f} < {self.probability_below:g}"
            reasons.append(f"top-1 probability {p1:.4f} >= {self.probability_below:g}")
        return False, "deep maps skipped, the prediction is confident: " + "; ".join(reasons)


@dataclass(frozen=True)
class PolicyOptions:
    latency_budget_ms: float | None = None
    completeness_target: float | None = None  # IG; default DEFAULT_COMPLETENESS_TARGET
    explain_if: ExplainCondition | None = None

    def validate(self) -> None:
        if self.latency_budget_ms is not None:
            require(
                0.0 < self.latency_budget_ms <= MAX_BUDGET_MS,
                "latency_budget_ms",
                f"{self.latency_budget_ms} is outside (0, {MAX_BUDGET_MS:g}]",
            )
        if self.completeness_target is not None:
            require(
                self.latency_budget_ms is not None,
                "completeness_target",
                "only applies with latency_budget_ms (it steers IG's step count within the budget)",
            )
            require(
                0.0 < self.completeness_target <= 1.0,
                "completeness_target",
                f"{self.completeness_target} is outside (0, 1]",
            )
        if self.explain_if is not None:
            self.explain_if.validate()

    @property
    def target(self) -> float:
        return DEFAULT_COMPLETENESS_TARGET if self.completeness_target is None else self.completeness_target


@dataclass
class MethodChoice:
    """What the policy did with one requested method. chosen: the method delivered instead
    ("" = none); n_steps / completeness_error / target: IG's final round, one per target."""

    requested: str
    chosen: str
    reason: str
    n_steps: int = 0
    completeness_error: float | None = None
    target: int | None = None


@dataclass
class PolicyDecision:
    deep_maps: bool = True  # False: explain_if skipped every deep map
    reason: str = ""
    choices: list[MethodChoice] = field(default_factory=list)
    budget_ms: float | None = None
    sample_ms: float = 0.0  # the measured cost of one gradient sample the plan used


# ----------------------------------------------------------------- what came back about maps


@dataclass(frozen=True)
class InputRegion:
    """The part of an image that became the model input, in that image's pixel coordinates
    (continuous: x from the left edge of column 0 to the right edge of column W0 - 1).
    The whole image for `stretch`; the centre crop for `crop`."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @staticmethod
    def whole(size: tuple[int, int]) -> InputRegion:
        """All of an image of size (H, W)."""
        return InputRegion(0.0, 0.0, float(size[1]), float(size[0]))

    def pixel_box(self, image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
        """This region of an image of `image_size` (H0, W0), in a picture of the same image at
        `size` (H, W), e.g. capped for overlays: (top, bottom, left, right) whole pixels,
        rounded, at least one pixel and inside the picture."""
        sy, sx = size[0] / image_size[0], size[1] / image_size[1]
        top = min(max(round(self.y_min * sy), 0), size[0] - 1)
        left = min(max(round(self.x_min * sx), 0), size[1] - 1)
        bottom = min(max(round(self.y_max * sy), top + 1), size[0])
        right = min(max(round(self.x_max * sx), left + 1), size[1])
        return top, bottom, left, right


@dataclass(frozen=True)
class QualityScore:
    """One number about the maps of a response.

    other_method: the second method of an agreement pair; other_target: the runner-up class
    of a contrast (-1 when not applicable).
    """

    metric: str
    method: str
    target: int
    value: float
    other_method: str = ""
    other_target: int = -1

    @property
    def label(self) -> str:
        """The `method` label of the Prometheus histogram (pairs as "a_vs_b")."""
        return f"{self.method}_vs_{self.other_method}" if self.other_method else self.method


@dataclass(frozen=True)
class SimilarityRow:
    """One (schedule, layer, method) line of a sanity check: similarities, mean over images."""

    mode: str
    layer: str
    method: str
    spearman_abs: float
    spearman_signed: float
    ssim: float
    hog: float
