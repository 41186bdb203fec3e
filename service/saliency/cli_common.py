"""What the command line's local and remote halves share (`cli.py`, `cli_remote.py`): parsing
arguments into domain values, reading images, and writing a run's report (overlays, grid,
.npy maps), so that an in-process and a remote `explain` write the same files. Imports
neither half, so neither imports the other for these.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saliency import render
from saliency.errors import InvalidArgument, SaliencyError, require
from saliency.wire.arrays import as_float32
from saliency.wire.types import InputRegion

if typing.TYPE_CHECKING:
    from saliency.attribution.limits import Limits
    from saliency.attribution.types import Attribution, Prediction

USAGE_ERROR = 2
GRID_TILE_SIDE = 320  # grid tiles are shrunk to this longer side so the sheet stays viewable


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return USAGE_ERROR


# ---------------------------------------------------------------- argument -> domain values


def parse_methods(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    require(bool(names), "methods", "no method given")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    require(not duplicates, "methods", f"listed more than once: {', '.join(duplicates)}")
    return names


def parse_targets(top_k: int | None, classes: str | None) -> Any:
    from saliency.attribution.types import Targets

    if classes is None:
        return Targets(top_k=1 if top_k is None else top_k)
    try:
        indices = tuple(int(c) for c in classes.split(",") if c.strip())
    except ValueError:
        raise InvalidArgument(f"{classes!r} is not a comma-separated list of integers", "targets") from None
    require(bool(indices), "targets", "no class index given")
    return Targets(classes=indices)


def _convert(value: str, kind: Any, field: str) -> Any:
    """A command-line string -> int, float, bool or str, as the params field declares."""
    if kind is bool:
        lowered = value.strip().lower()
        require(lowered in ("true", "false", "1", "0", "yes", "no"), field, f"{value!r} is not a boolean")
        return lowered in ("true", "1", "yes")
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise InvalidArgument(f"{value!r} is not {'an integer' if kind is int else 'a number'}", field) from None
    require(kind is str, field, "cannot be set from the command line")
    return value


def parse_params(
    methods: Sequence[str], assignments: Sequence[str], limits: Limits | None = None
) -> dict[str, Any]:
    """["ig.n_steps=32", ...] -> {method: validated params object} for every listed method.

    limits: what n_steps and the like are checked against (default: the built-in limits; a
    remote run passes unbounded ones, as the server applies its own).
    """
    from saliency.attribution.limits import DEFAULT_LIMITS
    from saliency.attribution.registry import field_types, get_method, make_params

    values: dict[str, dict[str, Any]] = {name: {} for name in methods}
    for assignment in assignments:
        key, eq, value = assignment.partition("=")
        method, dot, name = key.strip().partition(".")
        require(bool(eq and dot and method and name), "param", f"{assignment!r} is not METHOD.FIELD=VALUE")
        require(method in values, "param", f"{assignment!r} is for {method!r}, which is not in --methods")
        types = field_types(get_method(method).params_type)
        # An unknown field passes through as a string so make_params reports it with the list.
        values[method][name] = _convert(value, types[name], key) if name in types else value
    params = {}
    for method, kwargs in values.items():
        try:
            params[method] = make_params(method, limits or DEFAULT_LIMITS, **kwargs)
        except SaliencyError as exc:
            # Some validators name a bare field ("reduction"); say which method's it is.
            if exc.field and not exc.field.startswith(f"{method}."):
                raise type(exc)(str(exc)[len(exc.field) + 2 :], f"{method}.{exc.field}") from None
            raise
    return params


def read_image(path: str | None, sample: str | None) -> tuple[str, np.ndarray]:
    """(display name, uint8 RGB [H, W, 3]) from a file or a bundled sample."""
    from saliency.imaging import decode_image

    if sample is not None:
        from skimage import data

        return sample, np.ascontiguousarray(getattr(data, sample)()[..., :3], dtype=np.uint8)
    try:
        encoded = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path!r}: {exc.strerror}", "image") from None
    return Path(path).name, decode_image(encoded)


def parse_list(text: str | None, field: str) -> tuple[str, ...]:
    """"a,b" -> ("a", "b"); None -> (); an empty item is an error naming `field`."""
    if text is None:
        return ()
    items = tuple(item.strip() for item in text.split(","))
    require(all(items), field, f"{text!r} has an empty item")
    return items


def parse_randomizations(text: str) -> tuple[str, ...]:
    from saliency.quality.sanity import MODES

    modes = parse_list(text, "randomizations")
    bad = [m for m in modes if m not in MODES]
    require(bool(modes) and not bad, "randomizations", f"{bad or text!r}: choose from {', '.join(MODES)}")
    require(len(set(modes)) == len(modes), "randomizations", "listed twice")
    return modes


# ------------------------------------------------------------------------------ output


def make_out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create {str(out)!r}: {exc.strerror}", "out") from None
    return out


def report(
    model: str,
    image_name: str,
    rgb: np.ndarray,
    predictions: Sequence[Prediction],
    targets: Sequence[int],
    attributions: Sequence[Attribution],
    methods: Sequence[str],
    label: Callable[[int], str],
    out: Path,
    raw: bool,
    alpha: float,
    region: InputRegion | None = None,
) -> int:
    """Print the prediction and per-map summary; write overlays, grid.png and (raw) .npy maps.

    rgb: the original photograph uint8 [H0, W0, 3]; region: the part of it the model saw
    (default all of it). Maps at the model's input size [h, w] are drawn over that part, maps
    at the image's size (NaN outside the part) over the same part; the rest is dimmed. The
    .npy files hold the maps as given. Shared by in-process and remote runs, so both write the
    same files.
    """
    from saliency.attribution.registry import all_methods

    infos = all_methods()
    image_size = rgb.shape[:2]
    box = None
    if region is not None and region != InputRegion.whole(image_size):
        box = region.pixel_box(image_size, image_size)
        print(f"{model} saw the centre crop x {region.x_min:.0f}..{region.x_max:.0f}, "
              f"y {region.y_min:.0f}..{region.y_max:.0f} of the image (the rest is dimmed in overlays)")
    print(f"{model} on {image_name} ({rgb.shape[1]}x{rgb.shape[0]}):")
    for rank, p in enumerate(predictions, 1):
        print(f"  {rank}. {p.class_index:>4} {p.label:<32} p={p.probability:.4f}  logit={p.logit:.3f}")

    # Maps arrive grouped by target (fast) then by method (deep); list them as asked: method,
    # then target.
    ordered = sorted(attributions, key=lambda a: (methods.index(a.method), list(targets).index(a.target)))
    tiles, written = [], []
    for a in ordered:
        caption = f"{a.target} {label(a.target)}"
        values = as_float32(a.map)  # torch in-process, numpy from the client
        stats = "".join(f" {k}={v:.4g}" for k, v in a.stats.items())
        low, high = (np.nanmin(values), np.nanmax(values)) if np.isfinite(values).any() else (np.nan, np.nan)
        print(f"  {a.method:<17} {caption:<36} {values.shape[1]}x{values.shape[0]} range=[{low:.3g}, {high:.3g}]{stats}")
        # A map at the image's size is NaN outside the part the model saw: draw only that part.
        top, bottom, left, right = render.finite_box(values)
        picture = render.overlay(
            rgb, values[top:bottom, left:right], alpha=alpha, signed=infos[a.method].signed, box=box
        )
        stem = f"{a.method}_{a.target}"
        written.append(_write(out / f"{stem}.png", render.encode_png(picture)))
        if raw:
            written.append(_save_npy(out / f"{stem}.npy", values.astype(np.float32)))
        tiles.append((f"{a.method} · {caption}", picture))
    if tiles:  # a server may answer with no maps at all (no methods asked)
        # One column per target, so each row compares one method across the classes.
        columns = len(targets) if len(targets) > 1 else min(4, len(tiles))
        sheet = render.grid(tiles, columns, max_side=GRID_TILE_SIDE)
        written.append(_write(out / "grid.png", render.encode_png(sheet)))
    print(f"wrote {len(written)} files to {out}")
    return 0


def _write(path: Path, data: bytes) -> Path:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {str(path)!r}: {exc.strerror}", "out") from None
    return path


def _save_npy(path: Path, array: np.ndarray) -> Path:
    try:
        np.save(path, array)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {str(path)!r}: {exc.strerror}", "out") from None
    return path
