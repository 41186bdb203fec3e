"""Request limits for method parameters: configuration with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_targets: int = 16
    max_ig_steps: int = 1024
    max_smoothgrad_samples: int = 1024
    max_rise_masks: int = 8192


DEFAULT_LIMITS = Limits()
