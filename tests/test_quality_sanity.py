"""Sanity checks on tinycnn: model randomisation (cascading and independent) on a copy, data
randomisation on scikit-learn's digits, and input invariance under a shift absorbed by the
first layer."""

from __future__ import annotations

import pytest
import torch

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import make_params
from saliency.errors import DeadlineExceeded, InvalidArgument
from saliency.models.weights import weights_hash
from saliency.quality.data_randomisation import data_randomisation, load_digits
from saliency.quality.invariance import (
    CHANGE_TOLERANCE,
    Variant,
    ig_variants,
    input_invariance,
    shifted_model,
)
from saliency.quality.sanity import (
    cascade_modules,
    copy_model,
    explain_maps,
    model_randomisation,
    randomize_modules,
    resolve_layers,
)
from saliency.quality.similarity import Similarity

CHUNKS = ChunkSizes(16, 16)


@pytest.fixture
def one_thread():
    """Models this small run fastest on one thread, and a busy machine cannot stall them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gradient_methods() -> dict:
    return {"vanilla": make_params("vanilla"), "gradcam": make_params("gradcam"), "guided_backprop": make_params("guided_backprop")}


def test_layers_resolve_top_first_and_bad_names_are_refused(tiny):
    assert resolve_layers(tiny.module, ["conv1", "fc", "conv2"]) == ("fc", "conv2", "conv1")
    # The served tinycnn has bn2 folded into conv2 (models/optimize.py): bn2 holds no parameters.
    assert cascade_modules(tiny.module, "conv2") == ["conv2", "conv3", "fc"]
    with pytest.raises(InvalidArgument) as info:
        resolve_layers(tiny.module, ["fc", "act1"])  # a ReLU has no parameters
    assert info.value.field == "layers[1]"
    with pytest.raises(InvalidArgument) as info:
        resolve_layers(tiny.module, ["fc", "fc"])
    assert info.value.field == "layers[1]"


def test_cascading_randomisation_destroys_gradient_maps_and_leaves_the_served_model(tiny, tiny_images, one_thread):
    served = weights_hash(tiny.module)
    images = list(tiny_images[:2])
    result = model_randomisation(tiny, images, gradient_methods(), modes=("cascading", "independent"), chunk_sizes=CHUNKS)
    assert weights_hash(tiny.module) == served  # only copies were randomised
    assert result.layers == ("fc", "conv3", "conv2", "conv1")
    for method in ("vanilla", "gradcam"):
        steps = [result.get("cascading", layer, method).similarity.spearman_abs for layer in result.layers]
        assert max(steps) < 0.8, (method, steps)
        assert steps[-1] < 0.5, (method, steps)  # everything randomised: little is left
    # A layer gets the same draw in both schedules: the top layer's numbers coincide.
    assert result.get("cascading", "fc", "vanilla").per_image == result.get("independent", "fc", "vanilla").per_image


def test_an_unrandomised_copy_gives_identical_maps_and_redrawing_changes_only_its_layer(tiny, tiny_images):
    # The control that makes the test above meaningful: the copy alone changes nothing.
    copy = copy_model(tiny)
    methods = gradient_methods()
    targets = [1]
    original = explain_maps(Engine(tiny, CHUNKS), list(tiny_images[:1]), targets, methods)[0]
    copied = explain_maps(Engine(copy, CHUNKS), list(tiny_images[:1]), targets, methods)[0]
    for method in methods:
        same = Similarity.of(original[method], copied[method])
        assert same.spearman_abs == pytest.approx(1.0) and same.ssim == pytest.approx(1.0), method
    randomize_modules(copy.module, ["fc"], seed=0)
    assert weights_hash(copy.module) != weights_hash(tiny.module)
    assert torch.equal(copy.module.conv1.weight, tiny.module.conv1.weight)  # only fc was redrawn
    assert not torch.equal(copy.module.fc.weight, tiny.module.fc.weight)
    w, redrawn = tiny.module.fc.weight, copy.module.fc.weight
    assert float(redrawn.std()) == pytest.approx(float(w.std()), rel=0.2)  # scale kept


def test_a_stop_request_ends_the_run_between_states(tiny, tiny_images):
    with pytest.raises(DeadlineExceeded):
        model_randomisation(tiny, list(tiny_images[:1]), {"vanilla": make_params("vanilla")}, should_stop=lambda: True, chunk_sizes=CHUNKS)


@pytest.mark.slow
def test_data_randomisation_on_digits(one_thread):
    digits = load_digits()
    assert digits.x_train.shape[1:] == (3, 16, 16) and len(digits.y_train) + len(digits.y_test) == 1797
    result = data_randomisation({"vanilla": make_params("vanilla"), "gradcam": make_params("gradcam")}, epochs=15, n_images=8)
    acc = result.accuracy
    assert acc["true_test"] > 0.6 and acc["control_test"] > 0.6  # learnt the digits
    assert acc["shuffled_test"] < 0.25  # learnt nothing that generalises
    # The two true-label models' maps are alike; the shuffled-label model's are not.
    for method in ("vanilla", "gradcam"):
        assert result.similarity[method].spearman_abs < result.control[method].spearman_abs - 0.1, method
    assert result.similarity["gradcam"].spearman_abs < 0.3


def test_input_invariance_ig_zero_baseline_changes_shifted_baseline_does_not(tiny, tiny_images, one_thread):
    served = weights_hash(tiny.module)
    shift = 1.0
    x = tiny_images[0]
    shifted = shifted_model(tiny, shift)
    with torch.inference_mode():
        torch.testing.assert_close(shifted.module((x + shift)[None]), tiny.module(x[None]), rtol=1e-5, atol=1e-5)
    variants = [
        Variant("vanilla", "vanilla", make_params("vanilla")),
        Variant("input_x_gradient", "input_x_gradient", make_params("input_x_gradient")),
        Variant("gradcam", "gradcam", make_params("gradcam")),
        *ig_variants(make_params("ig", n_steps=16), shift, x.shape),
    ]
    results = input_invariance(tiny, list(tiny_images[:2]), variants, shift, chunk_sizes=CHUNKS)
    assert results["ig_zero_baseline"].changes and results["ig_zero_baseline"].mean_change > 0.1
    assert not results["ig_shifted_baseline"].changes
    assert results["ig_shifted_baseline"].mean_change < CHANGE_TOLERANCE / 10
    assert results["input_x_gradient"].changes
    assert not results["vanilla"].changes and not results["gradcam"].changes
    assert weights_hash(tiny.module) == served  # the shift lives on a copy
