"""`saliency report sanity`: run the sanity checks on a model and bundled photographs, and write
a Markdown report with a pass/fail table, the numbers, and matplotlib plots.

Tests and pass criteria (fixed here, stated in the report):
- model randomisation, cascading and independent (sanity.py): pass when the rank correlation
  of |maps| between original and randomised model, averaged over images and over the
  randomised layers, is below PASS_BELOW. The mean over the cascade, not its last step: with
  every layer down to the stem randomised nothing of the model is left, and every method
  "passes" that step (the report shows it).
- data randomisation (data_randomisation.py, tinycnn on digits): the same measure between
  the true-label and the shuffled-label model, below PASS_BELOW.
- input invariance (invariance.py): relative change below CHANGE_TOLERANCE.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saliency.attribution.registry import get_method, make_params
from saliency.attribution.tuning import chunk_sizes_for
from saliency.imaging import to_model_input
from saliency.models import load_model
from saliency.models.weights import weights_hash
from saliency.quality.data_randomisation import DataRandomisationResult, data_randomisation
from saliency.quality.invariance import (
    CHANGE_TOLERANCE,
    InvarianceResult,
    Variant,
    ig_variants,
    input_invariance,
)
from saliency.quality.sanity import MODES, SanityResult, model_randomisation
from saliency.quality.similarity import SIMILARITY_FIELDS
from saliency.reports import plots

PASS_BELOW = 0.5
CONTROL_MARGIN = 0.05  # data randomisation: closer than this to the control = inconclusive
SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")  # skimage.data photographs
# The seed's expected outcome of model randomisation (Adebayo et al. 2018): True = passes.
SEED_EXPECTS = {
    "vanilla": True, "smoothgrad": True, "ig": True, "gradcam": True,
    "guided_backprop": False, "guided_gradcam": False,
}
SHIFT = 1.0  # input invariance: the constant added in the model's input space


def report_methods() -> dict[str, Any]:
    """The methods compared, at settings cheap enough for a CPU run (IG 16 steps, SmoothGrad
    and GradientSHAP 8 samples): the seed's six, then the propagation and SHAP methods, which
    the seed sets no expectation for."""
    return {
        "vanilla": make_params("vanilla"),
        "smoothgrad": make_params("smoothgrad", n_samples=8),
        "ig": make_params("ig", n_steps=16),
        "gradcam": make_params("gradcam"),
        "guided_backprop": make_params("guided_backprop"),
        "guided_gradcam": make_params("guided_gradcam"),
        "deeplift": make_params("deeplift"),
        "lrp": make_params("lrp"),
        "gradient_shap": make_params("gradient_shap", n_samples=8),
    }


def short_layer(name: str) -> str:
    """`_blocks.15` -> `b15`, `_conv_head` -> `head`, `_fc` -> `fc`: for plot axes."""
    name = name.lstrip("_")
    if name.startswith("blocks."):
        return "b" + name.split(".", 1)[1]
    return name.removeprefix("conv_")


@dataclass
class SanityReport:
    model: str
    images: tuple[str, ...]
    methods: dict[str, Any]
    sanity: SanityResult
    data: list[DataRandomisationResult]  # one per training seed
    invariance: dict[str, InvarianceResult]
    seconds: dict[str, float]
    weights_sha256: str


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n for the block (process-wide: CLI runs only)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_images(names: Sequence[str]) -> list[np.ndarray]:
    from skimage import data

    return [np.ascontiguousarray(getattr(data, name)()[..., :3], dtype=np.uint8) for name in names]


def run_report(
    model_name: str,
    n_images: int,
    layers: Sequence[str] | None = None,
    epochs: int = 100,
    n_digits: int = 16,
    seed: int = 0,
    progress: Callable[[str], None] = print,
    data_seeds: int = 3,
) -> SanityReport:
    """Every check of the report on the first `n_images` bundled photographs.

    Data randomisation is repeated for `data_seeds` training seeds: how alike two trained
    tinycnn's maps are varies from seed to seed more than over test images."""
    if not 1 <= n_images <= len(SAMPLES):
        raise ValueError(f"--images {n_images} is outside [1, {len(SAMPLES)}]")
    model = load_model(model_name)
    names = SAMPLES[:n_images]
    images = [to_model_input(rgb, model.spec) for rgb in sample_images(names)]
    methods = report_methods()
    chunks = chunk_sizes_for(model)
    served = weights_hash(model.module)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def step(done: int, total: int, what: str) -> None:
        progress(f"model randomisation [{done}/{total}] {what} ({time.perf_counter() - started:.0f} s)")

    sanity = model_randomisation(
        model, images, methods, layers, MODES, seed=seed, chunk_sizes=chunks, progress=step, keep_maps=True
    )
    seconds["model randomisation"] = time.perf_counter() - started

    mark = time.perf_counter()
    progress(f"data randomisation: training tinycnn on digits, {epochs} epochs x 3 models x {data_seeds} seeds")
    data = []
    with torch_threads(1):  # tinycnn is too small for intra-op threads: they only add waiting
        for s in range(seed, seed + data_seeds):
            data.append(data_randomisation(
                methods, epochs=epochs, n_images=n_digits, seed=s,
                progress=lambda m, s=s: progress(f"data randomisation, seed {s}: {m}"),
            ))
    seconds["data randomisation"] = time.perf_counter() - mark

    mark = time.perf_counter()
    progress(f"input invariance: shift {SHIFT:g} absorbed into the first layer")
    variants = [Variant(name, name, params) for name, params in methods.items() if name != "ig"]
    variants.append(Variant("input_x_gradient", "input_x_gradient", make_params("input_x_gradient")))
    variants += ig_variants(methods["ig"], SHIFT, images[0].shape)
    invariance = input_invariance(model, images, variants, SHIFT, sanity.targets, chunks)
    seconds["input invariance"] = time.perf_counter() - mark
    if weights_hash(model.module) != served:
        raise RuntimeError("the model's weights changed during the report: a bug")
    return SanityReport(model_name, names, methods, sanity, data, invariance, seconds, served)


