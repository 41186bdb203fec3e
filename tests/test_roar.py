"""ROAR / KAR (saliency.quality.roar): `saliency report roar --quick` end to end, and its parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saliency.cli import main
from saliency.quality import digits
from saliency.quality.roar import importance_order, remove, retrained_accuracy, sobel_maps
from saliency.reports.roar_report import load_report, markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "roar"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run on tinycnn: vanilla, Grad-CAM and the random control, k in {0, 50, 90} %,
    one retraining seed, ROAR and KAR."""
    out = tmp_path_factory.mktemp("roar")
    status = main(["report", "roar", "--quick", "--models", "tinycnn", "--out", str(out), "--no-progress"])
    assert status == 0
    return out, json.loads((out / "roar.json").read_text())


@pytest.mark.slow
def test_report_files_are_written(quick_run):
    out, numbers = quick_run
    assert {p.name for p in out.iterdir()} >= {"report.md", "roar.json", "roar.png"}
    assert (out / "roar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    assert "## Against the seed's claims" in text and "| random |" in text and "KAR" in text
    (model,) = numbers["models"]
    assert model["model"] == "tinycnn" and set(model["roar"]) == {"vanilla", "gradcam", "random"}
    assert set(model["kar"]) == set(model["roar"])
    assert model["fractions"] == [0.0, 0.5, 0.9] and model["seeds"] == [0]


@pytest.mark.slow
def test_random_control_accuracy_falls_with_k(quick_run):
    # Random removal destroys evidence without drawing any shape: measured here 0.97 at k = 0,
    # ~0.85 at 50 % and ~0.5 at 90 %. The bounds leave room for seed noise (a few points)
    # while a removal that does nothing (~0.97 throughout) or rises fails them.
    _, numbers = quick_run
    (model,) = numbers["models"]
    acc = {float(k): v[0] for k, v in model["roar"]["random"].items()}
    assert acc[0.9] < acc[0.0] - 0.2
    assert acc[0.5] <= acc[0.0] + 0.03 and acc[0.9] <= acc[0.5] + 0.03
    assert model["explained_accuracy"] > 0.9 and acc[0.0] > 0.9


@pytest.mark.slow
def test_mean_replacement_is_the_training_sets_channel_mean(quick_run):
    _, numbers = quick_run
    (model,) = numbers["models"]
    split = digits.digit_split("tinycnn")
    train_mean = split.x_train.mean(dim=(0, 2, 3))
    # The check can tell the training mean from the test set's.
    assert (train_mean - split.x_test.mean(dim=(0, 2, 3))).abs().max() > 1e-3
    torch.testing.assert_close(torch.tensor(model["fill"]), train_mean, rtol=0, atol=1e-6)


def test_remove_replaces_the_top_ranked_pixels_with_the_fill():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = torch.arange(32, dtype=torch.float32).view(2, 4, 4)
    maps[1] = -maps[1]  # signed maps rank by magnitude
    fill = torch.tensor([1.5, -2.0, 0.25])
    order = importance_order(maps, seed=0)
    out = remove(x, order, 0.25, fill)  # 4 of 16 pixels
    removed = (out != x).any(1)
    assert removed.sum(dim=(1, 2)).tolist() == [4, 4]
    assert removed[0].flatten()[-4:].all() and removed[1].flatten()[-4:].all()  # the largest |map|
    assert torch.equal(out.permute(0, 2, 3, 1)[removed], fill.expand(8, 3))
    kept = remove(x, order, 0.25, fill, keep=True)  # KAR: the 4 least important go
    assert ((kept != x).any(1)[0].flatten()[:4]).all()
    assert torch.equal(remove(x, order, 0.0, fill), x)


def test_ties_are_broken_in_a_seeded_random_order():
    flat = torch.zeros(1, 8, 8)
    a, b, c = importance_order(flat, 0), importance_order(flat, 0), importance_order(flat, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0, :16], torch.arange(16))  # not raster order
    assert sorted(a[0].tolist()) == list(range(64))


@pytest.mark.slow
def test_retraining_is_deterministic_for_a_seed():
    split = digits.digit_split("tinycnn")
    x_train, y_train = split.x_train[:256], split.y_train[:256]
    args = (x_train, y_train, split.x_test, split.y_test)
    first = retrained_accuracy("tinycnn", *args, seed=1)
    assert first == retrained_accuracy("tinycnn", *args, seed=1)
    a = digits.train(digits.Recipe("tinycnn", epochs=2, lr=0.02), x_train, y_train, seed=3)
    b = digits.train(digits.Recipe("tinycnn", epochs=2, lr=0.02), x_train, y_train, seed=3)
    c = digits.train(digits.Recipe("tinycnn", epochs=2, lr=0.02), x_train, y_train, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_sobel_control_is_an_edge_map():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :, 4:] = 1.0  # a vertical edge between columns 3 and 4
    edges = sobel_maps(x)[0]
    assert edges[:, 3:5].min() > 0 and edges[:, :2].abs().max() == 0 and edges[:, 6:].abs().max() == 0


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--fractions", "10,50"], "fractions"),
        (["--fractions", "0,100"], "fractions"),
        (["--fractions", "0,x"], "fractions"),
        (["--seeds", "0"], "seeds"),
        (["--models", "resnet"], "models[0]"),
        (["--models", "tinycnn", "--methods", "vanilla,nope"], "methods[1]"),
        (["--models", "tinycnn", "--methods", "attention_rollout"], "methods[0]"),
        (["--methods", "vanilla"], "methods"),
        (["--models", "tinycnn", "--kar", "tinyvit_digits"], "kar[0]"),
        (["--seed", "-1"], "seed"),
        (["--seed", str(2**63)], "seed"),
        (["--seeds", "1000000"], "seeds"),
        (["--fractions", "0,10,10"], "fractions"),
        (["--fractions", "0,,10"], "fractions"),
        (["--models", "tinycnn,"], "models"),
        (["--models", "tinycnn,tinycnn"], "models"),
        (["--models", "tinycnn", "--methods", "vanilla,vanilla"], "methods"),
        (["--kar", "tinycnn,"], "kar"),
        (["--threads", "0"], "threads"),
    ],
)
def test_bad_flags_name_the_field(flags, field, tmp_path, capsys):
    assert main(["report", "roar", "--quick", "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"saliency: {field}:" in err, err


def test_an_out_directory_that_cannot_be_made_names_the_field(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["report", "roar", "--quick", "--out", str(tmp_path / "file" / "o")]) == 2
    assert "saliency: out:" in capsys.readouterr().err


def test_report_is_written_again_from_its_json(quick_run, tmp_path, capsys):
    out, _ = quick_run
    again = tmp_path / "again"
    assert main(["report", "roar", "--from-json", str(out / "roar.json"), "--out", str(again)]) == 0
    assert (again / "report.md").read_text() == (out / "report.md").read_text()
    assert json.loads((again / "roar.json").read_text()) == json.loads((out / "roar.json").read_text())
    (tmp_path / "bad.json").write_text("{}")
    assert main(["report", "roar", "--from-json", str(tmp_path / "bad.json"), "--out", str(again)]) == 2
    assert "saliency: from-json:" in capsys.readouterr().err


@pytest.mark.parametrize("folder", [DOCS, DOCS / "kar"], ids=["roar", "kar"])
def test_committed_report_is_what_its_json_says(folder):
    """docs/roar/report.md (and kar/) is the markdown of the roar.json beside it: no number
    in the report was edited by hand or left from an older run."""
    assert markdown(load_report(folder / "roar.json")) == (folder / "report.md").read_text()
