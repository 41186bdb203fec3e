"""How the sampled methods' `map_error` estimate tracks the real error, on photographs.

For each method and sample count N, two seeds' maps: their estimates, their distance from each
other over sqrt(2) (two independent errors of the same size: the real error of a mean without
needing a reference), their distance to a map of many more samples (another seed: this catches
the bias the seed-to-seed distance misses), and Spearman's rank correlation between the seeds.
Distances are relative L2, as the estimate; RISE's with each map's spatial mean removed, as its
estimate is. EfficientNet-Lite0, top class, skimage photographs. Prints a table, writes JSON.

    python -m bench.sampled_map_error [--photos chelsea,coffee] [--methods rise,lime] [--out F]
    python -m bench.sampled_map_error --targets 0.3,0.1 ...  # stopped runs against the reference
"""

from __future__ import annotations

import argparse
import json
import time

import skimage.data
import torch

from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.registry import get_method, make_params
from saliency.imaging import to_model_input
from saliency.models import load_model
from saliency.quality.similarity import spearman

# method -> (count field, extra params, sample counts, reference count)
PLANS = {
    "rise": ("n_masks", {}, (512, 2048), 4096),
    "smoothgrad": ("n_samples", {}, (16, 64), 256),
    "smoothgrad_variance": ("n_samples", {"aggregate": "variance"}, (16, 64), 256),
    "gradient_shap": ("n_samples", {}, (16, 64), 256),
    "kernel_shap": ("n_samples", {}, (128, 512), 2048),
    "lime": ("n_samples", {}, (128, 512), 2048),
}
# --light: fewer counts, and a reference only where the estimator is biased (the fits, VarGrad)
LIGHT = {
    "rise": ("n_masks", {}, (512,), None),
    "smoothgrad": ("n_samples", {}, (16, 64), None),
    "smoothgrad_variance": ("n_samples", {"aggregate": "variance"}, (16,), 128),
    "gradient_shap": ("n_samples", {}, (16, 64), None),
    "kernel_shap": ("n_samples", {}, (128,), 1024),
    "lime": ("n_samples", {}, (128,), 1024),
}
PHOTOGRAPHS = ("chelsea", "coffee", "astronaut")


def _centred(m: torch.Tensor, method: str) -> torch.Tensor:
    m = m.double()
    return m - m.mean() if method == "rise" else m


def _maps(model, executor, x, target, method, count_field, extra, n, seeds):
    name = method.split("_variance")[0]
    tasks = [
        get_method(name).plan(model, x, target, make_params(name, **extra, **{count_field: n, "seed": s}))
        for s in seeds
    ]
    return executor.run(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=",".join(PHOTOGRAPHS))
    parser.add_argument("--methods", default=",".join(PLANS))
    parser.add_argument("--out", default="sampled_map_error.json")
    parser.add_argument("--light", action="store_true", help="fewer counts; references only for biased estimators")
    parser.add_argument("--targets", default="", help="max_map_error values: stopped runs (cap: half the reference count)")
    args = parser.parse_args()
    plans = LIGHT if args.light else PLANS
    goals = [float(g) for g in args.targets.split(",") if g]
    model = load_model("efficientnet_lite0")
    executor = ChunkExecutor(model, ChunkSizes(8, 32))
    rows = []
    for photo in args.photos.split(","):
        x = to_model_input(getattr(skimage.data, photo)(), model.spec)
        with torch.inference_mode():
            target = int(model.module(x[None])[0].argmax())
        for method in args.methods.split(","):
            count_field, extra, counts, reference_count = plans[method]
            started = time.perf_counter()
            reference = None
            if reference_count is not None:
                (reference,) = _maps(model, executor, x, target, method, count_field, extra, reference_count, (100,))
            for goal in goals:
                name = method.split("_variance")[0]
                cap = reference_count // 2
                params = make_params(name, **extra, **{count_field: cap, "seed": 1, "max_map_error": goal})
                (stopped,) = executor.run([get_method(name).plan(model, x, target, params)])
                ref = _centred(reference.map, method)
                row = {
                    "photo": photo, "method": method, "max_map_error": goal, "cap": cap,
                    "used": stopped.stats[count_field], "estimate": stopped.stats["map_error"],
                    "reference_distance": float((_centred(stopped.map, method) - ref).norm() / ref.norm()),
                    "reference_n": reference_count, "reference_estimate": reference.stats["map_error"],
                }
                rows.append(row)
                print(
                    f"{photo:9s} {method:20s} max_map_error={goal:g} cap={cap}: used {row['used']:.0f}, estimate "
                    f"{row['estimate']:.3f}, to n={reference_count} {row['reference_distance']:.3f} "
                    f"(its estimate {row['reference_estimate']:.3f})",
                    flush=True,
                )
            for n in counts if not goals else ():
                a, b = _maps(model, executor, x, target, method, count_field, extra, n, (1, 2))
                ma, mb = _centred(a.map, method), _centred(b.map, method)
                # without a reference, distances are relative to the two seeds' mean map
                ref = _centred(reference.map, method) if reference is not None else (ma + mb) / 2
                row = {
                    "photo": photo, "method": method, "n": n,
                    "estimate": [a.stats["map_error"], b.stats["map_error"]],
                    "seed_distance_over_sqrt2": float((ma - mb).norm() / ref.norm()) / 2**0.5,
                    "reference_distance": [float((m - ref).norm() / ref.norm()) for m in (ma, mb)] if reference else None,
                    "reference_n": reference_count,
                    "reference_estimate": reference.stats["map_error"] if reference else None,
                    "seed_spearman": spearman(a.map, b.map),
                }
                rows.append(row)
                against = (
                    f"  to n={reference_count} {row['reference_distance'][0]:.3f} {row['reference_distance'][1]:.3f}"
                    f" (its estimate {row['reference_estimate']:.3f})" if reference else ""
                )
                print(
                    f"{photo:9s} {method:20s} n={n:5d} estimate {row['estimate'][0]:.3f} {row['estimate'][1]:.3f}"
                    f"  seeds/sqrt2 {row['seed_distance_over_sqrt2']:.3f}{against}"
                    f"  seed spearman {row['seed_spearman']:.2f}",
                    flush=True,
                )
            print(f"  {method} on {photo}: {time.perf_counter() - started:.0f} s", flush=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
