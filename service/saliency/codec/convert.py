"""Protobuf <-> domain conversion for `saliency.v1`: the only code that knows both sides.

Server side (called by the servicer, which knows no torch): request messages become validated
domain values (the model input, `Targets`, method params, `OutputOptions`) and domain results
become response messages (attributions, predictions, `ModelInfo`). The client side (requests
from plain values, responses to numpy maps) is `saliency.wire`, which needs no torch; the
value types and enum tables both sides share live there too.

This module holds the Explain flow and composes the codecs of its parts, each a module of its
own: `tensors` (Tensor messages, the `input` oneof), `method_params` (`MethodRequest`s and the
method tables) and `quality_codec` (evaluate options, policy, quality scores, SanityCheck).

Every value a user controls is checked here, in those modules, or by the domain types' own
`validate`, and every error is an `InvalidArgument` (or `ResourceExhausted` for size limits)
whose field is the request path to fix, e.g. `methods[1].integrated_gradients.n_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saliency import render
from saliency.attribution.limits import Limits
from saliency.attribution.registry import check_supported, get_method
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.codec.method_params import (
    METHOD_NAMES,
    method_enum,
    method_requests_to_proto,  # noqa: F401 (re-exported, see below)
    methods_from_proto,
    parameter_infos,
)
from saliency.codec.tensors import input_from_request, tensor_from_proto, tensor_to_proto  # noqa: F401
from saliency.errors import InvalidArgument, require
from saliency.imaging import ImageLimits
from saliency.models import ModelSpec
from saliency.models.preprocess import input_region
from saliency.v1 import explainer_pb2 as pb
from saliency.wire.requests import output_options_to_proto, targets_to_proto  # noqa: F401
from saliency.wire.results import input_region_from_proto, map_from_proto, predictions_from_proto  # noqa: F401
from saliency.wire.tables import (
    DTYPE_VALUES,
    DTYPES,
    MAP_SIZE_NAMES,
    NORMALIZATION_NAMES,
    method_name,  # noqa: F401 (re-exported, see below)
)
from saliency.wire.types import InputRegion, OutputOptions

# bench/ (isolation.py, torchserve.py) still reaches `method_requests_to_proto` and
# `tensor_to_proto` as `convert.X`; both are imported above for this module's own use, so they
# stay importable from here. Other callers import them from `method_params` / `tensors`.
# Likewise the TorchServe backend and tests reach the wire codec's `targets_to_proto`,
# `output_options_to_proto`, `predictions_from_proto` and `input_region_from_proto` here, and
# tests `tensor_from_proto` and `method_name`.


# ---------------------------------------------------------------------------------- targets


def request_inputs_from_proto(
    request: pb.ExplainRequest,
    spec: ModelSpec,
    image_limits: ImageLimits,
    limits: Limits,
    max_methods: int,
) -> tuple[torch.Tensor, np.ndarray, Targets, dict[str, Any]]:
    """An ExplainRequest's input, targets and methods, each validated: (x, rgb, targets, methods).

    The one decoder of a request's payload, for the servicer and the TorchServe handler alike.
    """
    targets, methods = request_head_from_proto(request, spec, limits, max_methods)
    x, rgb = input_from_request(request, spec, image_limits)
    return x, rgb, targets, methods


def request_head_from_proto(
    request: pb.ExplainRequest, spec: ModelSpec, limits: Limits, max_methods: int
) -> tuple[Targets, dict[str, Any]]:
    """What an ExplainRequest asks for, validated without decoding its input: (targets, methods).
    Inputs always reach the model at its input size, so that is the shape methods see."""
    targets = targets_from_proto(
        request.targets if request.HasField("targets") else None, spec.num_classes, limits.max_targets
    )
    methods = methods_from_proto(request.methods, limits, max_methods, (3, *spec.input_size))
    check_supported(list(methods), spec, [f"methods[{i}].method" for i in range(len(methods))])
    return targets, methods


def targets_from_proto(targets: pb.Targets | None, num_classes: int, max_targets: int) -> Targets:
    """`Targets` message (or None) -> validated domain Targets; unset means top_k = 1."""
    which = targets.WhichOneof("selection") if targets is not None else None
    if which == "top_k":
        result = Targets(top_k=targets.top_k)
    elif which == "classes":
        indices = tuple(targets.classes.indices)
        # An empty list would silently fall back to top_k=1 in the domain type.
        require(bool(indices), "targets.classes", "no class index given; set top_k instead")
        result = Targets(classes=indices)
    else:
        result = Targets()
    result.validate(num_classes, max_targets)
    return result


# ---------------------------------------------------------------------------- output options

def output_options_from_proto(options: pb.OutputOptions | None) -> OutputOptions:
    """`OutputOptions` message (or None) -> validated OutputOptions; unset fields default."""
    if options is None:
        return OutputOptions()
    if options.map_dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {options.map_dtype}", "output.map_dtype")
    if options.normalization not in NORMALIZATION_NAMES:
        raise InvalidArgument(f"unknown normalization {options.normalization}", "output.normalization")
    if options.map_size not in MAP_SIZE_NAMES:
        raise InvalidArgument(
            f"unknown map size {options.map_size}; use MAP_SIZE_INPUT or MAP_SIZE_ORIGINAL", "output.map_size"
        )
    result = OutputOptions(
        map_dtype=DTYPES[options.map_dtype][0],
        normalization=NORMALIZATION_NAMES[options.normalization],
        include_overlay=options.include_overlay,
        top_predictions=options.top_predictions if options.HasField("top_predictions") else 5,
        map_size=MAP_SIZE_NAMES[options.map_size],
    )
    result.validate()
    return result


# ------------------------------------------------------------------ what maps are drawn on


@dataclass(frozen=True)
class MapFrame:
    """Where one request's maps go in the image it sent: the size maps at the original size
    and overlays are drawn at, the box the model input covers there, and the picture overlays
    are drawn on.

    image_size: (H0, W0) of the image sent (for a tensor input, the model input's own size);
    size: (H, W), image_size scaled down to at most max_overlay_side (render.fitted_size);
    box: (top, bottom, left, right) of the model input in `size` pixels (render.Box);
    region: the model input in image_size pixels (Attribution.region);
    picture: uint8 [H, W, 3], only when overlays are asked for.
    """

    image_size: tuple[int, int]
    size: tuple[int, int]
    box: tuple[int, int, int, int]
    region: InputRegion
    picture: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """What the frame holds while the request is in flight: the overlay picture, if any."""
        return self.picture.nbytes if self.picture is not None else 0

    @staticmethod
    def of_picture(rgb: np.ndarray) -> MapFrame:
        """A picture the model saw whole (`stretch`), drawn on as it is."""
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        return MapFrame(size, size, (0, size[0], 0, size[1]), InputRegion.whole(size), rgb)


def map_frame(
    request: pb.ExplainRequest, spec: ModelSpec, rgb: np.ndarray, options: OutputOptions, max_side: int
) -> MapFrame:
    """The frame of an Explain request whose input decoded to `rgb` [H0, W0, 3] (a tensor
    input's de-normalisation): the servicer's one call between decoding and rendering.

    Overlays and maps at the original size are capped at `max_side` on the longer side, so
    what a request holds does not grow with its photograph (`response_bytes_per_map`). A tensor
    input is the model input itself: its frame is the input, whatever the model's resize mode.
    Runs Pillow (the overlay picture): call it off the event loop."""
    image_size = (int(rgb.shape[0]), int(rgb.shape[1]))
    resize = "stretch" if request.WhichOneof("input") == "tensor" else spec.resize
    region = input_region(resize, spec.input_size, image_size)
    size = render.fitted_size(image_size, max_side)
    picture = render.fit_within(rgb, max_side) if options.include_overlay else None
    return MapFrame(image_size, size, region.pixel_box(image_size, size), region, picture)


def response_bytes_per_map(options: OutputOptions, frame: MapFrame | None, input_size: tuple[int, int]) -> int:
    """Bytes one map adds to the response: its wire copy (at the input or the frame's size, in
    the wire dtype) and, with overlays, its PNG (at most the raw picture's bytes). The raw
    float32 map [h, w] the backend returns, and rendering's transient arrays (bounded by the
    prepare pool), are not included."""
    wire = 2 if options.map_dtype == "float16" else 4
    height, width = frame.size if options.map_size == "original" and frame is not None else input_size
    png = frame.nbytes if options.include_overlay and frame is not None else 0
    return height * width * wire + png


# ---------------------------------------------------------------------- results (server side)


def normalize_values(m: torch.Tensor, mode: str) -> torch.Tensor:
    """[H, W] map -> the same map normalised: none | max_abs (to [-1, 1]) | min_max ([0, 1]).

    A map with nothing to scale (all zero, or constant for min_max) becomes zeros, not NaN.
    """
    if mode == "none":
        return m
    if mode == "max_abs":
        scale = float(m.abs().max()) if m.numel() else 0.0
        return m / scale if scale > 0 else torch.zeros_like(m)
    if mode == "min_max":
        low, high = (float(m.min()), float(m.max())) if m.numel() else (0.0, 0.0)
        return (m - low) / (high - low) if high > low else torch.zeros_like(m)
    raise ValueError(f"unknown normalization {mode!r}")


def attribution_to_proto(
    a: Attribution,
    options: OutputOptions,
    rgb: MapFrame | np.ndarray | None,
    signed: bool,
    queue_ms: float,
    compute_ms: float,
) -> pb.Attribution:
    """A domain Attribution (map [h, w]) -> `Attribution` message per the output options.

    rgb: the request's MapFrame (`map_frame`); a bare picture [H0, W0, 3] is a frame the model
    saw whole; None (no frame: maps at the input size, no overlay, no region).
    The values are normalised at the input size, then placed at the frame's size for
    map_size "original" (render.place_map: NaN outside the input's box). The overlay is drawn
    from the raw map into the box of the frame's picture, so it looks the same whatever
    normalisation or size the values get.
    """
    frame = MapFrame.of_picture(rgb) if isinstance(rgb, np.ndarray) else rgb
    raw = a.map.detach().to("cpu", torch.float32)
    values = normalize_values(raw, options.normalization)
    if options.map_size == "original":
        if frame is None:
            raise ValueError("map_size original needs the request's MapFrame (convert.map_frame)")
        values = torch.from_numpy(render.place_map(values, frame.size, frame.box))
    message = pb.Attribution(
        method=method_enum(a.method),
        target=int(a.target),
        map=tensor_to_proto(values, DTYPE_VALUES[options.map_dtype]),
        queue_ms=float(queue_ms),
        compute_ms=float(compute_ms),
        cached=a.cached,
    )
    for key, value in a.stats.items():
        message.stats[key] = float(value)
    if isinstance(rgb, MapFrame):  # a bare picture may be scaled: its pixels are not the image's
        r = frame.region
        message.region.CopyFrom(pb.Box(x_min=r.x_min, y_min=r.y_min, x_max=r.x_max, y_max=r.y_max))
    if options.include_overlay and frame is not None and frame.picture is not None:
        box = None if frame.box == (0, frame.size[0], 0, frame.size[1]) else frame.box
        message.overlay_png = render.encode_png(render.overlay(frame.picture, raw, signed=signed, box=box))
    return message


def predictions_to_proto(predictions: Sequence[Prediction]) -> list[pb.Prediction]:
    return [
        pb.Prediction(class_index=p.class_index, label=p.label, logit=p.logit, probability=p.probability)
        for p in predictions
    ]


def model_info_to_proto(spec: ModelSpec, limits: Limits) -> pb.ModelInfo:
    """A served model -> `ModelInfo` with every method of the API that can explain it, with
    its parameters and limits."""
    height, width = spec.input_size
    info = pb.ModelInfo(
        name=spec.name,
        description=spec.description,
        height=height,
        width=width,
        channels=len(spec.mean),
        mean=list(spec.mean),
        std=list(spec.std),
        num_classes=spec.num_classes,
        max_targets=min(limits.max_targets, spec.num_classes),
        pretrained=spec.pretrained,
        architecture=spec.architecture,
        resize=spec.resize,
    )
    for value, name in sorted(METHOD_NAMES.items()):
        method = get_method(name)
        if method.unsupported_reason(spec) is not None:
            continue  # only what the model can be explained with
        info.methods.append(
            pb.MethodInfo(
                method=value,
                name=name,
                kind=method.kind,
                summary=method.summary,
                parameters=parameter_infos(method.params_type, limits),
            )
        )
    return info


# ----------------------------------------------------------- results back, for server tests


def attribution_from_proto(message: pb.Attribution) -> Attribution:
    """`Attribution` message -> domain Attribution with a float32 torch map [H, W] (the
    inverse of attribution_to_proto; clients get numpy maps from `saliency.wire.results`).

    queue_ms and compute_ms go into `stats`; the decoding is the client's (`map_from_proto`).
    """
    r = map_from_proto(message)
    return Attribution(r.method, r.target, torch.from_numpy(r.map), stats=r.stats, cached=r.cached)
