"""Inputs that were silently wrong or failed badly over real gRPC (issue 12, defects 8 and 2b):
the picture explained is the one a viewer shows, and absurd names or shapes get a short,
actionable status instead of INTERNAL or "Stream removed"."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import skimage.data
from PIL import Image

from saliency.imaging import BACKGROUND
from saliency.v1 import explainer_pb2 as pb
from saliency.v1 import explainer_pb2_grpc as pb_grpc
from service_harness import ServiceThread, method, png_bytes, with_config

HUGE_NAME = "m" * (1 << 20)  # 1 MiB: under max_message_bytes (32 MiB), so it reaches the servicer


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn",)))
    yield running
    running.stop()


def predictions(service: ServiceThread, image: bytes) -> list[tuple[int, float]]:
    response = service.stub().Explain(pb.ExplainRequest(model="tinycnn", image=image), timeout=30)
    assert response.predictions
    return [(p.class_index, p.probability) for p in response.predictions]


def assert_still_serving(service: ServiceThread) -> None:
    request = pb.ExplainRequest(
        model="tinycnn", image=png_bytes(skimage.data.chelsea()), methods=[method(pb.METHOD_GRADCAM)]
    )
    assert len(service.stub().Explain(request, timeout=30).attributions) == 1


def tensor(shape: list[int]) -> pb.Tensor:
    count = int(np.prod(shape)) if shape else 1
    return pb.Tensor(shape=shape, dtype=pb.DTYPE_FLOAT32, data=np.zeros(count, np.float32).tobytes())


# --------------------------------------------------------------------- names and shapes


@pytest.mark.parametrize("rpc", ["Explain", "ExplainStream", "SanityCheck"])
def test_a_megabyte_model_name_gets_not_found_with_a_short_message(service, rpc):
    stub = pb_grpc.ExplainerStub(service.channel())
    image = png_bytes(skimage.data.chelsea())
    calls = {
        "Explain": lambda: stub.Explain(pb.ExplainRequest(model=HUGE_NAME, image=image), timeout=30),
        "ExplainStream": lambda: list(stub.ExplainStream(pb.ExplainRequest(model=HUGE_NAME, image=image), timeout=30)),
        "SanityCheck": lambda: stub.SanityCheck(pb.SanityCheckRequest(model=HUGE_NAME, image=image), timeout=30),
    }
    with pytest.raises(grpc.RpcError) as info:
        calls[rpc]()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    details = info.value.details()
    assert details.startswith("model:") and "tinycnn" in details  # says what is served
    assert len(details) < 300
    assert_still_serving(service)


def test_any_echoed_string_is_cut_so_the_error_reaches_the_caller(service):
    """A megabyte layer name is echoed by the layer check; the status message is capped in one
    place, so the caller gets INVALID_ARGUMENT rather than "Stream removed"."""
    request = pb.SanityCheckRequest(model="tinycnn", image=png_bytes(skimage.data.chelsea()), layers=[HUGE_NAME])
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.ExplainerStub(service.channel()).SanityCheck(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()[:200]
    assert info.value.details().startswith("layers[0]") and len(info.value.details()) <= 1024
    assert_still_serving(service)


def test_serve_refuses_a_missing_tokens_file_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from saliency.cli import main; raise SystemExit(main())", "serve",
         "--models", "tinycnn", "--port", "0", "--metrics-port", "0",
         "--auth-tokens-file", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "auth_tokens_file" in result.stderr


def test_a_hundred_dimension_tensor_is_invalid_argument_naming_its_shape(service):
    request = pb.ExplainRequest(model="tinycnn", tensor=tensor([1] * 100))
    with pytest.raises(grpc.RpcError) as info:
        service.stub().Explain(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith("tensor.shape:") and len(info.value.details()) < 300
    assert_still_serving(service)


@pytest.mark.parametrize("shape", [[3, 64, 64], [3, 16, 16], [3, 32, 48], [1, 32, 32]])
def test_a_tensor_of_another_size_than_the_model_input_is_refused(service, shape):
    with pytest.raises(grpc.RpcError) as info:
        service.stub().Explain(pb.ExplainRequest(model="tinycnn", tensor=tensor(shape)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith("tensor.shape:")
    assert "expected [3, 32, 32]" in info.value.details()
    assert_still_serving(service)


def test_a_tensor_of_the_model_input_size_is_explained(service):
    request = pb.ExplainRequest(model="tinycnn", tensor=tensor([3, 32, 32]), methods=[method(pb.METHOD_GRADCAM)])
    assert len(service.stub().Explain(request, timeout=30).attributions) == 1


# ---------------------------------------------------------------- what a viewer would show


def test_a_16_bit_photograph_is_classified_like_its_8_bit_original(service):
    grey8 = np.array(Image.fromarray(skimage.data.chelsea()).convert("L"))
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)
    assert grey16.mode.startswith("I;16")
    buf = io.BytesIO()
    grey16.save(buf, format="PNG")
    white = predictions(service, png_bytes(np.full_like(grey8, 255)))
    eight, sixteen = predictions(service, png_bytes(grey8)), predictions(service, buf.getvalue())
    assert sixteen == eight and sixteen != white


def test_a_transparent_image_is_explained_as_the_background_not_its_hidden_colours(service):
    hidden = np.zeros((40, 40, 4), np.uint8)
    hidden[..., 0] = 255  # red under alpha 0: a viewer shows the background
    background = np.broadcast_to(np.array(BACKGROUND, np.uint8), (40, 40, 3)).copy()
    red = hidden[..., :3].copy()
    assert predictions(service, png_bytes(red)) != predictions(service, png_bytes(background))
    assert predictions(service, png_bytes(hidden)) == predictions(service, png_bytes(background))
