"""`saliency report roar`: run ROAR (and KAR) per model, the trained-ViT checks, and write
report.md, roar.json and the matplotlib plots (drawn through `plots.new_figure`: no pyplot)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saliency.quality import digits
from saliency.quality.roar import (
    DEFAULT_METHODS,
    FRACTIONS,
    MODELS,
    QUICK_FRACTIONS,
    QUICK_METHODS,
    RoarResult,
    compare_to_random,
    run_roar,
    seed_claims,
    work_units,
)
from saliency.reports.trained_vit import (
    ACCURACY_FLOOR,
    AGREEMENT_PAIRS,
    SANITY_LAYERS,
    TrainedVitReport,
    run_trained_vit,
)

PASS_BELOW = 0.5  # model / data randomisation: mean Spearman |map| below this passes (as report.py)


@dataclass(frozen=True)
class RoarOptions:
    """What `report roar` runs. kar: the models that also get KAR (it doubles the retrainings,
    so the full run leaves it out; the quick run has it on tinycnn)."""

    models: tuple[str, ...] = ("tinycnn", "tinyvit_digits")
    methods: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_METHODS))
    fractions: tuple[float, ...] = FRACTIONS
    seeds: int = 3
    kar: tuple[str, ...] = ()
    trained_vit: bool = True
    seed: int = 0
    quick: bool = False


def quick_options() -> RoarOptions:
    """A few methods, three fractions, one seed: the whole path in well under a minute."""
    return RoarOptions(methods=dict(QUICK_METHODS), fractions=QUICK_FRACTIONS, seeds=1, kar=("tinycnn",),
                       trained_vit=False, quick=True)


@dataclass
class RoarReport:
    options: RoarOptions
    results: list[RoarResult]
    vit: TrainedVitReport | None
    seconds: dict[str, float]
    environment: str
    complete: bool = True  # False: written after some models, the run still going


def run_report(options: RoarOptions, bar: Any = None, say: Callable[[str], None] | None = None,
               partial: Callable[[RoarReport], None] | None = None) -> RoarReport:
    """Every model's ROAR (with a tqdm-like `bar`: .update(n), .set_description(s)), then the
    trained-ViT checks. partial: called with the report so far after each model (a long run
    that is stopped keeps what it finished)."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def progress(what: str, done: int) -> None:
        if bar is not None:
            bar.set_description(what, refresh=False)
            bar.update(done)

    if bar is not None:
        bar.total = sum(work_units(m, len(options.methods[m]), len(options.fractions), options.seeds, m in options.kar)
                        for m in options.models)
    results = []
    for model in options.models:
        t0 = time.perf_counter()
        results.append(run_roar(model, options.methods[model], options.fractions, options.seeds,
                                model in options.kar, options.seed, progress))
        seconds[f"roar_{model}"] = time.perf_counter() - t0
        if partial is not None:
            partial(RoarReport(options, list(results), None, {**seconds, "total": time.perf_counter() - started},
                               _environment(), complete=False))
    vit = None
    if options.trained_vit:
        t0 = time.perf_counter()
        vit = run_trained_vit(progress=say)
        seconds["trained_vit"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    return RoarReport(options, results, vit, seconds, _environment())


def _environment() -> str:
    return f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} intra-op thread(s)"


# --- writing ------------------------------------------------------------------------------------

def _pct(k: float) -> str:
    return f"{round(k * 100)} %"


def _cell(result: RoarResult, method: str, k: float, kind: str = "roar") -> str:
    mean, std = result.mean_std(method, k, kind)
    return f"{mean:.3f} ± {std:.3f}" if len(result.seeds) > 1 else f"{mean:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _accuracy_table(result: RoarResult, kind: str) -> list[str]:
    header = ["method", *(f"k = {_pct(k)}" for k in result.fractions), "mean k > 0", "vs random"]
    rows = []
    table = getattr(result, kind)
    for method in table:
        mean = result.curve_mean(method, kind).mean()
        if method == "random" or "random" not in table:
            versus = "-"
        else:
            c = compare_to_random(result, method, kind)
            verdict = "lower" if c.better_than_random else "higher" if c.worse_than_random else "same"
            versus = f"{c.difference:+.3f} ± {c.stderr:.3f} ({verdict})"
        rows.append([method, *(_cell(result, method, k, kind) for k in result.fractions), f"{mean:.3f}", versus])
    return _table(header, rows)


def _settings(result: RoarResult) -> str:
    parts = []
    for m in result.methods.values():
        if m.engine is None:
            parts.append(f"{m.label} (control)")
        else:
            extra = ", ".join(f"{k}={v}" for k, v in m.params.items())
            name = m.label if m.label == m.engine else f"{m.label} = {m.engine}"
            parts.append(name + (f" ({extra})" if extra else ""))
    return "; ".join(parts)


