"""The locust load test: the locustfile's users, the `saliency loadtest` runner, its chart, and one
real short headless run against a local service (tinycnn).

locust monkey-patches the standard library with gevent on import, so it is only ever imported
in subprocesses here, never in the pytest process.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from saliency import loadtest
from service_harness import ServiceThread, with_config

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "deploy" / "loadtest" / "locustfile.py"
REQUEST_NAMES = {
    "Explain fast", "Explain fast+ig32",
    "ExplainStream first", "ExplainStream ig", "ExplainStream smoothgrad", "ExplainStream complete",
}

_INSPECT = """
import importlib.util, json, sys
import locust
spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
users = [n for n, v in vars(module).items()
         if isinstance(v, type) and issubclass(v, locust.User) and v is not locust.User
         and not v.__dict__.get("abstract", False)]
user = module.ExplainerUser
print(json.dumps({
    "users": users,
    "tasks": {t.__name__: w for t, w in
              ((t, sum(1 for u in user.tasks if u is t)) for t in set(user.tasks))},
    "interceptor": [c.__name__ for c in module.LocustInterceptor.__mro__],
    "request": module.explain_request([module.IG32]).methods[0].integrated_gradients.n_steps,
    "png": module.IMAGE[:8].hex(),
}))
"""


def test_locustfile_defines_grpc_users():
    result = subprocess.run(
        [sys.executable, "-c", _INSPECT, str(LOCUSTFILE)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["users"] == ["ExplainerUser"]
    assert found["tasks"] == {"explain_fast": 6, "explain_fast_ig": 3, "explain_stream_deep": 1}
    assert "UnaryUnaryClientInterceptor" in found["interceptor"]
    assert "UnaryStreamClientInterceptor" in found["interceptor"]
    assert found["request"] == 32
    assert found["png"] == "89504e470d0a1a0a", "the image is sent PNG-encoded"


def test_locust_lists_the_user():
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--list"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "ExplainerUser" in result.stdout


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("2m", 120), ("1h30m", 5400), ("45", 45), ("1m5s", 65)]
)
def test_parse_duration(text, seconds):
    assert loadtest.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "0s"])
def test_parse_duration_rejects(text):
    with pytest.raises(loadtest.UsageError):
        loadtest.parse_duration(text)


def test_finds_the_checkout_locustfile(monkeypatch, tmp_path):
    monkeypatch.delenv(loadtest.LOCUSTFILE_ENV, raising=False)
    assert loadtest.find_locustfile() == LOCUSTFILE
    monkeypatch.setenv(loadtest.LOCUSTFILE_ENV, str(tmp_path / "missing.py"))
    with pytest.raises(loadtest.UsageError, match="locustfile not found"):
        loadtest.find_locustfile()


def test_locust_command_is_headless_with_csv(tmp_path):
    command = loadtest.locust_command(LOCUSTFILE, "127.0.0.1:1", 3, 1.5, 20, tmp_path / "p")
    assert command[:3] == [sys.executable, "-m", "locust"]
    joined = " ".join(command)
    for part in ("--headless", "-u 3", "-r 1.5", "-t 20s", "--only-summary", f"--csv {tmp_path / 'p'}",
                 "--host 127.0.0.1:1"):
        assert part in joined


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--server", "127.0.0.1:1", "--duration", "forever"], "--duration"),
        (["--server", "127.0.0.1:1", "--duration", "0s"], "--duration"),
        (["--server", "127.0.0.1:1", "--users", "0"], "--users"),
        (["--server", "127.0.0.1:1", "--spawn-rate", "0"], "--spawn-rate"),
        (["--server", "127.0.0.1:1", "--think-time", "2,1"], "--think-time"),
        (["--server", "127.0.0.1:1", "--think-time", "x"], "--think-time"),
        (["--users", "2"], "--server"),  # no --server
    ],
)
def test_usage_errors_exit_2(argv, flag, tmp_path, capsys):
    assert loadtest.main([*argv, "--out", str(tmp_path), "--wait-ready", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saliency loadtest:")
    assert flag in err, err


def test_a_negative_wait_or_an_out_that_cannot_be_made_is_a_usage_error(tmp_path, capsys):
    base = ["--server", "127.0.0.1:1", "--duration", "1s"]
    assert loadtest.main([*base, "--out", str(tmp_path), "--wait-ready", "-1"]) == 2
    assert "--wait-ready" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert loadtest.main([*base, "--out", str(tmp_path / "a_file" / "x"), "--wait-ready", "0"]) == 2
    assert "--out" in capsys.readouterr().err


STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)


def test_chart_from_synthetic_csv(tmp_path):
    stats = tmp_path / "s_stats.csv"
    stats.write_text(
        STATS_HEADER + "\n"
        + "grpc,Explain fast,120,0,30,35,10,90,8000,12.0,0.0,30,32,35,40,50,60,70,80,90,90,90\n"
        + "grpc,ExplainStream ig,12,1,900,950,700,1500,9000,1.2,0.1,900,950,1000,1000,1200,1400,1500,1500,1500,1500,1500\n"
        + ",Aggregated,132,1,32,100,10,1500,8100,13.2,0.1,32,35,40,45,60,900,1200,1500,1500,1500,1500\n"
    )
    history = tmp_path / "s_stats_history.csv"
    rows = [
        f"{1700000000 + t},2,,Aggregated,{min(t, 5) * 2.5:.1f},0.0,30,32,35,40,50,60,70,80,90,90,90,"
        f"{t * 13},{t // 5},30,35,10,90,8000"
        for t in range(11)
    ]
    history.write_text(HISTORY_HEADER + "\n" + "\n".join(rows) + "\n")

    parsed = loadtest.read_stats(stats)
    assert [s.name for s in parsed] == ["Explain fast", "ExplainStream ig", "Aggregated"]
    assert parsed[1].p99 == 1500 and parsed[1].failures == 1
    assert len(loadtest.read_history(history)) == 11

    png = loadtest.write_chart(stats, history, tmp_path / "chart" / "loadtest.png", title="synthetic")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width == 1200 and image.height > 400
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert (0x4E, 0x79, 0xA7) in colours and (0xE1, 0x57, 0x59) in colours, "bars and lines drawn"


def test_chart_without_history(tmp_path):
    stats = tmp_path / "s_stats.csv"
    stats.write_text(STATS_HEADER + "\n" + ",Aggregated,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n")
    png = loadtest.write_chart(stats, tmp_path / "missing.csv", tmp_path / "empty.png")
    assert Image.open(png).size[0] == 1200


def headless_run(tmp_path, capsys, users: int, duration: str, http: bool = False):
    """`saliency loadtest` with `users` users for `duration` against a real service on 127.0.0.1
    (tinycnn), with HTTP users too when `http`; asserts it exits 0. Returns the captured output
    and the stats CSV's rows by request name."""
    service = ServiceThread(with_config(models=("tinycnn",)))
    try:
        status = loadtest.main([
            "--server", service.address, *(["--http", service.http_url] if http else []),
            "--users", str(users), "--spawn-rate", str(users), "--duration", duration,
            "--model", "tinycnn", "--out", str(tmp_path), "--think-time", "0.02,0.1", "--wait-ready", "30",
        ])
    finally:
        service.stop()
    output = capsys.readouterr()
    assert status == 0, output.out + output.err + (tmp_path / "locust.log").read_text()[-3000:]
    with open(tmp_path / "loadtest_stats.csv", newline="") as f:
        return output, {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_real_headless_run(tmp_path, capsys):
    """2 users for 6 s against a real service on 127.0.0.1 (tinycnn): every request name shows
    up in the CSV, none failed, and the chart is written."""
    output, rows = headless_run(tmp_path, capsys, 2, "6s")
    assert REQUEST_NAMES <= set(rows), f"missing: {sorted(REQUEST_NAMES - set(rows))}"
    for name in REQUEST_NAMES:
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
    assert loadtest.read_history(tmp_path / "loadtest_stats_history.csv")
    assert Image.open(tmp_path / "loadtest.png").format == "PNG"
    assert "Explain fast" in output.out and "users 2" in output.out
