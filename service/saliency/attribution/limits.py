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


DEFAULT_LIMITS = Limits()
