"""GradientSHAP / Expected Gradients (photo references, stdev 0) against Captum's GradientShap at
matched n_samples, and where XRAI's time goes (its IG samples vs segmentation + ranking).

Captum's GradientShap has no chunk knob: it runs every sample in one batch. Internally it is
NoiseTunnel(InputBaselineXGradient) with draw_baseline_from_distrib, which does take
nt_samples_batch_size; that is swept as "Captum at its fastest batching". Seeding numpy's and
torch's global generators as ours makes Captum draw the same references and alphas, so the
maps are compared for parity too.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from captum.attr import GradientShap, NoiseTunnel
from captum.attr._core.gradient_shap import InputBaselineXGradient

from bench import contenders as c
from bench.deep import sweep_captum, versus_captum
from bench.progress import log
from bench.report import Row, Table
from bench.settings import Settings
from bench.workload import Workload, reference_workload
from saliency.attribution.methods.gradient_shap import reference_set
from saliency.attribution.registry import make_params

SUMMARY = "GradientSHAP vs Captum GradientShap (default and batched); XRAI cost split"
SEED = 0
CAPTUM_SIZES = (2, 4, 5, 10, 25)
QUICK_CAPTUM_SIZES = (5, 10)


def captum_gradient_shap(w: Workload, references: torch.Tensor, n: int, batch: int | None) -> torch.Tensor:
    """Captum's GradientShap ([1, 3, H, W]); batch=None is its own (unchunked) entry point."""
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    references = references.to(w.x.device)
    if batch is None:
        return GradientShap(w.model.module).attribute(
            w.x[None], baselines=references, n_samples=n, stdevs=0.0, target=w.target
        )
    return NoiseTunnel(InputBaselineXGradient(w.model.module)).attribute(
        w.x[None],
        nt_type="smoothgrad",
        nt_samples=n,
        nt_samples_batch_size=batch,
        stdevs=0.0,
        draw_baseline_from_distrib=True,
        baselines=references,
        target=w.target,
    )


def xrai_split(w: Workload, settings: Settings, n_steps: int) -> Table:
    """Median wall time of XRAI and of its parts, from the stats it reports."""
    ex = c.executor(w)
    runs = []
    for _ in range(settings.pick(3, 1)):
        started = time.perf_counter()
        (result,) = c.ours_deep(w, ex, "xrai", [w.target], n_steps=n_steps)
        runs.append((time.perf_counter() - started, result.stats))
    total = float(np.median([t for t, _ in runs])) * 1000

    def median(key: str) -> float:
        return float(np.median([s[key] for _, s in runs]))

    stats = runs[-1][1]
    rows = [
        Row("xrai, end to end", total),
        Row(f"IG samples ({int(stats['samples'])} through the executor)", median("compute_ms")),
        Row(f"segmentation ({int(stats['regions_total'])} regions, 6 scales)", median("segmentation_ms")),
        Row(f"greedy ranking ({int(stats['regions_added'])} regions added)", median("ranking_ms")),
    ]
    log(f"  xrai: {total:.0f} ms over {len(runs)} runs")
    return Table(
        f"xrai: n_steps={n_steps} per baseline, black and white", "ms", rows[0].name, "t / t(total)", rows,
        ["parts from the map's own stats; the rest of the total is planning and finishing"],
    )


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    n = settings.pick(50, 10)
    references = reference_set(w.model, w.x, make_params("gradient_shap")).all()
    ours = c.ours_deep(w, c.executor(w), "gradient_shap", [w.target], n_samples=n, seed=SEED)[0]
    parity = c.relative_error(ours.raw, captum_gradient_shap(w, references, n, None)[0])
    best, sweep = sweep_captum(
        w,
        settings,
        "nt_samples_batch_size",
        settings.pick(CAPTUM_SIZES, QUICK_CAPTUM_SIZES),
        lambda s: lambda: captum_gradient_shap(w, references, n, s),
    )
    main = versus_captum(
        w,
        settings,
        f"gradient_shap: n={n}, {len(references)} photo references, stdev 0",
        {
            f"ours: chunk={auto.grad} (automatic)": lambda: c.ours_deep(
                w, c.executor(w), "gradient_shap", [w.target], n_samples=n, seed=SEED
            ),
            "captum GradientShap (one batch, its only mode)": lambda: captum_gradient_shap(w, references, n, None),
            f"captum NoiseTunnel batch={best} (its best)": lambda: captum_gradient_shap(w, references, n, best),
        },
        {},
        [
            f"max relative difference of the maps (same draws): {parity:.1e}",
            f"ours includes {int(ours.stats['samples']) - n} forward-only samples for the completeness gap",
        ],
    )
    return [sweep, main, xrai_split(w, settings, settings.pick(32, 8))]
