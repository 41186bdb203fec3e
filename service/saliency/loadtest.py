"""`saliency loadtest`: drive a running service with locust's gRPC users, then chart the run.

    saliency loadtest --server HOST:PORT [--http URL] [--users 4] [--spawn-rate R] [--duration 60s]
                      [--model efficientnet_lite0] [--out out/loadtest] [--tls-ca FILE]
                      [--think-time MIN,MAX] [--wait-ready SECONDS] [--locustfile FILE]

Runs `locust --headless` on deploy/loadtest/locustfile.py in a subprocess (its log goes to
OUT/locust.log), prints a progress line every few seconds, then a summary, and leaves in OUT:
`loadtest_stats.csv` (one row per request name), `loadtest_stats_history.csv` (one row per
second), `loadtest_failures.csv`, `loadtest_exceptions.csv` and `loadtest.png` (latency
percentiles per request name on a log scale, throughput over time; drawn with matplotlib,
the `report` extra). A bearer token is read
from SALIENCY_TOKEN. Exit status: 0 clean run, 1 failed requests or locust error, 2 usage error.

locust is an optional dependency (`pip install 'saliency[loadtest]'`); this module imports it
only in the subprocess, because locust monkey-patches the standard library with gevent.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

USAGE_ERROR = 2
PREFIX = "loadtest"
PROGRESS_EVERY_S = 5.0
LOCUSTFILE_ENV = "SALIENCY_LOCUSTFILE"
# Where deploy/loadtest/locustfile.py may be: a source checkout (this file is
# service/saliency/loadtest.py), the working directory, and the container image.
_LOCUSTFILE = Path("deploy/loadtest/locustfile.py")
_IMAGE_LOCUSTFILE = Path("/opt/saliency") / _LOCUSTFILE


class UsageError(Exception):
    """A bad flag value: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="saliency loadtest",
        description="Load-test a saliency service with locust gRPC users; write CSVs and a chart.",
    )
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="the gRPC address")
    parser.add_argument(
        "--http", metavar="URL",
        help="the HTTP API's base URL (e.g. http://127.0.0.1:8080): HTTP users run beside the gRPC ones",
    )
    parser.add_argument("--users", type=int, default=4, help="concurrent users (default: 4)")
    parser.add_argument(
        "--spawn-rate", type=float, help="users started per second (default: all at once)"
    )
    parser.add_argument(
        "--duration", default="60s", help="run time: 60s, 2m, 1h30m (default: 60s)"
    )
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="model to explain (default: efficientnet_lite0)"
    )
    parser.add_argument("--out", default="out/loadtest", help="output directory (default: out/loadtest)")
    parser.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA (PEM)")
    parser.add_argument(
        "--think-time", metavar="MIN,MAX", default="0.2,1.0",
        help="seconds each user waits between requests (default: 0.2,1.0)",
    )
    parser.add_argument(
        "--wait-ready", type=float, default=30.0, metavar="SECONDS",
        help="wait this long for the server's health check to say SERVING (default: 30; 0: don't)",
    )
    parser.add_argument(
        "--locustfile", type=Path,
        help=f"default: ${LOCUSTFILE_ENV}, else deploy/loadtest/locustfile.py of this checkout",
    )
    return parser


def parse_duration(text: str) -> int:
    """'60s', '2m', '1h30m' or '45' (seconds) -> whole seconds (at least 1)."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    else:
        parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
        if not text or parts is None:
            raise UsageError(f"--duration: {text!r} is not a duration like 60s, 2m or 1h30m")
        hours, minutes, secs = (int(p) if p else 0 for p in parts.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds < 1:
        raise UsageError("--duration: must be at least 1s")
    return seconds


def _think_time(text: str) -> str:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--think-time: {text!r} is not MIN,MAX in seconds") from None
    if not 0 <= low <= high:
        raise UsageError("--think-time: need 0 <= MIN <= MAX")
    return f"{low},{high}"


def find_locustfile(explicit: Path | None = None) -> Path:
    """The locustfile: explicit, $SALIENCY_LOCUSTFILE, this checkout's, the cwd's, the image's."""
    if explicit is not None:
        candidates = [explicit]
    elif os.environ.get(LOCUSTFILE_ENV):
        candidates = [Path(os.environ[LOCUSTFILE_ENV])]
    else:
        checkout = Path(__file__).resolve().parents[2] / _LOCUSTFILE
        candidates = [checkout, Path.cwd() / _LOCUSTFILE, _IMAGE_LOCUSTFILE]
    for path in candidates:
        if path.is_file():
            return path
    raise UsageError(
        f"locustfile not found (looked at {', '.join(str(c) for c in candidates)}); "
        f"pass --locustfile or set {LOCUSTFILE_ENV}"
    )


def locust_command(
    locustfile: Path, server: str, users: int, spawn_rate: float, seconds: int, csv_prefix: Path
) -> list[str]:
    """The headless locust invocation, run with this interpreter."""
    return [
        sys.executable, "-m", "locust",
        "-f", str(locustfile),
        "--headless",
        "-u", str(users),
        "-r", f"{spawn_rate:g}",
        "-t", f"{seconds}s",
        "--only-summary",
        "--csv", str(csv_prefix),
        "--host", server,
    ]


