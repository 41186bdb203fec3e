"""Completeness (summation-to-delta) of path-attribution maps: IG, DeepLIFT, GradientSHAP.

Such a map should sum to F(x) - F(x'); how far it misses is reported with every map, relative
to |F(x) - F(x')| and absolute, so a caller can tell an under-sampled map from a faithful one.
"""

from __future__ import annotations


def completeness_stats(attribution_sum: float, gap: float) -> dict[str, float]:
    """|attribution_sum - gap| relative to |gap| (guarded against gap = 0) and absolute."""
    abs_error = abs(attribution_sum - gap)
    return {"completeness_error": abs_error / max(abs(gap), 1e-12), "completeness_error_abs": abs_error}
