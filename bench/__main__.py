"""python -m bench [--only NAME ...] [--quick] [--threads N] [--device cpu|cuda]"""

from __future__ import annotations

import argparse
import time
import traceback

import torch

from bench.progress import log
from bench.quiet import cpu_pressure, seconds_waited
from bench.report import Table, write_results
from bench.settings import Settings
from bench.suite import BENCHMARKS
from bench.workload import machine_info


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="few repeats, small n (< 2 min)")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads (default: torch's own default, %(default)s here)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    settings = Settings(quick=args.quick, device=args.device, threads=args.threads)
    machine = machine_info(args.device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print(
        f"mode: {'quick' if args.quick else 'full'}; ratios come from interleaved medians "
        "measured in this run; nothing here is asserted",
        flush=True,
    )

    names = args.only or list(BENCHMARKS)
    tables: list[tuple[str, Table]] = []
    failed: list[str] = []
    for i, name in enumerate(names, 1):
        bench = BENCHMARKS[name]
        log(f"[{i}/{len(names)}] {name}: {bench.summary}")
        started, waited = time.perf_counter(), seconds_waited()
        try:
            result = bench.run(settings)
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            log(f"[{i}/{len(names)}] {name} FAILED; going on with the rest")
            failed.append(name)
            continue
        seconds, waited = time.perf_counter() - started, seconds_waited() - waited
        for table in result:
            print("\n" + table.render() + "\n", flush=True)
        tables += [(name, table) for table in result]
        context = {
            "settings": vars(args),
            "machine": machine,
            "seconds": seconds,
            "seconds_waiting_for_quiet": waited,
            "cpu_pressure_after": cpu_pressure(),
        }
        path = write_results(name, result, context)
        log(
            f"[{i}/{len(names)}] {name} done in {seconds:.0f}s ({waited:.0f}s waiting for a quiet "
            f"CPU) -> {path}  {cpu_pressure()}"
        )
    _print_goals(tables)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def _print_goals(tables: list[tuple[str, Table]]) -> None:
    lines = [
        f"  {'MET   ' if met else 'MISSED'} {name}: {row.name}: {ratio:.2f} (goal {row.goal.text})"
        for name, table in tables
        for row, ratio, met in table.goal_results()
    ]
    if lines:
        print("goals (DESIGN §6):\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