def wait_ready(server: str, timeout: float, tls_ca: str | None = None) -> None:
    """Block until grpc.health.v1 says SERVING; raise TimeoutError after `timeout` seconds."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(server, credentials)
    else:
        channel = grpc.insecure_channel(server)
    deadline = time.monotonic() + timeout
    last = "no answer"
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{server} not SERVING after {timeout:g}s ({last})")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=min(2.0, remaining))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# ---- locust's CSV files ----------------------------------------------------------------------


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class RequestStats:
    """One row of *_stats.csv; times in milliseconds."""

    name: str
    requests: int
    failures: int
    p50: float
    p95: float
    p99: float
    rps: float


def read_stats(path: Path) -> list[RequestStats]:
    """Rows of locust's *_stats.csv, the "Aggregated" row last."""
    with open(path, newline="") as f:
        rows = [
            RequestStats(
                name=row["Name"],
                requests=int(_number(row["Request Count"]) or 0),
                failures=int(_number(row["Failure Count"]) or 0),
                p50=_number(row["50%"]),
                p95=_number(row["95%"]),
                p99=_number(row["99%"]),
                rps=_number(row["Requests/s"]),
            )
            for row in csv.DictReader(f)
        ]
    return sorted(rows, key=lambda r: (r.name == "Aggregated", r.name))


@dataclass(frozen=True)
class HistoryPoint:
    """One row of *_stats_history.csv (the Aggregated line): the run at one second."""

    timestamp: float
    users: int
    rps: float
    failures_per_s: float
    p50: float
    p95: float
    total_requests: int
    total_failures: int


