"""Fast pass (prediction + vanilla + input x gradient + Grad-CAM) against a plain
forward+backward and against Captum, for the top-1 and the top-3 classes.

Ours runs on the served copy of the model (BatchNorm folded into the convs, channels_last).
Captum is timed twice, side by side: on that same served copy (the algorithms compared on
equal footing; the DESIGN goals are held to these rows) and on the model as a user would hold
it (the checkpoint's architecture with BatchNorms, NCHW), which is what a user switching from
Captum to this service would see.
"""

from __future__ import annotations

from bench import contenders as c
from bench.progress import log
from bench.report import Table, at_least, time_rows
from bench.settings import Settings
from bench.timing import fastest, interleaved
from bench.workload import Workload, reference_workload, users_workload

SUMMARY = "fast pass vs plain forward+backward and Captum (top-1, top-3)"
OURS = "ours: fast pass"
PLAIN = "plain fwd+bwd (autograd.grad on x)"
RATIO = "t / t(ours)"
SERVED, USERS = "served copy", "user's model"


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    user = users_workload(settings.device)
    repeats = settings.pick(30, 8)
    return [
        _top1(w, user, repeats),
        _top3(w, user, repeats),
        _breakdown(w, max(repeats // 2, 5)),  # explanatory: fewer repeats suffice
    ]


def _top1(w: Workload, user: Workload, repeats: int) -> Table:
    log(f"  top-1: {repeats} interleaved repeats")
    captum = "captum: fwd + Saliency + LayerGradCam"
    on_served, on_user = f"{captum} ({SERVED})", f"{captum} ({USERS})"
    timings = interleaved(
        {
            OURS: lambda: c.ours_fast(w, 1),
            PLAIN: lambda: c.plain_forward_backward(w),
            on_served: lambda: c.captum_fast(w, 1, batched=False),
            on_user: lambda: c.captum_fast(user, 1, batched=False),
        },
        repeats,
        warmup=2,
        sync=w.sync,
    )
    goals = {
        PLAIN: at_least(1 / 1.1, "ours <= 1.1x plain (>= 0.91)"),
        on_served: at_least(1.6),
    }
    return Table(
        "fast: top-1 (prediction + vanilla + input x gradient + Grad-CAM)",
        "ms",
        OURS,
        RATIO,
        time_rows(timings, goals, {on_user: "informative: includes the serving-time model changes"}),
        [
            _parity(w, user),
            "ours and the plain pass run on the served copy (BatchNorm folded, channels_last); the plain "
            "pass feeds NCHW input, ours converts to channels_last first",
            f"{SERVED}: Captum on the very module we serve (the goal's row); {USERS}: Captum on the "
            "unfolded checkpoint architecture in NCHW, as a user would hold it",
        ],
    )


def _top3(w: Workload, user: Workload, repeats: int) -> Table:
    log(f"  top-3: {repeats} interleaved repeats")
    calls, batch = "captum: fwd + 3 x (Saliency + LayerGradCam)", "captum: fwd + batch-of-3 copies"
    contenders = {OURS: lambda: c.ours_fast(w, 3)}
    for where, wl in ((SERVED, w), (USERS, user)):
        contenders[f"{calls} ({where})"] = lambda wl=wl: c.captum_fast(wl, 3, batched=False)
        contenders[f"{batch} ({where})"] = lambda wl=wl: c.captum_fast(wl, 3, batched=True)
    timings = interleaved(contenders, repeats, warmup=2, sync=w.sync)
    notes, goals = {}, {}
    for where in (SERVED, USERS):
        ways = {k: v for k, v in timings.items() if k.endswith(f"({where})")}
        best = fastest(ways).name
        notes |= {name: "Captum's faster way" if name == best else "slower" for name in ways}
        if where == SERVED:
            goals[best] = at_least(2.5)
    return Table(
        "fast: top-3 targets (one forward, three backwards for ours)",
        "ms",
        OURS,
        RATIO,
        time_rows(timings, goals, notes),
        [
            f"the goal applies to the faster of Captum's two ways on the {SERVED}; the {USERS} rows "
            "(unfolded BatchNorms, NCHW) are what a user switching from Captum would see",
        ],
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


def _parity(w: Workload, user: Workload) -> str:
    ours = {a.method: a for a in c.ours_fast(w, 1).attributions}
    parts = []
    for where, wl in ((SERVED, w), (USERS, user)):
        ((sal, cam),) = c.captum_fast(wl, 1, batched=False)
        parts.append(
            f"{where}: vanilla |g| rel err {c.relative_error(ours['vanilla'].raw, sal):.1e}, "
            f"Grad-CAM (upsampled) {c.relative_error(ours['gradcam'].map, cam):.1e}"
        )
    return "parity with Captum: " + "; ".join(parts)
