"""`saliency sanity` (in-process and --server: the same table) and `saliency report sanity`
(on tinycnn, small: the files it writes and what they say)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from saliency.cli import main
from saliency.reports.sanity_report import report_methods
from service_harness import ServiceThread, with_config

ARGS = ["sanity", "--sample", "coffee", "--model", "tinycnn", "--layers", "fc,conv2", "--methods", "vanilla,gradcam"]


def table(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("randomisation"))
    return lines[start:]


def test_sanity_in_process_and_remote_print_the_same_numbers(capsys):
    assert main(ARGS) == 0
    local = table(capsys.readouterr().out)
    assert len(local) == 1 + 2 * 2 * 2  # header + modes x layers x methods
    assert local[1].split()[:3] == ["cascading", "fc", "vanilla"]
    running = ServiceThread(with_config(models=("tinycnn",)))
    try:
        assert main([*ARGS, "--server", running.address]) == 0
        out = capsys.readouterr().out
    finally:
        running.stop()
    assert table(out) == local
    assert "served weights sha256" in out


@pytest.mark.parametrize(
    ("extra", "mentions"),
    [
        (["--randomizations", "cascading,sideways"], "randomizations"),
        (["--randomizations", "cascading,cascading"], "randomizations"),
        (["--layers", "fc,,conv1"], "layers"),
        (["--layers", "act1"], "layers[0]"),
        (["--target", "10"], "target"),
        (["--seed", "-3"], "seed"),
        (["--methods", "vanilla,nope"], "methods"),
        (["--methods", "vanilla,attention_rollout"], "attention_rollout cannot explain model tinycnn"),
    ],
)
def test_sanity_bad_arguments_exit_2_naming_the_field(capsys, extra, mentions):
    assert main([*ARGS, *extra]) == 2
    assert mentions in capsys.readouterr().err


@pytest.fixture
def one_thread():
    """tinycnn runs fastest on one thread, and a busy machine cannot stall it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_report_sanity_writes_the_table_plots_and_numbers(tmp_path, capsys, one_thread):
    out = tmp_path / "sanity"
    code = main(["report", "sanity", "--model", "tinycnn", "--images", "1", "--epochs", "2", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "model randomisation [8/8]" in captured.err and "data randomisation" in captured.err  # progress
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "sanity.json", "cascading.png", "independent.png", "cascade_grid.png"}
    for png in ("cascading.png", "independent.png", "cascade_grid.png"):
        with Image.open(out / png) as picture:
            assert picture.size[0] > 200 and picture.size[1] > 100
    report = (out / "report.md").read_text()
    for method in report_methods():
        assert f"| {method} | " in report
    assert "PASS" in report or "FAIL" in report
    assert "zero baseline FAIL" in report and "shifted baseline PASS" in report  # Kindermans
    numbers = json.loads((out / "sanity.json").read_text())
    assert numbers["layers"] == ["fc", "conv3", "conv2", "conv1"]
    assert len(numbers["model_randomisation"]) == 2 * 4 * len(report_methods())
    assert main(["report", "sanity", "--model", "tinycnn", "--images", "9", "--out", str(out)]) == 2
