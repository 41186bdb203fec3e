"""Run-wide settings: quick or full mode, device and thread count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    quick: bool
    device: str
    threads: int

    def pick(self, full: T, quick: T) -> T:
        """The value for this mode: `quick` under --quick, else `full`."""
        return quick if self.quick else full