def _claims_section(results: Sequence[RoarResult]) -> list[str]:
    lines = ["## Against the seed's claims", "",
             "Hooker et al. (2019) found, on ImageNet, Birdsnap and Food-101 with ResNet-50: guided "
             "backprop, guided Grad-CAM and Integrated Gradients do no better than removing random pixels, "
             "while SmoothGrad² and VarGrad make accuracy fall far more than random. Here a method is "
             "*better than random* when its ROAR accuracy averaged over k > 0 is lower than the random "
             "control's by more than two standard errors over the retraining seeds (the column \"vs random\").",
             ""]
    any_claim = False
    for result in results:
        for claim in seed_claims(result):
            any_claim = True
            c = claim.comparison
            seen = ("better than random" if c.better_than_random else
                    "worse than random" if c.worse_than_random else "no different from random")
            verdict = "**agrees**" if claim.agrees else "**disagrees**"
            lines.append(f"- {result.model}: *{claim.text}* — {verdict}: mean accuracy {c.mean:.3f} against "
                         f"random's {c.random_mean:.3f} (difference {c.difference:+.3f} ± {c.stderr:.3f}), "
                         f"i.e. {seen}.")
    if not any_claim:
        lines.append("- None of the claimed methods was run (with the random control) in this report.")
    for result in results:
        others = [m for m in result.roar if m != "random"]
        if "random" in result.roar and others and all(compare_to_random(result, m).worse_than_random for m in others):
            lines += ["", f"Caveat ({result.model}): every method here, the Sobel control included, leaves accuracy "
                      "*higher* than random removal does (\"Reading the numbers\" says why). So the \"no better than "
                      "random\" agreements hold for every method, not for these three in particular, and SmoothGrad² "
                      "and VarGrad miss the \"large drops\" claim along with all the others. Among the methods, "
                      "lowest accuracy first: " + ", ".join(
                          f"{m} {result.curve_mean(m).mean():.3f}" for m in sorted(others, key=lambda m: result.curve_mean(m).mean()))
                      + "."]
    return lines


def _vit_section(vit: TrainedVitReport) -> list[str]:
    a = vit.accuracy
    lines = [
        "## The trained ViT (`tinyvit_digits`)", "",
        f"Test accuracy ({len(digits.digit_split('tinyvit').y_test)} held-out digits): tinyvit_digits **{a['tinyvit_digits']:.3f}** (floor asserted in "
        f"tests: {ACCURACY_FLOOR}), the tinycnn baseline {a['tinycnn_digits']:.3f}, the random-weight tinyvit "
        f"{a['tinyvit_random']:.3f}.", "",
        "### Sanity checks", "",
        f"Mean Spearman |map| to the trained model's map ({vit.n_sanity_images} test images, their true class; PASS below "
        f"{PASS_BELOW}). Model randomisation over {', '.join(f'`{x}`' for x in SANITY_LAYERS)} (top first; "
        f"the CLS token and position embedding are parameters of the root module and stay). Data "
        f"randomisation: tinyvit trained on shuffled labels (train accuracy "
        f"{vit.shuffled_accuracy['train']:.3f}, test {vit.shuffled_accuracy['test']:.3f}); the control is a "
        f"second true-label model from the next seed.", "",
    ]
    rows = []
    for m in vit.cascading:
        cells = [m]
        for value in (vit.cascading[m], vit.independent[m], vit.data_randomisation[m]):
            cells.append(f"{'PASS' if value < PASS_BELOW else 'FAIL'} {value:.2f}")
        cells.append(f"{vit.data_control[m]:.2f}")
        cells += [f"{vit.cascade_layers[m][layer]:.2f}" for layer in SANITY_LAYERS]
        rows.append(cells)
    lines += _table(["method", "cascading", "independent", "data randomisation", "data control",
                     *(f"cascade: {layer}" for layer in SANITY_LAYERS)], rows)
    lines += ["", "### Attention vs gradient", "",
              f"Per test image ({vit.n_agreement_images}), the Spearman rank correlation over the 16 patches of the attention-rollout "
              "map with |IG| (32 steps, zero baseline) and with |gradient × input|, each summed per patch, for "
              "the predicted class; mean ± std over images and the share of images with a positive "
              "correlation. \"ink\" is the mean pixel value of each patch (where the digit is). The same "
              "model's random initial weights (`tinyvit`) are the control.", ""]
    rows = []
    for model, s in vit.agreement.items():
        rows.append([model, *(f"{s[f'{k}_mean']:.2f} ± {s[f'{k}_std']:.2f} ({s[f'{k}_positive']:.0%} > 0)"
                              for k in AGREEMENT_PAIRS)])
    lines += _table(["model", "rollout vs IG", "rollout vs grad × input", "IG vs grad × input", "rollout vs ink",
                     "IG vs ink"], rows)
    lines += ["", f"Rollout of the trained model against rollout of its random initial weights, per patch, same "
              f"images: mean Spearman {vit.rollout_vs_random:.2f}."]
    return lines


