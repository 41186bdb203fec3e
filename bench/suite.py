"""The benchmarks, by name, in the order a full run takes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from bench import (
    attention,
    batching,
    compiled,
    explanation_cache,
    fast,
    gradient_shap,
    http,
    ig,
    ig_map_error,
    isolation,
    memory,
    occlusion_guided_scorecam,
    propagation,
    rise,
    shared_forwards,
    smoothgrad,
    superpixel_methods,
    threads,
    torchserve,
    user_models,
)
from bench.report import Table
from bench.settings import Settings


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str
    run: Callable[[Settings], list[Table]]


def _entry(name: str, module: ModuleType) -> Benchmark:
    return Benchmark(name, module.SUMMARY, module.run)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _entry("fast", fast),
        _entry("ig", ig),
        _entry("ig_map_error", ig_map_error),
        _entry("smoothgrad", smoothgrad),
        _entry("rise", rise),
        _entry("shared_forwards", shared_forwards),
        _entry("compiled", compiled),
        _entry("occlusion_guided_scorecam", occlusion_guided_scorecam),
        _entry("propagation", propagation),
        _entry("gradient_shap", gradient_shap),
        _entry("superpixels", superpixel_methods),
        _entry("memory", memory),
        _entry("batching", batching),
        _entry("torchserve", torchserve),
        _entry("http", http),
        _entry("threads", threads),
        _entry("isolation", isolation),
        _entry("explanation_cache", explanation_cache),
        _entry("attention", attention),
        _entry("user_models", user_models),
    )
}
