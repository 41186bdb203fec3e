"""The trained tiny ViT (`tinyvit_digits`, saliency.quality.digits): accuracy, the weights cache,
the zoo entry, and attention that differs from the random-weight ViT's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saliency.cli import main
from saliency.models import load_model
from saliency.quality import digits
from saliency.quality.similarity import spearman
from saliency.reports.trained_vit import (
    ACCURACY_FLOOR,
    attention_agreement,
    ink_per_patch,
    patch_sums,
    rollout_grids,
)


def test_trained_vit_reaches_its_accuracy_floor():
    model = load_model("tinyvit_digits")
    split = digits.digit_split("tinyvit")
    assert model.spec.pretrained and model.spec.attention_layers
    assert digits.accuracy(model.module, split.x_test, split.y_test) >= ACCURACY_FLOOR
    # The random-weight tinyvit it starts from is at chance.
    assert digits.accuracy(load_model("tinyvit").module, split.x_test, split.y_test) < 0.3


def test_rollout_differs_from_the_random_weight_vits():
    # Per patch (the 4x4 grid rollout resolves), on the same digits. Both models' attention
    # follows the ink, since ink and background patches embed differently even at random
    # weights, so the maps are not unrelated: measured mean Spearman ~0.56 between them (an
    # unchanged model gives 1), and rollout tracks the ink per patch at ~0.87 trained against
    # ~0.52 at random weights. Bounds: clearly below identical, and clearly closer to the digit.
    images = digits.digit_split("tinyvit").x_test[:32]
    trained, random = rollout_grids("tinyvit_digits", images), rollout_grids("tinyvit", images)
    assert all(m.shape == (4, 4) for m in trained)
    similarity = float(np.mean([spearman(a, b) for a, b in zip(trained, random)]))
    assert similarity < 0.75
    ink = [ink_per_patch(x, 8) for x in images]
    trained_ink = float(np.mean([spearman(a, i) for a, i in zip(trained, ink)]))
    random_ink = float(np.mean([spearman(b, i) for b, i in zip(random, ink)]))
    assert trained_ink > random_ink + 0.2


@pytest.mark.slow
def test_weights_cache_is_keyed_by_content_and_reused(tmp_path, monkeypatch):
    recipe = digits.Recipe("tinyvit", epochs=1, lr=0.003)
    first = digits.trained_model(recipe, tmp_path)
    (path,) = tmp_path.glob("tinyvit_digits-*.pt")
    assert path.name == f"tinyvit_digits-{digits.recipe_key(recipe)}.pt"
    assert digits.recipe_key(digits.Recipe("tinyvit", epochs=2, lr=0.003)) != digits.recipe_key(recipe)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(digits, "train", no_training)
    again = digits.trained_model(recipe, tmp_path)
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    path.write_bytes(b"not a checkpoint")  # a damaged file is replaced by training again
    monkeypatch.undo()
    repaired = digits.trained_model(recipe, tmp_path)
    torch.testing.assert_close(repaired.head.weight, first.head.weight, rtol=0, atol=0)


def test_cache_dir_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv(digits.CACHE_ENV, str(tmp_path / "c"))
    assert digits.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(digits.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert digits.cache_dir() == tmp_path / "saliency"


def test_attention_agreement_numbers_are_correlations():
    images = digits.digit_split("tinyvit").x_test[:4]
    agreement = attention_agreement("tinyvit_digits", images, ig_steps=8)
    assert len(agreement.rollout_ig) == 4
    for values in (agreement.rollout_ig, agreement.rollout_gxi, agreement.ig_gxi, agreement.rollout_ink):
        assert all(-1 <= v <= 1 for v in values)
    assert patch_sums(torch.ones(32, 32), 8).tolist() == [[64.0] * 4] * 4


def test_model_list_says_which_weights_are_random(capsys):
    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "[RANDOM WEIGHTS]" not in lines["tinyvit_digits"]
    for name in ("tinyvit", "vit_ti16", "tinycnn"):
        assert "[RANDOM WEIGHTS]" in lines[name]


@pytest.mark.parametrize("architecture", ["nope"])
def test_unknown_architecture_is_refused(architecture):
    with pytest.raises(ValueError, match="unknown architecture"):
        digits.build(architecture, 0)
