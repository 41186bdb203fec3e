"""The reference workload of DESIGN §6 and the machine it runs on.

EfficientNet-Lite0, batch 1, 224x224, scikit-image's chelsea photograph (a cat the model
calls a cat), explained for its top predicted classes.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import captum
import skimage.data
import torch

from saliency.imaging import to_model_input
from saliency.models import LoadedModel, load_model

MODEL_NAME = "efficientnet_lite0"
N_CLASSES = 8  # the most targets any benchmark explains


@dataclass(frozen=True)
class Workload:
    model: LoadedModel
    x: torch.Tensor  # [3, H, W] normalised, on the model's device
    classes: tuple[int, ...]  # the top N_CLASSES predicted classes, best first

    @property
    def target(self) -> int:
        """The top-1 class."""
        return self.classes[0]

    def sync(self) -> None:
        """Wait for queued device work, so a timer around a call sees all of it."""
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)


@functools.cache
def reference_workload(device: str) -> Workload:
    model = load_model(MODEL_NAME, device)
    x = to_model_input(skimage.data.chelsea(), model.spec).to(model.device)
    with torch.inference_mode():
        logits = model.module(x[None])[0]
    classes = tuple(int(c) for c in logits.topk(N_CLASSES).indices)
    return Workload(model, x, classes)


@functools.cache
def users_workload(device: str) -> Workload:
    """The reference workload on the model as a user would hold it before serving: the
    checkpoint's architecture with its BatchNorms (not folded), default NCHW memory format.
    Our engine always runs on the served copy (`reference_workload`); this is what a user
    would hand to Captum, for the "Captum on the user's model" rows."""
    from saliency.models.efficientnet_lite import load_efficientnet_lite0

    served = reference_workload(device)
    module = load_efficientnet_lite0(fold_bn=False).eval().to(served.model.device)
    return Workload(LoadedModel(served.model.spec, module, served.model.device), served.x, served.classes)


def machine_info(device: str) -> dict[str, object]:
    """What a reader needs to compare two runs' numbers."""
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captum": captum.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": device,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
