"""Deep methods on the torch.compile'd model (`compile_model`, models/compiled.py) against eager:
the speed-up per method, the compile time, and how far the maps move (float32 rounding only)."""

from __future__ import annotations

from bench import contenders as c
from bench.progress import log
from bench.report import Table, time_rows
from bench.settings import Settings
from bench.timing import interleaved
from bench.workload import reference_workload
from saliency.attribution.executor import ChunkExecutor
from saliency.models.compiled import compile_for_chunks

SUMMARY = "Forward-only deep methods with compile_model (torch.compile; CUDA graphs on a GPU) vs eager"


def run(settings: Settings) -> list[Table]:
    w = reference_workload(settings.device)
    eager = c.executor(w)
    mode = "reduce-overhead" if w.model.device.type == "cuda" else "default"
    log(f"  compiling ({mode}) for forward chunks of {eager.chunk_sizes.forward}")
    compiled = compile_for_chunks(w.model, eager.chunk_sizes.forward, mode)
    if compiled is None:
        return [Table("compile_model", "ms", "eager", "t / t(eager)", [], ["the model could not be compiled or "
                      "failed its parity check (see the log): compile_model would serve it eager"])]
    fast = ChunkExecutor(w.model, eager.chunk_sizes, compiled=compiled.module)
    # Forward-only methods: the calls with a gradient stay eager (models/compiled.py).
    cases = {
        "rise": {"n_masks": settings.pick(2000, 200)},
        "occlusion": {},
        "scorecam": {},
    }
    repeats = settings.pick(5, 2)
    tables = []
    for method, params in cases.items():
        log(f"  {method} {params or '(defaults)'}: eager vs compiled ({repeats} interleaved repeats)")
        timings = interleaved(
            {
                "eager": lambda m=method, p=params: c.ours_deep(w, eager, m, [w.target], **p),
                f"compiled ({mode})": lambda m=method, p=params: c.ours_deep(w, fast, m, [w.target], **p),
            },
            repeats,
            warmup=1,
            sync=w.sync,
        )
        (a,) = c.ours_deep(w, eager, method, [w.target], **params)
        (b,) = c.ours_deep(w, fast, method, [w.target], **params)
        moved = float((a.map - b.map).norm() / a.map.norm().clamp_min(1e-12))
        tables.append(Table(
            f"{method} {params or '(defaults)'} on {w.model.spec.name}", "ms", "eager", "t / t(eager)",
            time_rows(timings),
            [f"compiled map vs eager: relative L2 {moved:.1e}",
             f"compile and warm-up: {compiled.compile_seconds:.1f} s at start "
             f"(parity on a probe batch: logits {compiled.logits_error:.1e})"],
        ))
    return tables
