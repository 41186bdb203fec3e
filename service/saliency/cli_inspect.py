"""`saliency models inspect my.yaml`: load a model config, probe the model, and say what the
service would do with it: the layers chosen (and the other candidates), the head, the
attention found, which methods can explain it and why the others cannot, the parity of the
served copy with the user's module, and the deep methods' measured chunk sizes.

A bad config exits with status 2 and one line naming the YAML field (the caller, `cli.main`,
turns the ModelConfigError into that line).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

MAX_CANDIDATES = 8  # the last candidates listed (the chosen layer is among the last)


def inspect(path: str, measure_chunks: bool = True) -> int:
    """Print the report for the model config at `path`; returns the exit status."""
    from saliency.models import load_model_config

    started = time.perf_counter()
    model = load_model_config(path)
    seconds = time.perf_counter() - started
    for line in describe(model, seconds, measure_chunks):
        print(line)
    return 0


def describe(model, load_seconds: float, measure_chunks: bool = True) -> list[str]:
    """The report's lines for a loaded model (LoadedModel)."""
    from saliency.attribution.registry import all_methods
    from saliency.codec.method_params import METHOD_NAMES
    from saliency.models.probe import KIND_NAMES

    spec, profile = model.spec, model.spec.profile
    config = spec.config
    h, w = spec.input_size
    source = f"{config.source} {config.location}" + (f" ({config.class_name})" if config.class_name else "")
    lines = [
        f"model {spec.name} from {config.path}",
        f"  source: {source}" + (f", weights {config.weights.name}" if config.weights else ""),
        f"  input {h}x{w} ({config.resize}), mean {list(spec.mean)}, std {list(spec.std)}; "
        f"{spec.num_classes} classes ({spec.labels[0]!r} ... {spec.labels[-1]!r})",
        f"  loaded in {load_seconds:.2f} s (probe {profile.seconds:.2f} s); {KIND_NAMES[profile.kind]}",
        f"CAM layer: {_layer(spec.target_layer, spec.cam_tokens)} ({profile.cam_note})",
    ]
    candidates = profile.cam_candidates[-MAX_CANDIDATES:]
    if candidates:
        lines.append(f"  candidates, last {len(candidates)} of {len(profile.cam_candidates)} in forward order:")
        for c in candidates:
            calls = f", runs {c.calls}x" if c.calls > 1 else ""
            lines.append(f"    {c.path:<32} {list(c.shape)}{calls}" + (f"  -- {c.note}" if c.note else ""))
    lines.append(f"head (CAM): {spec.classifier_layer or 'none'} ({profile.head_note})")
    if profile.has_attention:
        found = (f"{len(spec.attention_layers)} attention module(s) {_short(spec.attention_layers)}"
                 if spec.attention_layers else f"{spec.fused_attention} fused attention call(s), probabilities recomputed")
        lines.append(f"attention: {found}; {profile.attention_note}")
    else:
        lines.append(f"attention: none ({profile.attention_note})")
    if profile.reused:
        lines.append("modules called more than once per forward: "
                     + ", ".join(f"{path} x{n}" for path, n in profile.reused))
    lines.append(f"serving: {profile.parity.describe()}")
    if measure_chunks:
        from saliency.attribution.tuning import measure_chunk_sizes

        started = time.perf_counter()
        sizes = measure_chunk_sizes(model)
        lines.append(f"chunk sizes (measured in {time.perf_counter() - started:.1f} s): {sizes.grad} samples per "
                     f"model call with gradient, {sizes.forward} forward-only")
    api_order = {name: i for i, name in enumerate(METHOD_NAMES.values())}
    methods = sorted(all_methods().values(), key=lambda m: api_order.get(m.name, len(api_order)))
    can = [m.name for m in methods if m.unsupported_reason(spec) is None]
    lines.append(f"methods that can explain it ({len(can)} of {len(methods)}): {', '.join(can)}")
    cannot = [(m.name, m.unsupported_reason(spec)) for m in methods if m.name not in can]
    if cannot:
        lines.append("methods that cannot:")
        lines += [f"  {name}: {reason}" for name, reason in cannot]
    return lines


def _layer(path: str, tokens: tuple[int, int, int] | None) -> str:
    if not path:
        return "none"
    if tokens is None:
        return path
    prefix, h, w = tokens
    return f"{path} (tokens: {prefix} before a {h}x{w} patch grid)"


def _short(paths: Sequence[str]) -> str:
    return f"[{paths[0]} ... {paths[-1]}]" if len(paths) > 2 else str(list(paths))
