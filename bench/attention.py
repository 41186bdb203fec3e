"""Attention rollout and raw attention on the served ViT (vit_ti16, 224x224, random weights),
top-1, from the prediction's own forward: against a plain forward of the same model (what
capturing the attention costs) and against a naive reference implementation (forward hooks on
every attention module, then vit-explain's Python loop over the layers on the first image).

Captum has no attention rollout, so there is no Captum row. The ViT's weights are random
(no trained small ViT ships on PyPI): timings do not depend on what the weights learned.
"""

from __future__ import annotations

import skimage.data
import torch

from bench import contenders as c
from bench.progress import log
from bench.report import Table, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from saliency.attribution.fast import fast_pass
from saliency.attribution.registry import make_params
from saliency.attribution.types import Targets
from saliency.imaging import to_model_input
from saliency.models import LoadedModel, load_model

SUMMARY = "attention rollout + raw attention (fast pass) vs a plain ViT forward and a naive hook loop"
MODEL = "vit_ti16"
OURS = "ours: fast pass, rollout + raw attention"


def naive_rollout(model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [1, 3, H, W] -> (rollout grid, raw last-layer grid), each [h, w]: hooks registered for
    the call, then a per-layer loop (head mean, + I, row-normalise, multiply) as vit-explain."""
    attentions: list[torch.Tensor] = []
    modules = dict(model.module.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, o: attentions.append(o.detach()))
        for name in model.spec.attention_layers
    ]
    try:
        with torch.no_grad():
            model.module(x)
    finally:
        for handle in handles:
            handle.remove()
    n, device = attentions[0].shape[-1], attentions[0].device
    result = torch.eye(n, device=device)
    for attention in attentions:
        fused = attention[0].mean(dim=0)
        a = (fused + torch.eye(n, device=device)) / 2
        result = (a / a.sum(dim=-1, keepdim=True)) @ result
    side = int((n - 1) ** 0.5)
    return result[0, 1:].reshape(side, side), attentions[-1][0].mean(0)[0, 1:].reshape(side, side)


def run(settings: Settings) -> list[Table]:
    model = load_model(MODEL, settings.device)
    x = to_model_input(skimage.data.chelsea(), model.spec).to(model.device)[None]
    methods = {n: make_params(n) for n in ("attention_rollout", "raw_attention")}
    repeats = settings.pick(30, 8)

    def ours(selected=methods):
        return fast_pass(model, x, [Targets()], selected)

    def plain_forward():
        with torch.inference_mode():
            return model.module(x)

    sync = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (lambda: None)
    log(f"  attention: {repeats} interleaved repeats")
    timings = interleaved(
        {
            OURS: ours,
            "plain forward (inference_mode)": plain_forward,
            "ours: fast pass, prediction only": lambda: ours({}),
            "naive: forward hooks + python rollout loop": lambda: naive_rollout(model, x),
        },
        repeats,
        warmup=2,
        sync=sync,
    )
    maps = {a.method: a.raw for a in ours()[0].attributions}
    roll, raw = naive_rollout(model, x)
    parity = (
        f"parity with the naive loop: rollout rel err {c.relative_error(maps['attention_rollout'], roll):.1e}, "
        f"raw attention {c.relative_error(maps['raw_attention'], raw):.1e}"
    )
    return [
        Table(
            f"attention: {MODEL} 224x224 (6 blocks, 3 heads, dim 192), top-1, batch 1",
            "ms",
            OURS,
            "t / t(ours)",
            time_rows(timings),
            [
                parity,
                "both maps come from the prediction's own forward: the attention probabilities of the 6 "
                "blocks are captured by thread-filtered hooks only when an attention map is requested",
                "the ViT has seeded random weights (none trained ships on PyPI); costs do not depend on them",
            ],
        )
    ]
