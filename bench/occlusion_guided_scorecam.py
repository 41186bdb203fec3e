"""The rest of the method table on the reference workload, each against Captum at matched
settings: Occlusion (Captum at its default perturbations_per_eval=1 and at our forward chunk
size), guided backpropagation, deconvnet and Guided Grad-CAM for the top-3 classes (Captum in
one call on a batch of three copies with a target list). Captum has no Score-CAM: ours is
timed against the one-forward-per-channel loop of the authors' code, same channels.

On EfficientNet-Lite0 (ReLU6 only) Captum's guided / deconvnet rules, which override nn.ReLU,
change nothing, so Captum computes plain gradients: the same model work, different maps. No
parity is claimed there; occlusion parity is reported.
"""

from __future__ import annotations

import torch
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, Occlusion

from bench import contenders as c
from bench.deep import versus_captum
from bench.report import Table
from bench.settings import Settings
from bench.workload import Workload, reference_workload
from saliency.attribution.methods.score_cam import channel_masks, select_channels
from saliency.instrument.hooks import capture_output, resolve_layer

SUMMARY = "occlusion, Score-CAM, guided backprop, deconvnet, Guided Grad-CAM vs Captum"
TOP = 3  # targets for the one-sample gradient methods


def captum_occlusion(w: Workload, window: int, stride: int, per_eval: int) -> torch.Tensor:
    """Captum Occlusion with full-channel windows, baseline 0, [1, 3, H, W]."""
    return Occlusion(w.model.module).attribute(
        w.x[None],
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0.0,
        target=w.target,
        perturbations_per_eval=per_eval,
    )


def captum_batched(w: Workload, attribution: object, **kwargs: object) -> torch.Tensor:
    """One Captum call on TOP copies of the image, one target each: [TOP, 3, H, W]."""
    inputs = w.x[None].expand(TOP, -1, -1, -1).clone()
    return attribution.attribute(inputs, target=list(w.classes[:TOP]), **kwargs)


def scorecam_loop(w: Workload, max_channels: int) -> torch.Tensor:
    """Score-CAM as the authors' code runs it: one forward per channel, batch 1. [h, w]."""
    module, x = w.model.module, w.x
    with torch.inference_mode():
        with capture_output(module, w.model.spec.target_layer) as captured:
            module(x[None])
        acts = captured[-1][0].float()
        kept = select_channels(acts, max_channels)
        scores = torch.stack(
            [
                module(x[None] * channel_masks(acts[k : k + 1], tuple(x.shape[-2:]))[:, None])[
                    0, w.target
                ]
                for k in kept.tolist()
            ]
        )
        return torch.relu(torch.einsum("k,khw->hw", scores.softmax(0), acts[kept]))


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    ex = c.executor(w)
    window, stride = settings.pick((32, 16), (56, 28))
    ours_occ = c.ours_deep(w, ex, "occlusion", [w.target], window=window, stride=stride)[0]
    parity = c.relative_error(ours_occ.map, captum_occlusion(w, window, stride, auto.forward)[0, 0])
    n_windows = int(ours_occ.stats["windows"])
    occlusion = versus_captum(
        w,
        settings,
        f"occlusion: window {window}, stride {stride} ({n_windows} windows)",
        {
            f"ours: forward chunk={auto.forward} (automatic)": lambda: c.ours_deep(
                w, ex, "occlusion", [w.target], window=window, stride=stride
            ),
            "captum: perturbations_per_eval=1 (default)": lambda: captum_occlusion(
                w, window, stride, 1
            ),
            f"captum: perturbations_per_eval={auto.forward}": lambda: captum_occlusion(
                w, window, stride, auto.forward
            ),
        },
        {},
        [f"max relative difference of the maps: {parity:.1e}", "DESIGN §6 sets no occlusion goal"],
    )

    n_channels = settings.pick(256, 64)
    score_cam = versus_captum(
        w,
        settings,
        f"scorecam: {n_channels} channels of 1280",
        {
            f"ours: forward chunk={auto.forward} (automatic)": lambda: c.ours_deep(
                w, ex, "scorecam", [w.target], max_channels=n_channels
            ),
            "one forward per channel (the authors' loop)": lambda: scorecam_loop(w, n_channels),
        },
        {},
        ["Captum has no Score-CAM; both include the activation forward"],
    )

    module = w.model.module
    layer = resolve_layer(module, w.model.spec.target_layer)
    targets = list(w.classes[:TOP])
    guided = []
    for name, captum, kwargs in [
        ("guided_backprop", lambda: GuidedBackprop(module), {}),
        ("deconvnet", lambda: Deconvolution(module), {}),
        ("guided_gradcam", lambda: GuidedGradCam(module, layer), {"interpolate_mode": "bilinear"}),
    ]:
        guided.append(
            versus_captum(
                w,
                settings,
                f"{name}: top-{TOP} classes",
                {
                    f"ours: grad chunk={auto.grad} (automatic)": lambda name=name: c.ours_deep(
                        w, ex, name, targets
                    ),
                    "captum: one batched call": lambda captum=captum, kwargs=kwargs: captum_batched(
                        w, captum(), **kwargs
                    ),
                },
                {},
                ["Captum's rules override nn.ReLU only: on ReLU6 it computes plain gradients"],
            )
        )
    return [occlusion, score_cam, *guided]