def markdown(report: RoarReport) -> str:
    o = report.options
    command = "saliency report roar" + (" --quick" if o.quick else "")
    lines = [
        "# ROAR: remove and retrain (Hooker et al. 2019) on scikit-learn's digits", "",
        f"Generated by `{command}` ({report.environment}; {report.seconds['total']:.0f} s in all: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items() if k != "total") + "). "
        "Design: `service/saliency/quality/roar.py`; every number is in [roar.json](roar.json).", "",
        *([] if report.complete else ["**Partial: written after the models below; the run had not finished.**", ""]),
        "For each method and fraction k, the k % of pixels of every training and test image that the "
        "method ranks most important (|map|, ties in a seeded random order) are replaced by the training "
        "set's per-channel mean; a model of the same architecture is trained **from scratch** on the "
        "modified training set and tested on the modified test set. Maps come from the engine "
        "(`Engine.explain`: the fast pass or the batched chunk executor) for the explained model's "
        "predicted class; the explained model is trained once on the unmodified digits. Controls: "
        "uniformly random maps and a Sobel edge magnitude of the image (it knows nothing of the model). "
        f"Each cell is the mean ± std test accuracy over {o.seeds} retraining seed(s). "
        "KAR KAR (keep and retrain) removes the k % *least* important pixels instead: "
        "there a faithful ranking keeps accuracy up.", "",
        "![test accuracy against k per method](roar.png)", "",
    ]
    for result in report.results:
        lines += [f"## {result.model} ({result.architecture} at {result.input_size}x{result.input_size})", "",
                  f"Explained model: test accuracy {result.explained_accuracy:.3f}. Replacement value (training "
                  f"mean, model input space): {', '.join(f'{v:.3f}' for v in result.fill)}. Methods: "
                  f"{_settings(result)}.", "", "ROAR, test accuracy:", ""]
        lines += _accuracy_table(result, "roar")
        if result.kar:
            lines += ["", "KAR, test accuracy (higher = the kept pixels carry the evidence):", ""]
            lines += _accuracy_table(result, "kar")
        lines.append("")
    lines += _claims_section(report.results)
    lines += ["", *_reading(report)]
    if report.vit is not None:
        lines += ["", *_vit_section(report.vit)]
    lines += ["", "## Reproduce", "",
              "```", "saliency report roar --out docs/roar          # the full run (nice -n 10 on a shared machine)",
              "saliency report roar --quick --out /tmp/roar  # a few methods, k in {0, 50, 90}, one seed", "```",
              "", "Training is seeded (weights and batch order); the same machine, torch version and thread count "
              "give the same numbers. Trained weights are cached under `$SALIENCY_CACHE_DIR` "
              "(default `~/.cache/saliency`), keyed by the SHA-256 of the recipe, the data and torch's version."]
    return "\n".join(lines) + "\n"


def _reading(report: RoarReport) -> list[str]:
    """What the numbers say, computed from them (not a fixed text)."""
    lines = ["## Reading the numbers", ""]
    for result in report.results:
        if "random" not in result.roar:
            continue
        ranked = sorted(result.roar, key=lambda m: result.curve_mean(m).mean())
        better = [m for m in result.roar if m != "random" and compare_to_random(result, m).better_than_random]
        worse = [m for m in result.roar if m != "random" and compare_to_random(result, m).worse_than_random]
        lines.append(f"- {result.model}: lowest ROAR accuracy (mean over k > 0) first: "
                     + ", ".join(f"{m} {result.curve_mean(m).mean():.3f}" for m in ranked) + ". "
                     f"Better than random: {', '.join(better) or 'none'}; worse than random: {', '.join(worse) or 'none'}.")
    lines += ["- A method can do *worse* than random under ROAR when the removal pattern itself is evidence: "
              "the replaced pixels take one value (the training mean) that neither background nor ink has, so "
              "removing the most important pixels of a digit draws the digit's strokes in that value, and a "
              "retrained model reads the class off the mask's shape (the leakage Rong et al. 2022, \"ROAD\", "
              "describe). Random removal leaves no such shape. On 8x8 digits upsampled to 16 or 32 pixels, where "
              "strokes are most of the informative pixels, the effect is large; Hooker et al.'s natural images "
              "hide it better. ROAR on this data therefore ranks how well a map *hides* the class as much as how "
              "well it finds the evidence; KAR, where the kept pixels are the important ones, is the cleaner "
              "reading of faithfulness here."]
    return lines