# --------------------------------------------------------------------------------- verdicts


def cascade_mean(report: SanityReport, mode: str, method: str, field: str = "spearman_abs") -> float:
    """The similarity averaged over images and over the randomised layers of one schedule."""
    values = [getattr(report.sanity.get(mode, layer, method).similarity, field) for layer in report.sanity.layers]
    return float(np.mean(values))


def data_mean(report: SanityReport, method: str) -> tuple[float, float]:
    """(true vs shuffled, control) Spearman |map| of `method`, mean over training seeds."""
    similarity = float(np.mean([d.similarity[method].spearman_abs for d in report.data]))
    control = [d.control[method].spearman_abs for d in report.data if d.control]
    return similarity, float(np.mean(control)) if control else float("nan")


def verdict(value: float, passes: bool) -> str:
    return f"{'PASS' if passes else 'FAIL'} {value:.2f}"


def _percent(value: float) -> str:
    if value == 0:
        return "0 %"
    if value < 1e-4:
        return "< 0.01 %"
    return f"{100 * value:.2f} %" if value < 0.01 else f"{100 * value:.0f} %"


def invariance_cell(report: SanityReport, method: str) -> str:
    if method == "ig":
        zero, moved = report.invariance["ig_zero_baseline"], report.invariance["ig_shifted_baseline"]
        return (
            f"zero baseline {'FAIL' if zero.changes else 'PASS'} {_percent(zero.mean_change)}; "
            f"shifted baseline {'FAIL' if moved.changes else 'PASS'} {_percent(moved.mean_change)}"
        )
    r = report.invariance[method]
    return f"{'FAIL' if r.changes else 'PASS'} {_percent(r.mean_change)}"


def summary_rows(report: SanityReport) -> list[list[str]]:
    rows = []
    for method in report.methods:
        cascading = cascade_mean(report, "cascading", method)
        independent = cascade_mean(report, "independent", method)
        ssim = cascade_mean(report, "cascading", method, "ssim")
        data, control = data_mean(report, method)
        # Inconclusive when two models trained on the true labels agree no better than the
        # true- and the shuffled-label model.
        caveat = "; no more alike than two true-label models" if data > control - CONTROL_MARGIN else ""
        expected = SEED_EXPECTS.get(method)
        ours = cascading < PASS_BELOW
        rows.append([
            method,
            f"{verdict(cascading, ours)} (SSIM {ssim:.2f})",
            verdict(independent, independent < PASS_BELOW),
            f"{verdict(data, data < PASS_BELOW)} (control {control:.2f}{caveat})",
            invariance_cell(report, method),
            "-" if expected is None else ("pass" if expected else "fail"),
            "-" if expected is None else ("yes" if expected == ours else "**no**"),
        ])
    return rows


def disagreements(report: SanityReport) -> list[str]:
    """A sentence, with the numbers, per method whose cascading verdict differs from the seed's."""
    notes = []
    for method, expected in SEED_EXPECTS.items():
        if method not in report.methods:
            continue
        value = cascade_mean(report, "cascading", method)
        if (value < PASS_BELOW) == expected:
            continue
        per_layer = ", ".join(
            f"{short_layer(layer)} {report.sanity.get('cascading', layer, method).similarity.spearman_abs:.2f}"
            for layer in report.sanity.layers
        )
        ssim = cascade_mean(report, "cascading", method, "ssim")
        hog = cascade_mean(report, "cascading", method, "hog")
        notes.append(
            f"- **{method}**: the seed expects it to {'pass' if expected else 'fail'}; here the mean rank "
            f"correlation over the cascade is {value:.2f} ({'<' if value < PASS_BELOW else '>='} {PASS_BELOW}), "
            f"so it {'passes' if value < PASS_BELOW else 'fails'}. Per layer (Spearman |map|): {per_layer}. "
            f"Mean SSIM {ssim:.2f}, mean HOG similarity {hog:.2f}."
        )
    return notes