def read_history(path: Path) -> list[HistoryPoint]:
    """The "Aggregated" rows of locust's *_stats_history.csv, oldest first."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        points = [
            HistoryPoint(
                timestamp=_number(row["Timestamp"]),
                users=int(_number(row["User Count"]) or 0),
                rps=_number(row["Requests/s"]),
                failures_per_s=_number(row["Failures/s"]),
                p50=_number(row["50%"]),
                p95=_number(row["95%"]),
                total_requests=int(_number(row["Total Request Count"]) or 0),
                total_failures=int(_number(row["Total Failure Count"]) or 0),
            )
            for row in csv.DictReader(f)
            if row.get("Name") == "Aggregated"
        ]
    return [p for p in points if not math.isnan(p.timestamp)]


# ---- the chart -------------------------------------------------------------------------------

_PERCENTILES = (("p50", "#4e79a7"), ("p95", "#f28e2b"), ("p99", "#e15759"))
_RPS, _FAILURES = "#4e79a7", "#e15759"


def _fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def write_chart(stats_csv: Path, history_csv: Path, out_png: Path, title: str = "") -> Path:
    """Latency percentiles per request name (from *_stats.csv, log scale: fast and deep calls
    differ by orders of magnitude) above throughput over time (from *_stats_history.csv), one
    PNG 1200 px wide drawn with matplotlib (the `report` extra); returns `out_png`."""
    from saliency.reports.plots import new_figure, save

    stats = [s for s in read_stats(stats_csv) if s.requests > 0]
    history = read_history(history_csv)
    figure = new_figure(12.0, 3.2 + 0.55 * max(1, len(stats)) + 3.2)
    figure.suptitle(title or "saliency load test", fontsize=13)
    latency, throughput = figure.subplots(2, 1, height_ratios=[0.55 * max(1, len(stats)) + 1.2, 3.2])

    rows = np.arange(len(stats))
    height = 0.8 / len(_PERCENTILES)
    for i, (label, colour) in enumerate(_PERCENTILES):
        values = np.array([getattr(s, label) for s in stats], dtype=float)
        offsets = rows + (i - (len(_PERCENTILES) - 1) / 2) * height
        bars = latency.barh(offsets, np.nan_to_num(values, nan=0.0), height, color=colour, label=label)
        latency.bar_label(bars, [_fmt_ms(v) for v in values], padding=3, fontsize=7)
    latency.set_yticks(rows, [f"{s.name}\n{s.requests} req" + (f", {s.failures} failed" if s.failures else "")
                              for s in stats], fontsize=8)
    latency.invert_yaxis()  # the first request name on top
    latency.set_title("Latency per request name (locust)", fontsize=10, loc="left")
    latency.set_xlabel("milliseconds (log scale)")
    if any(v > 0 for s in stats for v in (s.p50, s.p95, s.p99) if not math.isnan(v)):
        latency.set_xscale("log")
        latency.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    else:
        latency.text(0.5, 0.5, "no requests", transform=latency.transAxes, ha="center", color="#777777")
    latency.grid(True, axis="x", which="both", alpha=0.3)

    throughput.set_title("Throughput over time", fontsize=10, loc="left")
    throughput.set_xlabel("seconds since start")
    throughput.set_ylabel("per second")
    if history:
        t0 = history[0].timestamp
        seconds = [p.timestamp - t0 for p in history]
        throughput.plot(seconds, [p.rps for p in history], color=_RPS, linewidth=2, label="requests/s")
        throughput.plot(seconds, [p.failures_per_s for p in history], color=_FAILURES, linewidth=2,
                        label="failures/s")
        last = history[-1]
        throughput.legend(title=f"{last.total_requests} requests, {last.total_failures} failures, "
                                f"peak {max(p.users for p in history)} users", fontsize=8, title_fontsize=8)
        throughput.set_ylim(bottom=0)
    else:
        throughput.text(0.5, 0.5, "no history", transform=throughput.transAxes, ha="center", color="#777777")
    throughput.grid(True, alpha=0.3)
    return save(figure, out_png, dpi=100)


# ---- the run ---------------------------------------------------------------------------------


def _progress(history_csv: Path, elapsed: float, seconds: int) -> str:
    points = read_history(history_csv)
    if not points:
        return f"  {elapsed:4.0f}s/{seconds}s  starting"
    p = points[-1]
    return (
        f"  {elapsed:4.0f}s/{seconds}s  users {p.users}  requests {p.total_requests}  "
        f"failures {p.total_failures}  {p.rps:.1f} req/s  p50 {_fmt_ms(p.p50)}  p95 {_fmt_ms(p.p95)}"
    )


def _summary(stats: list[RequestStats]) -> str:
    lines = [f"  {'request':<28} {'reqs':>6} {'fails':>6} {'p50':>9} {'p95':>9} {'p99':>9} {'req/s':>7}"]
    for s in stats:
        lines.append(
            f"  {s.name:<28} {s.requests:>6} {s.failures:>6} {_fmt_ms(s.p50):>9} "
            f"{_fmt_ms(s.p95):>9} {_fmt_ms(s.p99):>9} {s.rps:>7.1f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("locust") is None:
        raise UsageError("locust is not installed: pip install 'saliency[loadtest]'")
    if args.users < 1:
        raise UsageError("--users: must be at least 1")
    seconds = parse_duration(args.duration)
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else float(args.users)
    if spawn_rate <= 0:
        raise UsageError("--spawn-rate: must be positive")
    if args.wait_ready < 0:
        raise UsageError("--wait-ready: must be 0 (don't wait) or more seconds")
    locustfile = find_locustfile(args.locustfile)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot make {out}: {exc.strerror}") from None
    prefix = out / PREFIX
    for old in out.glob(f"{PREFIX}_*.csv"):
        old.unlink()

    env = dict(os.environ)
    env["SALIENCY_LOADTEST_MODEL"] = args.model
    env["SALIENCY_LOADTEST_WAIT"] = _think_time(args.think_time)
    if args.http:
        if not re.fullmatch(r"https?://[^/\s]+/?", args.http):
            raise UsageError(f"--http: {args.http!r} is not a base URL like http://127.0.0.1:8080")
        env["SALIENCY_LOADTEST_HTTP"] = args.http.rstrip("/")
    else:
        env.pop("SALIENCY_LOADTEST_HTTP", None)
    if args.tls_ca:
        env["SALIENCY_TLS_CA"] = str(Path(args.tls_ca).resolve())

    if args.wait_ready > 0:
        print(f"saliency loadtest: waiting for {args.server} (up to {args.wait_ready:g}s)", flush=True)
        try:
            wait_ready(args.server, args.wait_ready, args.tls_ca)
        except TimeoutError as exc:
            print(f"saliency loadtest: {exc}", file=sys.stderr)
            return 1

    command = locust_command(locustfile, args.server, args.users, spawn_rate, seconds, prefix)
    log_path = out / "locust.log"
    print(
        f"saliency loadtest: {args.users} users ({spawn_rate:g}/s) for {seconds}s against "
        f"{args.server}, model {args.model}; locust log: {log_path}",
        flush=True,
    )
    history_csv = Path(f"{prefix}_stats_history.csv")
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            next_report = started + PROGRESS_EVERY_S
            while process.poll() is None:
                time.sleep(0.2)
                if time.monotonic() >= next_report:
                    print(_progress(history_csv, time.monotonic() - started, seconds), flush=True)
                    next_report += PROGRESS_EVERY_S
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)  # locust stops and still writes its CSVs
        finally:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        tail = log_path.read_text().strip().splitlines()[-15:]
        print("saliency loadtest: locust wrote no statistics; its log ends:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
        return 1
    stats = read_stats(stats_csv)
    print(_summary(stats), flush=True)
    chart = write_chart(
        stats_csv, history_csv, out / f"{PREFIX}.png",
        title=f"saliency load test: {args.model} at {args.server}, {args.users} users, {seconds}s",
    )
    print(f"saliency loadtest: wrote {stats_csv}, {history_csv} and {chart}", flush=True)
    failed = sum(s.failures for s in stats if s.name != "Aggregated")
    if process.returncode != 0 or failed:
        print(
            f"saliency loadtest: {failed} failed requests (locust exit status {process.returncode}); "
            f"see {prefix}_failures.csv",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`saliency loadtest ...` (argv without the `loadtest` word); returns the exit status."""
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as exc:
        print(f"saliency loadtest: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
