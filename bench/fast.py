"""Fast pass (prediction + vanilla + input x gradient + Grad-CAM) against a plain
forward+backward and against Captum, for the top-1 and the top-3 classes."""

from __future__ import annotations

from bench import contenders as c
from bench.progress import log
from bench.report import Table, at_least, time_rows
from bench.settings import Settings
from bench.timing import fastest, interleaved
from bench.workload import Workload, reference_workload

SUMMARY = "fast pass vs plain forward+backward and Captum (top-1, top-3)"
OURS = "ours: fast pass"
PLAIN = "plain fwd+bwd (autograd.grad on x)"
RATIO = "t / t(ours)"


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    repeats = settings.pick(30, 8)
    return [
        _top1(w, repeats),
        _top3(w, repeats),
        _breakdown(w, max(repeats // 2, 5)),  # explanatory: fewer repeats suffice
    ]


def _top1(w: Workload, repeats: int) -> Table:
    log(f"  top-1: {repeats} interleaved repeats")
    captum = "captum: fwd + Saliency + LayerGradCam"
    timings = interleaved(
        {
            OURS: lambda: c.ours_fast(w, 1),
            PLAIN: lambda: c.plain_forward_backward(w),
            captum: lambda: c.captum_fast(w, 1, batched=False),
        },
        repeats,
        warmup=2,
        sync=w.sync,
    )
    goals = {
        PLAIN: at_least(1 / 1.1, "ours <= 1.1x plain (>= 0.91)"),
        captum: at_least(1.6),
    }
    return Table(
        "fast: top-1 (prediction + vanilla + input x gradient + Grad-CAM)",
        "ms",
        OURS,
        RATIO,
        time_rows(timings, goals),
        [_parity(w), "the plain pass feeds NCHW input; ours converts to channels_last first"],
    )


def _top3(w: Workload, repeats: int) -> Table:
    log(f"  top-3: {repeats} interleaved repeats")
    calls, batch = "captum: fwd + 3 x (Saliency + LayerGradCam)", "captum: fwd + batch-of-3 copies"
    timings = interleaved(
        {
            OURS: lambda: c.ours_fast(w, 3),
            calls: lambda: c.captum_fast(w, 3, batched=False),
            batch: lambda: c.captum_fast(w, 3, batched=True),
        },
        repeats,
        warmup=2,
        sync=w.sync,
    )
    best = fastest({k: v for k, v in timings.items() if k != OURS}).name
    notes = {name: "Captum's faster way" if name == best else "slower" for name in (calls, batch)}
    return Table(
        "fast: top-3 targets (one forward, three backwards for ours)",
        "ms",
        OURS,
        RATIO,
        time_rows(timings, {best: at_least(2.5)}, notes),
        ["the goal applies to the faster of Captum's two ways"],
    )


def _breakdown(w: Workload, repeats: int) -> Table:
    """Where the fast pass's time goes, against the plain forward+backward."""
    log(f"  breakdown: {repeats} interleaved repeats")
    timings = interleaved(
        {
            PLAIN: lambda: c.plain_forward_backward(w),
            "ours: prediction only (inference_mode)": lambda: c.ours_fast(w, 1, ()),
            "ours: vanilla only": lambda: c.ours_fast(w, 1, ("vanilla",)),
            "ours: vanilla + input x gradient": lambda: c.ours_fast(
                w, 1, ("vanilla", "input_x_gradient")
            ),
            "ours: gradcam only": lambda: c.ours_fast(w, 1, ("gradcam",)),
            OURS: lambda: c.ours_fast(w, 1),
        },
        repeats,
        warmup=1,
        sync=w.sync,
    )
    return Table(
        "fast: breakdown (top-1), against the plain forward+backward",
        "ms",
        PLAIN,
        "t / t(plain)",
        time_rows(timings),
    )


def _parity(w: Workload) -> str:
    ours = {a.method: a for a in c.ours_fast(w, 1).attributions}
    ((sal, cam),) = c.captum_fast(w, 1, batched=False)
    return (
        f"parity with Captum: vanilla |g| rel err {c.relative_error(ours['vanilla'].raw, sal):.1e}, "
        f"Grad-CAM (upsampled) rel err {c.relative_error(ours['gradcam'].map, cam):.1e}"
    )
