"""Peak memory of IG with many steps: ours (chunked, so bounded) against Captum unchunked and
at its best internal_batch_size, and ours at two step counts. One subprocess per configuration
(see bench.memory_probe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import contenders as c
from bench.ig import captum_best_batch
from bench.progress import log
from bench.report import Row, Table, at_least
from bench.settings import Settings
from bench.workload import reference_workload

SUMMARY = "peak memory growth of IG n=1000: ours (chunked) vs Captum"
ROOT = Path(__file__).resolve().parent.parent  # where `python -m bench.memory_probe` resolves
LIMIT_BYTES = 8 * 2**30  # never try a configuration estimated above this


@dataclass(frozen=True)
class Probe:
    name: str
    impl: str  # "ours" or "captum"
    n: int
    chunk: int  # 0: no chunking (Captum's default)


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    auto = c.auto_chunk_sizes(w)
    best, _ = captum_best_batch(settings)
    n_big, n_small = settings.pick((1000, 200), (200, 50))
    n_unchunked = settings.pick(50, 16)  # an unchunked Captum run that fits, for the slope
    ours_small = Probe(f"ours: n={n_small}, chunk={auto.grad}", "ours", n_small, auto.grad)
    ours_big = Probe(f"ours: n={n_big}, chunk={auto.grad}", "ours", n_big, auto.grad)
    slope = Probe(f"captum: n={n_unchunked}, internal_batch_size=None", "captum", n_unchunked, 0)
    probes = [
        ours_small,
        ours_big,
        Probe(f"captum: n={n_big}, internal_batch_size={best} (its best)", "captum", n_big, best),
        slope,
    ]
    results = {p: _measure(p, settings, auto.forward) for p in probes}

    usage = "RSS" if settings.device == "cpu" else "CUDA allocated"
    notes = [
        f"growth = peak {usage} during the run - {usage} after model load and one warm-up "
        "fwd+bwd; each configuration in a fresh process"
    ]
    unchunked = Probe(f"captum: n={n_big}, internal_batch_size=None", "captum", n_big, 0)
    per_step = results[slope]["growth_mb"] * 2**20 / n_unchunked
    limit = min(LIMIT_BYTES, 0.7 * _available_bytes())
    if per_step * n_big > limit:
        notes.append(
            f"{unchunked.name} skipped: estimated {per_step * n_big / 2**30:.1f} GiB "
            f"({per_step / 2**20:.0f} MiB per step, from the n={n_unchunked} run) is over the "
            f"{limit / 2**30:.1f} GiB limit"
        )
    else:
        results[unchunked] = _measure(unchunked, settings, auto.forward)

    bounded = at_least(0.8, f"ours(n={n_big}) <= 1.25x this (>= 0.8)")
    rows = [
        Row(
            p.name,
            r["growth_mb"],
            goal=bounded if p == ours_small else None,
            note=f"{r['seconds']:.1f} s",
        )
        for p, r in results.items()
    ]
    title = f"memory: IG peak memory growth (n={n_big})"
    return [Table(title, "MB", ours_big.name, "m / m(ours)", rows, notes, "growth MB")]


def _measure(probe: Probe, settings: Settings, forward_chunk: int) -> dict[str, float]:
    log(f"  probe: {probe.name}")
    cmd = [
        sys.executable,
        "-m",
        "bench.memory_probe",
        "--impl",
        probe.impl,
        "--n",
        str(probe.n),
        "--chunk",
        str(probe.chunk),
        "--forward-chunk",
        str(forward_chunk),
        "--threads",
        str(settings.threads),
        "--device",
        settings.device,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {probe.name!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
