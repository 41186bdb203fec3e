"""DeepLIFT and LRP on the reference workload against Captum at matched settings.

DeepLIFT, top-3 classes, zero baseline: ours (one (input, reference) pair per map, packed by
the executor) against Captum's `DeepLift` in one call on three copies with a target list.
Captum's DeepLift knows no ReLU6: by default it leaves EfficientNet-Lite's ReLU6 to autograd
(each row's own derivative, not the rescale multiplier), which breaks summation-to-delta; the
matched contender registers ReLU6 as Captum's generic `nonlinear` (rescale) rule and computes
our map. Both parities are reported.

LRP: Captum's `LRP` cannot run EfficientNet-Lite0 (its rule table is keyed by exact type, so
`SameConv2d` has no rule; ReLU6 and residual additions are unsupported). On EfficientNet-Lite0
ours is timed against one plain forward + backward of the same three samples (what any
gradient costs); against Captum on tinycnn (BatchNorm folded into a copy for Captum, epsilon
rule), a batch of 16 images.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from captum.attr import LRP, DeepLift
from captum.attr._core import deep_lift as captum_deep_lift
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from bench import contenders as c
from bench.deep import versus_captum
from bench.report import Table
from bench.settings import Settings
from bench.workload import Workload, reference_workload
from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.registry import get_method, make_params
from saliency.models import load_model

SUMMARY = "DeepLIFT (rescale) and LRP vs Captum; LRP on EfficientNet-Lite0 vs a plain gradient"
TOP = 3


@contextlib.contextmanager
def captum_rescale_on_relu6():
    """Captum's DeepLift with ReLU6 under its generic rescale rule, for the duration."""
    table = captum_deep_lift.SUPPORTED_NON_LINEAR
    had = nn.ReLU6 in table
    table[nn.ReLU6] = captum_deep_lift.nonlinear
    try:
        yield
    finally:
        if not had:
            del table[nn.ReLU6]


def captum_deeplift(w: Workload, rescale_relu6: bool) -> torch.Tensor:
    """One Captum call on TOP copies of the image, zero baselines: [TOP, 3, H, W]."""
    inputs = w.x[None].expand(TOP, -1, -1, -1).clone()
    rule = captum_rescale_on_relu6() if rescale_relu6 else contextlib.nullcontext()
    with rule:
        return DeepLift(w.model.module).attribute(
            inputs, baselines=torch.zeros_like(inputs), target=list(w.classes[:TOP])
        )


def plain_gradients(w: Workload) -> torch.Tensor:
    """d logit / d x for the TOP classes, one forward + backward of TOP copies."""
    x = w.x[None].expand(TOP, -1, -1, -1).clone().requires_grad_(True)
    logits = w.model.module(x)
    picked = logits.gather(1, torch.tensor(w.classes[:TOP], device=x.device)[:, None])
    (g,) = torch.autograd.grad(picked.sum(), x)
    return g


def folded_tinycnn(net: nn.Module) -> nn.Module:
    """A copy of tinycnn with bn2 folded into conv2 (Captum's LRP gives BN its own rule)."""
    net = copy.deepcopy(net)
    bn, conv = net.bn2, net.conv2
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(a[:, None, None, None])
        conv.bias.copy_((conv.bias - bn.running_mean) * a + bn.bias)
    net.bn2 = nn.Identity()
    return net


def set_captum_rules(net: nn.Module) -> nn.Module:
    """Captum's LRP deletes the rules after each call: set them before each."""
    net.bn2.rule = EpsilonRule(1e-9)  # Captum needs a rule on every leaf; this one passes R
    for layer in (net.conv1, net.conv2, net.conv3, net.fc):
        layer.rule = EpsilonRule(0.25)
    return net


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    ex = c.executor(w)
    targets = list(w.classes[:TOP])

    ours = c.ours_deep(w, ex, "deeplift", targets)
    ours_raw = torch.stack([a.raw for a in ours])
    matched = c.relative_error(ours_raw, captum_deeplift(w, True))
    default = c.relative_error(ours_raw, captum_deeplift(w, False))
    completeness = max(a.stats["completeness_error"] for a in ours)
    deeplift = versus_captum(
        w,
        settings,
        f"deeplift: top-{TOP} classes, zero baseline",
        {
            f"ours: grad chunk={auto.grad} (automatic, whole pairs)": lambda: c.ours_deep(
                w, ex, "deeplift", targets
            ),
            "captum: one batched call, ReLU6 as rescale": lambda: captum_deeplift(w, True),
            "captum: one batched call, default (ReLU6 left to autograd)": lambda: captum_deeplift(w, False),
        },
        {},
        [
            f"max relative difference vs Captum with ReLU6 as rescale: {matched:.1e}",
            f"vs Captum's default (ReLU6 plain gradient, not DeepLIFT): {default:.1e}",
            f"our completeness error |sum(attr) - (F(x) - F(x'))| / |F(x) - F(x')|: {completeness:.1e}",
        ],
    )

    lrp_maps = c.ours_deep(w, ex, "lrp", targets)
    lrp_effnet = versus_captum(
        w,
        settings,
        f"lrp (epsilon 0.25): top-{TOP} classes on {w.model.spec.name}",
        {
            f"ours: grad chunk={auto.grad} (automatic)": lambda: c.ours_deep(w, ex, "lrp", targets),
            "plain forward + backward of the same samples": lambda: plain_gradients(w),
        },
        {},
        [
            "Captum's LRP cannot run this model (SameConv2d has no rule, ReLU6, residual adds)",
            "relevance reaching the input / logit: "
            + ", ".join(f"{a.stats['relevance_sum'] / a.stats['score']:.2f}" for a in lrp_maps),
        ],
    )

    tiny = load_model("tinycnn", settings.device)
    xs = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(tiny.device)
    tiny_targets = [i % 10 for i in range(16)]
    tiny_ex = ChunkExecutor(tiny, ChunkSizes(16, 16))
    params = make_params("lrp", rule="epsilon", epsilon=0.25)
    captum_net = folded_tinycnn(tiny.module)

    def ours_tiny():
        return tiny_ex.run([get_method("lrp").plan(tiny, x, t, params) for x, t in zip(xs, tiny_targets)])

    def captum_tiny():
        return LRP(set_captum_rules(captum_net)).attribute(xs.clone(), target=tiny_targets)

    parity = c.relative_error(torch.stack([a.raw for a in ours_tiny()]), captum_tiny())
    tiny_table = versus_captum(
        w,
        settings,
        "lrp (epsilon 0.25): 16 tinycnn images, 16 targets",
        {"ours: one chunk of 16": ours_tiny, "captum: LRP, one call on the batch": captum_tiny},
        {},
        [f"max relative difference of the relevance maps: {parity:.1e}"],
    )
    return [deeplift, lrp_effnet, tiny_table]