def numbers(report: RoarReport) -> dict:
    """roar.json: every number of the report."""
    def per_kind(result: RoarResult, kind: str) -> dict:
        return {m: {str(k): v for k, v in table.items()} for m, table in getattr(result, kind).items()}

    return {
        "options": {**asdict(report.options)},
        "complete": report.complete,
        "environment": report.environment,
        "seconds": report.seconds,
        "models": [
            {
                "model": r.model, "architecture": r.architecture, "input_size": r.input_size,
                "fractions": list(r.fractions), "seeds": list(r.seeds),
                "explained_accuracy": r.explained_accuracy, "fill": list(r.fill),
                "methods": {m.label: {"engine": m.engine, "params": m.params} for m in r.methods.values()},
                "roar": per_kind(r, "roar"), "kar": per_kind(r, "kar"),
                "vs_random": {m: asdict(compare_to_random(r, m)) for m in r.roar if "random" in r.roar and m != "random"},
                "claims": [{"claim": c.text, "agrees": c.agrees, **asdict(c.comparison)} for c in seed_claims(r)],
                "seconds": r.seconds,
                "recipe": asdict(digits.RECIPES[r.architecture]),
            }
            for r in report.results
        ],
        "trained_vit": None if report.vit is None else asdict(report.vit),
    }


def load_report(path: Path) -> RoarReport:
    """A report back from its roar.json (to write report.md and the plot again, no retraining)."""
    from saliency.quality.roar import MapMethod

    data = json.loads(path.read_text())
    o = data["options"]
    options = RoarOptions(tuple(o["models"]), {m: tuple(v) for m, v in o["methods"].items()}, tuple(o["fractions"]),
                          o["seeds"], tuple(o["kar"]), o["trained_vit"], o["seed"], o["quick"])

    def table(values: dict) -> dict[str, dict[float, list[float]]]:
        return {m: {float(k): list(v) for k, v in per.items()} for m, per in values.items()}

    results = [
        RoarResult(r["model"], r["architecture"], r["input_size"], tuple(r["fractions"]), tuple(r["seeds"]),
                   {label: MapMethod(label, m["engine"], m["params"]) for label, m in r["methods"].items()},
                   r["explained_accuracy"], tuple(r["fill"]), table(r["roar"]), table(r["kar"]), r["seconds"])
        for r in data["models"]
    ]
    vit = None if data["trained_vit"] is None else TrainedVitReport(**data["trained_vit"])
    return RoarReport(options, results, vit, data["seconds"], data["environment"], data.get("complete", True))


def plot(report: RoarReport, path: Path) -> Path:
    """Test accuracy against k, one line per method; a panel per model and kind."""
    from saliency.reports.plots import new_figure, save

    panels = [(r, kind) for r in report.results for kind in ("roar", "kar") if getattr(r, kind)]
    fig = new_figure(5.2 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)
    import matplotlib  # present: new_figure has imported it

    tab20 = matplotlib.colormaps["tab20"]
    for ax, (result, kind) in zip(axes[0], panels):
        ks = [100 * k for k in result.fractions]
        for i, method in enumerate(getattr(result, kind)):
            means, stds = zip(*(result.mean_std(method, k, kind) for k in result.fractions))
            control = method in ("random", "sobel")
            colour = "black" if method == "random" else tab20(i % 20)  # 13 methods: 10 colours repeat
            ax.errorbar(ks, means, yerr=stds, label=method, color=colour,
                        linestyle="--" if control else "-", marker="o", markersize=3, capsize=2, linewidth=1.2)
        ax.set_title(f"{kind.upper()}: {result.model}")
        ax.set_xlabel("k: % of pixels removed" + (" (least important)" if kind == "kar" else " (most important)"))
        ax.set_ylabel("test accuracy after retraining")
        ax.set_xticks(ks)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return save(fig, path, dpi=110)


def write_report(report: RoarReport, out: Path) -> list[Path]:
    """report.md, roar.json and roar.png into `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [plot(report, out / "roar.png")]
    (out / "roar.json").write_text(json.dumps(numbers(report), indent=1))
    (out / "report.md").write_text(markdown(report))
    return [*written, out / "roar.json", out / "report.md"]


def check_models(models: Sequence[str], field_name: str = "models") -> None:
    from saliency.errors import require

    require(bool(models), field_name, "no model given")
    for i, m in enumerate(models):
        require(m in MODELS, f"{field_name}[{i}]", f"{m!r} is not one of {', '.join(MODELS)}")
    require(len(set(models)) == len(models), field_name, "a model is listed twice")

