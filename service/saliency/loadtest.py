"""`saliency loadtest`: drive a running service with locust's gRPC users, then chart the run.

    saliency loadtest --server HOST:PORT [--http URL] [--users 4] [--spawn-rate R] [--duration 60s]
                      [--model efficientnet_lite0] [--out out/loadtest] [--tls-ca FILE]
                      [--think-time MIN,MAX] [--wait-ready SECONDS] [--locustfile FILE]

Runs `locust --headless` on deploy/loadtest/locustfile.py in a subprocess (its log goes to
OUT/locust.log), prints a progress line every few seconds, then a summary, and leaves in OUT:
`loadtest_stats.csv` (one row per request name), `loadtest_stats_history.csv` (one row per
second), `loadtest_failures.csv`, `loadtest_exceptions.csv` and `loadtest.png` (latency
percentiles per request name, throughput over time; drawn with Pillow). A bearer token is read
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

from PIL import Image, ImageDraw, ImageFont

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

_WIDTH = 1200
_MARGIN = 24
_LABEL_W = 230
_PERCENTILES = (("p50", "#4e79a7"), ("p95", "#f28e2b"), ("p99", "#e15759"))
_INK = "#222222"
_GRID = "#dddddd"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 x 10^k) giving about `ticks` intervals over `span`."""
    if not span > 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def write_chart(stats_csv: Path, history_csv: Path, out_png: Path, title: str = "") -> Path:
    """Draw latency percentiles per request name (from *_stats.csv) above throughput over time
    (from *_stats_history.csv) into one PNG; returns `out_png`."""
    stats = [s for s in read_stats(stats_csv) if s.requests > 0]
    history = read_history(history_csv)
    font, small, bold = _font(14), _font(12), _font(18)

    bar_h, group_gap = 14, 12
    group_h = bar_h * len(_PERCENTILES) + group_gap
    top_h = 70 + max(1, len(stats)) * group_h + 30
    plot_h = 260
    height = top_h + plot_h + 110
    image = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)

    draw.text((_MARGIN, 14), title or "saliency load test", fill=_INK, font=bold)
    draw.text(
        (_MARGIN, 42), "Latency per request name (locust, milliseconds)", fill=_INK, font=font
    )
    x0, x1 = _MARGIN + _LABEL_W, _WIDTH - _MARGIN - 90
    finite = [v for s in stats for v in (s.p50, s.p95, s.p99) if not math.isnan(v)]
    top = max(finite, default=1.0) or 1.0
    step = _nice_step(top)
    top = math.ceil(top / step) * step
    y = 70
    axis_bottom = 70 + max(1, len(stats)) * group_h
    tick = 0.0
    while tick <= top + 1e-9:
        x = x0 + (x1 - x0) * tick / top
        draw.line([(x, 66), (x, axis_bottom)], fill=_GRID)
        draw.text((x, axis_bottom + 4), f"{tick:g}", fill=_INK, font=small, anchor="ma")
        tick += step
    for s in stats:
        draw.text((_MARGIN, y + bar_h), s.name, fill=_INK, font=font, anchor="lm")
        failures = f"{s.failures} failed" if s.failures else ""
        draw.text((_MARGIN, y + 2 * bar_h + 4), f"{s.requests} req {failures}", fill="#777777", font=small)
        for i, (label, colour) in enumerate(_PERCENTILES):
            value = getattr(s, label)
            by = y + i * bar_h
            width = 0 if math.isnan(value) else (x1 - x0) * value / top
            draw.rectangle([x0, by + 1, x0 + max(width, 1), by + bar_h - 2], fill=colour)
            draw.text((x0 + width + 6, by + bar_h / 2), f"{label} {_fmt_ms(value)}", fill=_INK,
                      font=small, anchor="lm")
        y += group_h
    lx = _WIDTH - _MARGIN - 240
    for i, (label, colour) in enumerate(_PERCENTILES):
        draw.rectangle([lx + i * 80, 46, lx + i * 80 + 12, 58], fill=colour)
        draw.text((lx + i * 80 + 18, 52), label, fill=_INK, font=small, anchor="lm")

    # Throughput over time.
    py0 = top_h + 40
    draw.text((_MARGIN, top_h + 8), "Throughput over time (requests per second)", fill=_INK, font=font)
    px0, px1, py1 = _MARGIN + 60, _WIDTH - _MARGIN - 20, py0 + plot_h
    draw.rectangle([px0, py0, px1, py1], outline="#999999")
    if history:
        t0 = history[0].timestamp
        span = max(1.0, history[-1].timestamp - t0)
        rates = [v for p in history for v in (p.rps, p.failures_per_s) if not math.isnan(v)]
        ymax = max(rates, default=1.0) or 1.0
        ystep = _nice_step(ymax)
        ymax = math.ceil(ymax / ystep) * ystep
        value = 0.0
        while value <= ymax + 1e-9:
            yy = py1 - plot_h * value / ymax
            draw.line([(px0, yy), (px1, yy)], fill=_GRID)
            draw.text((px0 - 6, yy), f"{value:g}", fill=_INK, font=small, anchor="rm")
            value += ystep
        tstep = _nice_step(span, 8)
        t = 0.0
        while t <= span + 1e-9:
            xx = px0 + (px1 - px0) * t / span
            draw.text((xx, py1 + 6), f"{t:g}s", fill=_INK, font=small, anchor="ma")
            t += tstep
        for attribute, colour in (("rps", "#4e79a7"), ("failures_per_s", "#e15759")):
            points = [
                (px0 + (px1 - px0) * (p.timestamp - t0) / span, py1 - plot_h * getattr(p, attribute) / ymax)
                for p in history
                if not math.isnan(getattr(p, attribute))
            ]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            elif points:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        legend_y = py1 + 30
        draw.line([(px0, legend_y), (px0 + 24, legend_y)], fill="#4e79a7", width=2)
        draw.text((px0 + 30, legend_y), "requests/s", fill=_INK, font=small, anchor="lm")
        draw.line([(px0 + 130, legend_y), (px0 + 154, legend_y)], fill="#e15759", width=2)
        draw.text((px0 + 160, legend_y), "failures/s", fill=_INK, font=small, anchor="lm")
        last = history[-1]
        draw.text(
            (px0 + 260, legend_y),
            f"{last.total_requests} requests, {last.total_failures} failures, peak {max(p.users for p in history)} users",
            fill=_INK, font=small, anchor="lm",
        )
    else:
        draw.text(((px0 + px1) / 2, (py0 + py1) / 2), "no history", fill="#777777", font=font, anchor="mm")

    out_png.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_png, format="PNG")
    return out_png


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
    locustfile = find_locustfile(args.locustfile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
