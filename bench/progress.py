"""Progress lines on stdout, stamped with the seconds since the suite started."""

from __future__ import annotations

import time

_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", flush=True)