# ------------------------------------------------------------------------------------ write


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(report: SanityReport, out: Path) -> list[Path]:
    """report.md, sanity.json and the PNGs into `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [*_write_plots(report, out)]
    (out / "sanity.json").write_text(json.dumps(_numbers(report), indent=1))
    written.append(out / "sanity.json")
    (out / "report.md").write_text(_markdown(report))
    written.append(out / "report.md")
    return written


def _write_plots(report: SanityReport, out: Path) -> list[Path]:
    layers = report.sanity.layers
    labels = [short_layer(layer) for layer in layers]
    written = []
    titles = {"spearman_abs": "Spearman |map|", "spearman_signed": "Spearman (signed)", "ssim": "SSIM", "hog": "HOG similarity"}
    for mode in MODES:
        panels = []
        for field in SIMILARITY_FIELDS:
            series = {
                method: [getattr(report.sanity.get(mode, layer, method).similarity, field) for layer in layers]
                for method in report.methods
            }
            threshold = PASS_BELOW if field == "spearman_abs" else None
            panels.append(plots.LinePanel(titles[field], series, threshold))
        title = f"{report.model}: similarity of each map to the original model's, {mode} randomisation"
        written.append(plots.line_panels(out / f"{mode}.png", panels, labels, title=title))
    photo = sample_images(report.images[:1])[0]
    rows = []
    for i, method in enumerate(report.methods):
        signed = get_method(method).signed
        maps = [report.sanity.maps[("original", "")][method]]
        maps += [report.sanity.maps[("cascading", layer)][method] for layer in layers]
        tiles = [photo if i == 0 else None]  # the photograph once, top left
        rows.append((method, tiles + [plots.normalized_map(m.numpy(), signed) for m in maps]))
    title = f"{report.model}: maps as the cascade randomises layers, top first"
    written.append(plots.image_grid(out / "cascade_grid.png", rows, ["image", "original", *labels], title=title))
    return written


def _numbers(report: SanityReport) -> dict:
    return {
        "model": report.model,
        "images": list(report.images),
        "targets": list(report.sanity.targets),
        "layers": list(report.sanity.layers),
        "weights_sha256": report.weights_sha256,
        "model_randomisation": [
            {"mode": r.mode, "layer": r.layer, "method": r.method, **asdict(r.similarity),
             "per_image": [asdict(s) for s in r.per_image]}
            for r in report.sanity.results
        ],
        "data_randomisation": [
            {
                "epochs": d.epochs,
                "accuracy": d.accuracy,
                "similarity": {m: asdict(s) for m, s in d.similarity.items()},
                "control": {m: asdict(s) for m, s in (d.control or {}).items()},
            }
            for d in report.data
        ],
        "input_invariance": {k: list(v.relative_change) for k, v in report.invariance.items()},
        "seconds": report.seconds,
    }


def _markdown(report: SanityReport) -> str:
    layers = report.sanity.layers
    settings = ", ".join(
        f"{name}" + ("" if not _nondefault(name, p) else f" ({_nondefault(name, p)})") for name, p in report.methods.items()
    )
    lines = [
        f"# Sanity checks: {report.model}",
        "",
        f"Generated by `saliency report sanity --model {report.model} --images {len(report.images)}` "
        f"(torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} intra-op thread(s); "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()) + "). "
        "Design and criteria: [docs/faithfulness.md](../faithfulness.md).",
        "",
        f"- Images: {', '.join(f'{n} (class {t})' for n, t in zip(report.images, report.sanity.targets))}; "
        "each map explains the original model's top-1 class, before and after randomisation.",
        f"- Methods: {settings}.",
        f"- Layers, top first: {', '.join(f'`{layer}`' for layer in layers)}.",
        f"- The served model's weights (SHA-256 `{report.weights_sha256[:16]}...`) were unchanged after the run.",
        "",
        "## Summary",
        "",
        f"Model and data randomisation: the Spearman rank correlation of |maps| between the original "
        f"and the randomised model (1 = unchanged), averaged over images and randomised layers; "
        f"**PASS** below {PASS_BELOW} (the map depends on what the model learnt). The mean SSIM over "
        "the cascade is shown beside it: structure that survives randomisation. Input invariance: "
        f"relative change of the map; **PASS** below {CHANGE_TOLERANCE:.0%}.",
        "",
        _table(
            ["method", "cascading randomisation", "independent randomisation",
             "data randomisation (tinycnn, digits)", "input invariance",
             "seed expects (model randomisation)", "agrees"],
            summary_rows(report),
        ),
        "",
        "### Against the seed's expected table",
        "",
        "The seed expects vanilla gradient, SmoothGrad, IG and Grad-CAM to pass model randomisation "
        "and guided backpropagation and guided Grad-CAM to fail (Adebayo et al. 2018).",
        "",
    ]
    notes = disagreements(report)
    lines += notes if notes else ["Every verdict agrees with the seed's table."]
    lines += [
        "",
        "Why the mean over the cascade and not its last step: at the last step (everything down to "
        "the stem randomised) every method is far from its original map:",
        "",
        _table(
            ["method", *(short_layer(layer) for layer in layers)],
            [
                [m, *(f"{report.sanity.get('cascading', layer, m).similarity.spearman_abs:.2f}" for layer in layers)]
                for m in report.methods
            ],
        ),
        "",
        "![similarity vs randomised layer, cascading](cascading.png)",
        "",
        "![cascade grid](cascade_grid.png)",
        "",
        f"The grid: {report.images[0]}, each method's map for the original model, then after each "
        "cascading step (every layer from the output down to the named one randomised).",
        "",
        "## Independent randomisation",
        "",
        "![similarity vs randomised layer, independent](independent.png)",
        "",
    ]
    for mode in MODES:
        lines += [f"## All numbers: {mode} (mean over images)", ""]
        rows = []
        for layer in layers:
            for m in report.methods:
                s = report.sanity.get(mode, layer, m).similarity
                rows.append([f"`{layer}`", m, *(f"{getattr(s, f):.3f}" for f in SIMILARITY_FIELDS)])
        lines += [_table(["layer", "method", *SIMILARITY_FIELDS], rows), ""]
    lines += [
        "## Data randomisation (tinycnn on scikit-learn's digits)",
        "",
        f"For each of {len(report.data)} seeds, tinycnn is trained {report.data[0].epochs} epochs on true "
        "labels, on shuffled labels, and (control) on true labels from the next seed's initial "
        "weights; maps of the first test images are compared for their true class. The control "
        "says how alike the maps of two equally good models are: a method whose true-vs-shuffled "
        "similarity is no lower than that cannot be told apart by this check.",
        "",
        _table(
            ["seed", "true test acc.", "shuffled train / test acc.", "control test acc."],
            [
                [str(i), f"{d.accuracy['true_test']:.3f}",
                 f"{d.accuracy['shuffled_train']:.3f} / {d.accuracy['shuffled_test']:.3f}",
                 f"{d.accuracy.get('control_test', float('nan')):.3f}"]
                for i, d in enumerate(report.data)
            ],
        ),
        "",
        "The shuffled-label model memorises little of the noise (tinycnn has ~4k parameters; Adebayo "
        "et al. trained networks that reach high training accuracy on random labels).",
        "",
        _table(
            ["method", "true vs shuffled: Spearman |map| per seed", "mean", "control per seed", "mean"],
            [
                [m,
                 " / ".join(f"{d.similarity[m].spearman_abs:.2f}" for d in report.data), f"{data_mean(report, m)[0]:.2f}",
                 " / ".join(f"{d.control[m].spearman_abs:.2f}" for d in report.data if d.control),
                 f"{data_mean(report, m)[1]:.2f}"]
                for m in report.methods
            ],
        ),
        "",
        "## Input invariance",
        "",
        f"The second model's first layer absorbs a constant shift of {SHIFT:g} (model-input units), so "
        "it computes exactly what the first computes on the unshifted input. Relative L2 change of "
        "each map, mean over images:",
        "",
        _table(["variant", "relative change", "verdict"], [
            [label, _percent(r.mean_change), "changes (FAIL)" if r.changes else "invariant (PASS)"]
            for label, r in report.invariance.items()
        ]),
        "",
    ]
    return "\n".join(lines)


def _nondefault(name: str, params: Any) -> str:
    default = get_method(name).params_type()
    changed = [f.name for f in fields(params) if f.compare and getattr(params, f.name) != getattr(default, f.name)]
    return ", ".join(f"{k}={getattr(params, k)}" for k in changed)


def format_sanity_rows(rows: Sequence[Any]) -> str:
    """A text table of (mode, layer, method, spearman_abs, spearman_signed, ssim, hog) rows."""
    lines = [f"{'randomisation':<13} {'layer':<14} {'method':<16} {'spearman|.|':>11} {'spearman':>9} {'ssim':>7} {'hog':>7}"]
    for r in rows:
        lines.append(
            f"{r.mode:<13} {r.layer:<14} {r.method:<16} {r.spearman_abs:>11.3f} {r.spearman_signed:>9.3f} "
            f"{r.ssim:>7.3f} {r.hog:>7.3f}"
        )
    return "\n".join(lines)
