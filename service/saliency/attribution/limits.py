"""Request limits for method parameters: configuration with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_targets: int = 16
    max_ig_steps: int = 1024
    max_smoothgrad_samples: int = 1024
    max_rise_masks: int = 8192
    max_occlusion_windows: int = 8192  # model calls: windows per image
    max_scorecam_channels: int = 4096  # model calls: masked inputs per image
    max_kernel_shap_samples: int = 8192  # model calls: coalitions per map
    max_lime_samples: int = 8192  # model calls: coalitions per map
    max_gradient_shap_samples: int = 1024  # gradient samples per map
    max_reference_images: int = 64  # a custom GradientSHAP reference stack


DEFAULT_LIMITS = Limits()
