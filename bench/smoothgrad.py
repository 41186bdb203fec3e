"""SmoothGrad (n=50, sigma 0.15 of the input range): ours with the automatic chunk size against
Captum's NoiseTunnel(Saliency) at its default and at its best nt_samples_batch_size."""

from __future__ import annotations

from bench import contenders as c
from bench.deep import sweep_captum, versus_captum
from bench.report import Table
from bench.settings import Settings
from bench.workload import reference_workload

SUMMARY = "SmoothGrad n=50 vs Captum NoiseTunnel (default and best nt_samples_batch_size)"
N_SAMPLES = 50
SIGMA = 0.15
CAPTUM_SIZES = (1, 2, 4, 5, 8, 10, 16, 25)
QUICK_CAPTUM_SIZES = (2, 5, 10)


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    stdev = SIGMA * float(w.x.max() - w.x.min())  # the absolute stdev our plan derives
    best, sweep = sweep_captum(
        w,
        settings,
        "nt_samples_batch_size",
        settings.pick(CAPTUM_SIZES, QUICK_CAPTUM_SIZES),
        lambda s: lambda: c.captum_smoothgrad(w, N_SAMPLES, stdev, s),
    )
    ours = f"ours: chunk={auto.grad} (automatic)"
    main = versus_captum(
        w,
        settings,
        f"smoothgrad: n={N_SAMPLES}, sigma={SIGMA} (stdev {stdev:.3f})",
        {
            ours: lambda: c.ours_deep(
                w, c.executor(w), "smoothgrad", [w.target], n_samples=N_SAMPLES, sigma=SIGMA
            ),
            "captum: nt_samples_batch_size=None": lambda: c.captum_smoothgrad(
                w, N_SAMPLES, stdev, None
            ),
            f"captum: nt_samples_batch_size={best} (its best)": lambda: c.captum_smoothgrad(
                w, N_SAMPLES, stdev, best
            ),
        },
        {},
        ["DESIGN §6 sets no SmoothGrad goal; the noise draws differ, so no parity check"],
    )
    return [sweep, main]
