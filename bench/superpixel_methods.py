"""KernelSHAP and LIME over superpixels on the reference workload, against Captum's KernelShap
and Lime at matched settings: the same SLIC feature mask, baseline (0), n_samples and seed (so
the same coalitions), LIME with the same similarity kernel and a ridge surrogate (sklearn's
Ridge through Captum's SkLearnRidge). Captum at its default perturbations_per_eval=1 and at our
forward chunk size. Ours includes SLIC on every run (a fresh segment cache); Captum is handed
the mask. Also: what SLIC costs next to one forward.
"""

from __future__ import annotations

import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import KernelShap, Lime

from bench import contenders as c
from bench.deep import versus_captum
from bench.report import Table
from bench.settings import Settings
from bench.workload import Workload, reference_workload
from saliency.attribution.superpixels import SegmentCache, slic_segments

SUMMARY = "KernelSHAP and LIME over SLIC superpixels vs Captum's KernelShap and Lime; SLIC cost"
N_SEGMENTS, COMPACTNESS, SEED, KERNEL_WIDTH, ALPHA = 50, 10.0, 0, 0.25, 1.0


def lime_similarity(original: object, perturbed: object, interpretable: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """Ours (exp(-d^2 / w^2), d the cosine distance of z to all-ones) as a Captum similarity_func."""
    distance = 1 - torch.sqrt(interpretable.double().sum() / interpretable.shape[1])
    return torch.exp(-(distance**2) / KERNEL_WIDTH**2)


def captum_kernel_shap(w: Workload, mask: torch.Tensor, n: int, per_eval: int) -> torch.Tensor:
    torch.manual_seed(SEED)
    return KernelShap(w.model.module).attribute(
        w.x[None], baselines=0.0, target=w.target, feature_mask=mask, n_samples=n, perturbations_per_eval=per_eval
    )


def captum_lime(w: Workload, mask: torch.Tensor, n: int, per_eval: int) -> torch.Tensor:
    torch.manual_seed(SEED)
    lime = Lime(w.model.module, interpretable_model=SkLearnRidge(alpha=ALPHA), similarity_func=lime_similarity)
    return lime.attribute(
        w.x[None], baselines=0.0, target=w.target, feature_mask=mask, n_samples=n, perturbations_per_eval=per_eval
    )


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    ex = c.executor(w)
    pixels = w.model.spec.denormalize(w.x.cpu())
    labels = slic_segments(pixels, N_SEGMENTS, COMPACTNESS)
    mask = labels[None, None].to(w.x.device)
    n = settings.pick(256, 64)
    segs = int(labels.max()) + 1

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return w.model.module(w.x[None])

    slic = versus_captum(
        w,
        settings,
        f"SLIC: n_segments={N_SEGMENTS} on {tuple(w.x.shape[-2:])} ({segs} segments)",
        {
            "slic_segments (skimage SLIC + relabel)": lambda: slic_segments(pixels, N_SEGMENTS, COMPACTNESS),
            "one forward, batch 1 (for scale)": forward,
        },
        {},
        ["computed once per image and shared by the request's targets and methods"],
    )

    tables = [slic]
    for name, captum, extra in [
        ("kernel_shap", captum_kernel_shap, {}),
        ("lime", captum_lime, {"kernel_width": KERNEL_WIDTH, "alpha": ALPHA}),
    ]:
        params = dict(n_samples=n, n_segments=N_SEGMENTS, compactness=COMPACTNESS, seed=SEED, **extra)

        def ours(name: str = name, params: dict = params) -> list:
            return c.ours_deep(w, ex, name, [w.target], {"segments": SegmentCache()}, **params)

        parity = c.relative_error(ours()[0].map, captum(w, mask, n, auto.forward)[0, 0])
        tables.append(
            versus_captum(
                w,
                settings,
                f"{name}: {n} samples, {segs} superpixels",
                {
                    f"ours: forward chunk={auto.forward} (automatic), SLIC included": ours,
                    "captum: perturbations_per_eval=1 (default)": lambda captum=captum: captum(w, mask, n, 1),
                    f"captum: perturbations_per_eval={auto.forward}": lambda captum=captum: captum(
                        w, mask, n, auto.forward
                    ),
                },
                {},
                [
                    f"max relative difference of the maps (same coalitions): {parity:.1e}",
                    "DESIGN §6 sets no goal for these methods",
                ],
            )
        )
    return tables
