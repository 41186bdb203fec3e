"""The `saliency` command line, run in-process: files written, parameters honoured, and every
user error reported as one line naming the field, with exit status 2."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliency.attribution.methods.integrated_gradients import IntegratedGradientsParams
from saliency.cli import main, parse_params
from saliency.imaging import to_model_input
from saliency.models import load_model

IMAGE_SIZE = (40, 48)  # (H, W) of the test photograph; tinycnn sees it at 32x32


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Engine measures chunk sizes on first use and caches them on disk: keep that out of ~.
    monkeypatch.setenv("SALIENCY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(*IMAGE_SIZE, 3), dtype=np.uint8)


@pytest.fixture
def image_file(tmp_path: Path, rgb: np.ndarray) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def tiny_argv(image_file: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(image_file), "--model", "tinycnn", "--out", str(out), *extra]


def top_classes(rgb: np.ndarray, k: int) -> list[int]:
    model = load_model("tinycnn")
    with torch.inference_mode():
        logits = model.module(to_model_input(rgb, model.spec)[None])[0]
    return [int(c) for c in logits.topk(k).indices]


def test_explain_writes_one_overlay_per_method_and_target(tmp_path, image_file, rgb, capsys):
    out = tmp_path / "out"
    methods = ["gradcam", "vanilla", "input_x_gradient", "ig"]
    argv = tiny_argv(image_file, out, "--methods", ",".join(methods), "--top-k", "2", "--raw",
                "--param", "ig.n_steps=4", "--chunk-size", "8")
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()

    targets = top_classes(rgb, 2)
    expected = {f"{m}_{c}.{ext}" for m in methods for c in targets for ext in ("png", "npy")}
    assert {p.name for p in out.iterdir()} == expected | {"grid.png"}
    for name in expected:
        if name.endswith(".png"):  # overlays are drawn at the ORIGINAL image size
            assert np.asarray(Image.open(out / name)).shape == (*IMAGE_SIZE, 3)
        else:  # raw maps at the model's input resolution
            raw = np.load(out / name)
            assert raw.dtype == np.float32 and raw.shape == (32, 32)
    assert Image.open(out / "grid.png").size[0] > IMAGE_SIZE[1]

    assert f"1. {targets[0]:>4} class_{targets[0]}" in stdout  # the prediction, best first
    ig_lines = [line for line in stdout.splitlines() if line.strip().startswith("ig ")]
    assert len(ig_lines) == 2
    assert all("n_steps=4 " in line and "samples=6 " in line for line in ig_lines)
    assert "deep methods" in stderr  # the progress bar


def test_explicit_targets_and_no_raw(tmp_path, image_file, capsys):
    out = tmp_path / "out"
    assert main(tiny_argv(image_file, out, "--methods", "gradcam,eigencam", "--targets", "3,7")) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"gradcam_3.png", "gradcam_7.png", "eigencam_3.png", "eigencam_7.png", "grid.png"}
    assert "class_7" in capsys.readouterr().out


def test_params_are_typed_by_the_dataclass_fields():
    params = parse_params(["ig", "gradcam"], ["ig.n_steps=4", "ig.blur_sigma=2.5", "ig.rule=riemann_left"])
    assert params["ig"] == IntegratedGradientsParams(n_steps=4, blur_sigma=2.5, rule="riemann_left")
    assert isinstance(params["ig"].n_steps, int) and isinstance(params["ig"].blur_sigma, float)
    assert set(params) == {"ig", "gradcam"}  # unparameterised methods get their defaults


@pytest.mark.slow
def test_models_lists_models_methods_and_defaults(capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "tinycnn" in listing and "efficientnet_lite0" in listing
    assert re.search(r"ig\.n_steps = 50\s+\(int\)", listing)
    assert "rise.p = 0.5" in listing


BAD_INPUTS = {
    "unknown method": (["--methods", "gradcam,nope"], "methods"),
    "unknown model": (["--model", "resnet9000"], "model"),
    "param out of range": (["--methods", "ig", "--param", "ig.n_steps=0"], "ig.n_steps"),
    "param not an int": (["--methods", "ig", "--param", "ig.n_steps=four"], "ig.n_steps"),
    "param without value": (["--methods", "ig", "--param", "ig.n_steps"], "param"),
    "param for unlisted method": (["--param", "rise.n_masks=10"], "param"),
    "unknown param field": (["--methods", "ig", "--param", "ig.steps=3"], "ig.params"),
    "bad reduction": (["--methods", "vanilla", "--param", "vanilla.reduction=median"], "vanilla.reduction"),
    "target out of range": (["--targets", "3,10"], "targets"),
    "targets not integers": (["--targets", "a,b"], "targets"),
    "top-k too large": (["--top-k", "11"], "top_k"),
    "top-k and targets": (["--top-k", "2", "--targets", "1"], "--targets"),
    "duplicate method": (["--methods", "gradcam,gradcam"], "methods"),
    "method for another architecture": (["--methods", "gradcam,attention_rollout"], "attention_rollout cannot explain"),
    "chunk size": (["--chunk-size", "0"], "chunk-size"),
    "alpha": (["--alpha", "1.5"], "alpha"),
}


@pytest.mark.parametrize("extra, field", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_arguments_exit_2_with_one_line_naming_the_field(tmp_path, image_file, capsys, extra, field):
    assert main(tiny_argv(image_file, tmp_path / "out", *extra)) == 2
    stdout, stderr = capsys.readouterr()
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert field in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # rejected before any work or output


@pytest.mark.parametrize("content", [b"not an image at all", None], ids=["garbage", "truncated"])
def test_corrupt_image_file_exits_2(tmp_path, image_file, capsys, content):
    bad = tmp_path / "bad.png"
    data = image_file.read_bytes()
    bad.write_bytes(content if content is not None else data[: len(data) // 2])
    assert main(tiny_argv(bad, tmp_path / "out", "--methods", "gradcam")) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and "image" in stderr and len(stderr.splitlines()) == 1


def test_missing_image_file_and_conflicting_sources_exit_2(tmp_path, image_file, capsys):
    assert main(tiny_argv(tmp_path / "absent.png", tmp_path / "out")) == 2
    assert "image" in capsys.readouterr().err
    assert main(tiny_argv(image_file, tmp_path / "out", "--sample", "chelsea")) == 2
    assert "--sample" in capsys.readouterr().err
    assert main(["explain", "--model", "tinycnn"]) == 2
    assert "IMAGE" in capsys.readouterr().err


@pytest.mark.slow
def test_efficientnet_sees_the_egyptian_cat(tmp_path, capsys):
    out = tmp_path / "chelsea"
    argv = ["explain", "--sample", "chelsea", "--model", "efficientnet_lite0",
            "--methods", "gradcam,vanilla", "--out", str(out)]
    assert main(argv) == 0
    first = re.search(r"^\s*1\.\s+(\d+) (.+?)\s+p=", capsys.readouterr().out, re.MULTILINE)
    assert first and first.group(1) == "285" and first.group(2) == "Egyptian cat"
    for name in ("gradcam_285.png", "vanilla_285.png", "grid.png"):
        assert (out / name).is_file()
    assert np.asarray(Image.open(out / "gradcam_285.png")).shape == (300, 451, 3)
