"""Maps at the original image's size (OutputOptions.map_size, `--map-size`) and `resize: crop`
(issue 11): the crop against torchvision's evaluation preprocessing written out here with
Pillow, maps placed at the photograph's size with NaN where the model never looked, overlays
dimmed there, over real gRPC and through both halves of the command line, on a non-square
photograph (chelsea, 451x300)."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

import user_nets
from saliency import render
from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import make_params
from saliency.attribution.types import Attribution, Targets
from saliency.cli import MAX_MAP_SIDE, main
from saliency.codec import convert, quality_codec, tensors
from saliency.codec.convert import MapFrame, OutputOptions
from saliency.imaging import to_model_input
from saliency.models import load_model_config
from saliency.models.preprocess import (
    InputRegion,
    crop_offset,
    input_region,
    resize_to_input,
    scaled_size,
)
from saliency.quality.evaluate import region_from_box
from saliency.runtime.config import ServiceConfig
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, method, png_bytes, with_config

PHOTO = skimage.data.chelsea()  # 300 rows x 451 columns
SIZE = 64
# The crop of a 300x451 photograph for a 64x64 input, by hand: scaled so the shorter side is
# round(64 / 0.875) = 73 -> 73 x int(73 * 451 / 300) = 73 x 109; the centre 64x64 starts at
# row round(9 / 2) = 4 (Python rounds half to even), column round(45 / 2) = 22.
SCALED, OFFSET = (73, 109), (4, 22)
# That crop in the photograph's pixels: rows 4 * 300/73 .. 68 * 300/73, columns 22 * 451/109 ..
# 86 * 451/109, rounded: the box (top, bottom, left, right) a map at the original size covers.
BOX = (round(4 * 300 / 73), round(68 * 300 / 73), round(22 * 451 / 109), round(86 * 451 / 109))


def torchvision_crop(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torchvision's Resize(round(size / 0.875)) + CenterCrop(size), written with Pillow:
    the shorter side scaled to round(s / 0.875), the longer truncated; the offset rounded."""
    height, width = rgb.shape[:2]
    short = round(size[0] / 0.875)
    new_h, new_w = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
    top, left = int(round((new_h - size[0]) / 2.0)), int(round((new_w - size[1]) / 2.0))
    scaled = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(scaled.crop((left, top, left + size[1], top + size[0])), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def crop_config(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crop_model")
    torch.manual_seed(0)
    net = user_nets.randomise_batchnorm(user_nets.ResNetStyle()).eval()
    torch.save(net.state_dict(), d / "resnet.pth")
    path = d / "crop.yaml"
    path.write_text(yaml.safe_dump({
        "name": "user_crop",
        "model": {"model_file": str(Path(user_nets.__file__).resolve()), "class_name": "ResNetStyle"},
        "weights": "resnet.pth",
        "input": {"size": [SIZE, SIZE], "resize": "crop"},
    }))
    return path


@pytest.fixture(scope="module")
def crop_model(crop_config):
    return load_model_config(crop_config)


@pytest.fixture(scope="module")
def service(crop_config):
    running = ServiceThread(with_config(models=("tinycnn", "user_crop"), model_configs=(str(crop_config),)))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(PHOTO).save(path)
    return path


# -------------------------------------------------------------------------------- the crop


def test_the_crop_geometry_is_torchvisions():
    assert scaled_size((300, 451), (SIZE, SIZE)) == SCALED and crop_offset(SCALED, (SIZE, SIZE)) == OFFSET
    assert scaled_size((300, 451), (224, 224)) == (256, 384) and crop_offset((256, 384), (224, 224)) == (16, 80)
    assert scaled_size((451, 300), (224, 224)) == (384, 256)  # portrait: the width is the shorter side
    # A non-square input: the image must cover both sides of size / 0.875.
    scaled = scaled_size((300, 451), (64, 160))
    assert scaled[0] >= round(64 / 0.875) and scaled[1] == round(160 / 0.875)


@pytest.mark.parametrize("size", [(SIZE, SIZE), (224, 224)])
def test_the_crop_equals_pillows_resize_and_centre_crop(crop_model, size):
    pixels = torch.from_numpy(PHOTO).permute(2, 0, 1).float() / 255
    ours = resize_to_input(pixels, size, "crop").permute(1, 2, 0).numpy()
    reference = torchvision_crop(PHOTO, size)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 2.5 / 255  # Pillow rounds to 8 bits; both antialias
    assert np.abs(ours - reference).mean() < 0.5 / 255


def test_a_crop_model_never_sees_outside_its_crop(crop_model):
    """Property: pixels outside the crop do not change the model input; inside they do."""
    x = to_model_input(PHOTO, crop_model.spec)
    assert x.shape == (3, SIZE, SIZE)
    outside, inside = PHOTO.copy(), PHOTO.copy()
    outside[:, : BOX[2] - 3] = 255  # a white band left of the crop
    outside[: BOX[0] - 3] = 0
    inside[150:160, 220:230] = 255
    assert torch.equal(to_model_input(outside, crop_model.spec), x)
    assert not torch.equal(to_model_input(inside, crop_model.spec), x)


def test_the_input_region_is_the_crop_in_the_photographs_pixels():
    region = input_region("crop", (SIZE, SIZE), (300, 451))
    assert region.pixel_box((300, 451), (300, 451)) == BOX
    # The crop is centred and 0.875 of the shorter side tall.
    assert abs((region.y_min + region.y_max) / 2 - 150) < 300 / 73
    assert abs(region.y_max - region.y_min - 0.875 * 300) < 300 / 73
    assert input_region("stretch", (SIZE, SIZE), (300, 451)) == InputRegion(0, 0, 451, 300)


# --------------------------------------------------------------------- placing and drawing


def test_a_placed_map_is_nan_outside_the_box_and_the_resized_map_inside():
    m = np.random.default_rng(0).random((SIZE, SIZE)).astype(np.float32)
    placed = render.place_map(m, (300, 451), BOX)
    top, bottom, left, right = BOX
    reference = np.asarray(Image.fromarray(m).resize((right - left, bottom - top), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(placed[top:bottom, left:right], reference)
    outside = np.ones((300, 451), bool)
    outside[top:bottom, left:right] = False
    assert np.isnan(placed[outside]).all() and np.isfinite(placed[~outside]).all()
    assert render.finite_box(placed) == BOX
    # Stretch: the whole photograph, as the overlays always resized maps.
    np.testing.assert_array_equal(render.place_map(m, (300, 451)), render.resize_map(m, (300, 451)))


def test_an_overlay_dims_what_the_model_did_not_see_and_draws_the_map_on_the_rest():
    m = np.random.default_rng(1).random((SIZE, SIZE))
    top, bottom, left, right = BOX
    drawn = render.overlay(PHOTO, m, box=BOX).astype(int)
    dimmed = np.rint(PHOTO.astype(np.float32) * render.OUTSIDE_DIM).astype(int)
    np.testing.assert_array_equal(drawn[:top], dimmed[:top])
    np.testing.assert_array_equal(drawn[:, right:], dimmed[:, right:])
    crop = np.ascontiguousarray(PHOTO[top:bottom, left:right])
    np.testing.assert_array_equal(drawn[top:bottom, left:right], render.overlay(crop, m))
    with pytest.raises(ValueError, match="not a non-empty box"):
        render.overlay(PHOTO, m, box=(0, 400, 0, 10))


# ------------------------------------------------------------------------- the API's codec


def test_output_options_carry_the_map_size_and_refuse_an_unknown_one():
    for size in ("input", "original"):
        options = OutputOptions(map_size=size)
        assert convert.output_options_from_proto(convert.output_options_to_proto(options)) == options
    assert convert.output_options_from_proto(pb.OutputOptions()).map_size == "input"
    with pytest.raises(Exception) as info:
        convert.output_options_from_proto(pb.OutputOptions(map_size=7))
    assert info.value.field == "output.map_size"


def _frame(spec, options, max_side=2048, tensor=False) -> MapFrame:
    request = pb.ExplainRequest(tensor=pb.Tensor()) if tensor else pb.ExplainRequest(image=b"x")
    return convert.map_frame(request, spec, PHOTO, options, max_side)


def test_a_map_at_the_original_size_is_normalised_then_placed(crop_model):
    raw = torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    options = OutputOptions(map_size="original", normalization="max_abs", map_dtype="float16", include_overlay=True)
    frame = _frame(crop_model.spec, options)
    assert (frame.size, frame.box, frame.picture.shape) == ((300, 451), BOX, (300, 451, 3))
    message = convert.attribution_to_proto(Attribution("gradcam", 1, raw), options, frame, False, 0, 0)
    a = convert.attribution_from_proto(message)
    expected = render.place_map(raw / raw.abs().max(), (300, 451), BOX)
    np.testing.assert_allclose(a.map.numpy(), expected, atol=1e-3)  # float16 on the wire, NaN kept
    got, want = convert.input_region_from_proto(message), frame.region
    assert [got.x_min, got.y_min, got.x_max, got.y_max] == pytest.approx([want.x_min, want.y_min, want.x_max, want.y_max])
    # Bytes the response holds per map: the float16 map at the photograph's size and its PNG.
    assert convert.response_bytes_per_map(options, frame, (SIZE, SIZE)) == 300 * 451 * 2 + PHOTO.nbytes
    overlay = np.asarray(Image.open(io.BytesIO(message.overlay_png)))
    np.testing.assert_array_equal(overlay, render.overlay(PHOTO, raw, box=BOX))


def test_maps_at_the_original_size_are_capped_like_overlays_and_a_tensor_is_its_own_frame(crop_model):
    options = OutputOptions(map_size="original")
    capped = _frame(crop_model.spec, options, max_side=200)
    assert capped.size == (133, 200) and capped.picture is None and capped.nbytes == 0
    assert capped.box == input_region("crop", (SIZE, SIZE), (300, 451)).pixel_box((300, 451), (133, 200))
    assert convert.response_bytes_per_map(options, capped, (SIZE, SIZE)) == 133 * 200 * 4
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)  # a tensor input's de-normalisation
    own = convert.map_frame(pb.ExplainRequest(tensor=pb.Tensor()), crop_model.spec, rgb, options, 2048)
    assert own.box == (0, SIZE, 0, SIZE) and own.region == InputRegion.whole((SIZE, SIZE))


def test_a_ground_truth_box_is_read_through_the_crop():
    region = input_region("crop", (SIZE, SIZE), (300, 451))
    inside = region_from_box((region.x_min, region.y_min, region.x_max, region.y_max), (300, 451), (SIZE, SIZE), region)
    assert bool(inside.all())
    left_half = region_from_box((0, 0, 225.5, 300), (300, 451), (SIZE, SIZE), region)
    assert int(left_half[0].sum()) == 32  # the crop is centred: half its columns
    strip = pb.GroundTruth(box=pb.Box(x_min=0, y_min=0, x_max=80, y_max=300))  # left of the crop
    with pytest.raises(Exception, match="outside the part of the image the model sees"):
        quality_codec.region_from_proto(strip, (300, 451), (SIZE, SIZE), region)


# ---------------------------------------------------------------------------- over gRPC


def _explain(service, model: str, output: pb.OutputOptions, image=None, tensor=None) -> pb.ExplainResponse:
    request = pb.ExplainRequest(
        model=model, targets=pb.Targets(classes=pb.ClassList(indices=[1])),
        methods=[method(pb.METHOD_GRADCAM), method(pb.METHOD_VANILLA)], output=output,
    )
    if tensor is not None:
        request.tensor.CopyFrom(tensors.tensor_to_proto(tensor))
    else:
        request.image = png_bytes(PHOTO if image is None else image)
    return service.stub().Explain(request, timeout=120)


def test_list_models_says_how_a_model_resizes(service, capsys):
    listed = {m.name: m.resize for m in service.stub().ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert listed == {"tinycnn": "stretch", "user_crop": "crop"}
    assert main(["models", "--server", service.address]) == 0
    out = capsys.readouterr().out
    assert f"user_crop            {SIZE}x{SIZE} centre crop, 7 classes" in out and "tinycnn              32x32, " in out


def test_served_maps_at_the_original_size_of_a_crop_model(service, crop_model):
    response = _explain(service, "user_crop", pb.OutputOptions(map_size=pb.MAP_SIZE_ORIGINAL, include_overlay=True))
    x = to_model_input(PHOTO, crop_model.spec)
    params = {"gradcam": make_params("gradcam"), "vanilla": make_params("vanilla")}
    local = Engine(crop_model, ChunkSizes(8, 16)).explain(x, Targets(classes=(1,)), params)
    for message, expected in zip(response.attributions, local.attributions, strict=True):
        a = convert.attribution_from_proto(message)
        assert a.map.shape == (300, 451)
        reference = render.place_map(expected.map.float(), (300, 451), BOX)
        assert np.array_equal(np.isnan(a.map.numpy()), np.isnan(reference))
        scale = float(expected.map.abs().max())
        np.testing.assert_allclose(a.map.numpy(), reference, atol=1e-3 * scale + 1e-7, rtol=1e-3)
        r = message.region
        assert (round(r.y_min), round(r.y_max), round(r.x_min), round(r.x_max)) == BOX
        overlay = np.asarray(Image.open(io.BytesIO(message.overlay_png))).astype(int)
        dimmed = np.rint(PHOTO.astype(np.float32) * render.OUTSIDE_DIM).astype(int)
        np.testing.assert_array_equal(overlay[:, : BOX[2]], dimmed[:, : BOX[2]])


def test_served_maps_at_the_input_size_by_default_and_for_a_tensor(service, crop_model):
    response = _explain(service, "user_crop", pb.OutputOptions())
    assert all(list(a.map.shape) == [SIZE, SIZE] for a in response.attributions)
    x = to_model_input(PHOTO, crop_model.spec)
    response = _explain(service, "user_crop", pb.OutputOptions(map_size=pb.MAP_SIZE_ORIGINAL), tensor=x)
    for message in response.attributions:
        a = convert.attribution_from_proto(message)
        assert a.map.shape == (SIZE, SIZE) and bool(torch.isfinite(a.map).all())
        assert (message.region.x_max, message.region.y_max) == (SIZE, SIZE)


def test_a_stretch_model_at_the_original_size_covers_the_whole_photograph(service):
    input_maps = _explain(service, "tinycnn", pb.OutputOptions())
    original = _explain(service, "tinycnn", pb.OutputOptions(map_size=pb.MAP_SIZE_ORIGINAL))
    for small, big in zip(input_maps.attributions, original.attributions, strict=True):
        m = convert.attribution_from_proto(small).map
        np.testing.assert_allclose(convert.attribution_from_proto(big).map.numpy(), render.resize_map(m.numpy(), (300, 451)),
                                   atol=1e-6)


def test_an_unknown_map_size_is_an_invalid_argument_naming_the_field(service):
    with pytest.raises(grpc.RpcError) as info:
        _explain(service, "tinycnn", pb.OutputOptions(map_size=9))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("output.map_size: ")


# --------------------------------------------------------------------------- the command line


def test_the_cli_cap_is_the_services():
    assert MAX_MAP_SIDE == ServiceConfig().max_overlay_side


@pytest.mark.parametrize("size", ["original", "input"])
def test_explain_writes_the_same_maps_in_process_and_through_the_server(service, crop_config, photo_file, tmp_path,
                                                                        size, capsys):
    args = [str(photo_file), "--methods", "gradcam,vanilla", "--targets", "1", "--raw", "--map-size", size]
    assert main(["explain", *args, "--model-config", str(crop_config), "--out", str(tmp_path / "local")]) == 0
    assert "saw the centre crop" in capsys.readouterr().out
    assert main(["explain", *args, "--model", "user_crop", "--server", service.address,
                 "--out", str(tmp_path / "remote")]) == 0
    for stem in ("gradcam_1", "vanilla_1"):
        local, remote = np.load(tmp_path / "local" / f"{stem}.npy"), np.load(tmp_path / "remote" / f"{stem}.npy")
        assert local.shape == ((300, 451) if size == "original" else (SIZE, SIZE)) == remote.shape
        assert np.array_equal(np.isnan(local), np.isnan(remote))
        np.testing.assert_allclose(local, remote, atol=1e-3 * np.nanmax(np.abs(local)) + 1e-7, equal_nan=True)
        if size == "original":
            assert render.finite_box(local) == BOX
        drawn = [np.asarray(Image.open(tmp_path / where / f"{stem}.png")).astype(int) for where in ("local", "remote")]
        dimmed = np.rint(PHOTO.astype(np.float32) * render.OUTSIDE_DIM).astype(int)
        for picture in drawn:
            assert picture.shape == PHOTO.shape
            np.testing.assert_array_equal(picture[: BOX[0]], dimmed[: BOX[0]])
        assert np.abs(drawn[0] - drawn[1]).max() <= 2  # maps equal to float tolerance


def test_explain_refuses_an_unknown_map_size(photo_file, capsys):
    assert main(["explain", str(photo_file), "--model", "tinycnn", "--map-size", "huge"]) == 2
    assert "--map-size" in capsys.readouterr().err
