"""Quality metrics with known answers: Spearman / top-k IoU closed cases, deletion / insertion
curves and the pointing game on a model whose evidence is known, batching invariance of the
curves on the executor, and which metric groups apply to a request."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from helpers import wrap
from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.types import Attribution, Prediction, Targets
from saliency.errors import InvalidArgument
from saliency.quality import similarity
from saliency.quality.curves import auc, pixel_counts, plan_perturbation_curves, rank_positions
from saliency.quality.evaluate import (
    EvaluateOptions,
    evaluate_in_process,
    map_scores,
    pointing_game,
    region_from_box,
    region_from_mask,
)

SIZE = 32


class QuadrantEnergy(nn.Module):
    """logit 0 = 12 * mean over the top-left quadrant of x^2 - 6; logit 1 = 0.

    The evidence for class 0 is exactly the quadrant: deleting (zeroing) its pixels removes it,
    and blurring a +-1 checkerboard there (the insertion canvas) all but removes it too.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        energy = self.features(x)[:, :, :h, :w].pow(2).mean(dim=(1, 2, 3))
        return torch.stack([12 * energy - 6, torch.zeros_like(energy)], dim=1)


@pytest.fixture(scope="module")
def quadrant():
    model = wrap(QuadrantEnergy(), (SIZE, SIZE), 2, "features")
    checker = (torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None, :]) % 2 * 2.0 - 1.0
    x = torch.zeros(3, SIZE, SIZE)
    x[:, : SIZE // 2, : SIZE // 2] = checker[: SIZE // 2, : SIZE // 2]
    truth = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    truth[: SIZE // 2, : SIZE // 2] = True
    return model, x, truth


def random_maps(n: int) -> list[torch.Tensor]:
    return [torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(100 + i)) for i in range(n)]


# ------------------------------------------------------------------------- closed cases


def test_spearman_closed_cases():
    a = torch.arange(64.0).reshape(8, 8)
    assert similarity.spearman(a, a) == pytest.approx(1.0)
    assert similarity.spearman(a, -a) == pytest.approx(-1.0)
    assert similarity.spearman(a, torch.exp(a / 10)) == pytest.approx(1.0)  # any monotone map
    assert similarity.spearman(a, torch.zeros(8, 8)) == 0.0  # constant: no ranking, defined as 0
    # With ties: average ranks, as scipy.
    x = np.array([[1.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
    y = np.array([[1.0, 2.0, 3.0], [6.0, 5.0, 4.0]])
    assert similarity.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x.ravel(), y.ravel())[0])
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(16, 16)), rng.normal(size=(16, 16))
    assert similarity.spearman(u, v) == pytest.approx(scipy.stats.spearmanr(u.ravel(), v.ravel())[0])


def test_top_k_iou_closed_cases():
    a = torch.arange(100.0).reshape(10, 10)
    assert similarity.top_k_iou(a, a, 0.1) == 1.0
    assert similarity.top_k_iou(a, -a, 0.1) == 0.0  # top 10 vs bottom 10
    shifted = (a + 10) % 100  # its top 20 % are a's values 70..89: 10 shared of 30
    assert similarity.top_k_iou(a, shifted, 0.2) == pytest.approx(10 / 30)
    assert similarity.top_k_iou(a, shifted, 1.0) == 1.0
    with pytest.raises(ValueError):
        similarity.top_k_iou(a, a, 0.0)


def test_ssim_and_hog_are_one_for_identical_maps_and_lower_for_others():
    maps = random_maps(2)
    blob = torch.exp(-((torch.arange(SIZE) - 10.0) ** 2)[:, None] / 40 - ((torch.arange(SIZE) - 20.0) ** 2)[None, :] / 40)
    assert similarity.ssim(blob, blob) == pytest.approx(1.0)
    assert similarity.hog_similarity(blob, blob) == pytest.approx(1.0)
    assert similarity.ssim(blob, maps[0]) < 0.5
    assert similarity.hog_similarity(blob, maps[0]) < 0.5
    assert similarity.ssim(blob, 3 * blob) == pytest.approx(1.0)  # both scaled to [0, 1] first
    assert similarity.ssim(blob, torch.zeros(SIZE, SIZE)) == 0.0


def test_auc_and_pixel_counts():
    assert auc(torch.ones(5)) == pytest.approx(1.0)
    assert auc(torch.linspace(1, 0, 9)) == pytest.approx(0.5)
    assert pixel_counts(1024, 16).tolist() == [64 * k for k in range(17)]
    m = torch.tensor([[0.1, 0.9], [0.5, 0.9]])  # ties keep raster order
    assert rank_positions(m).tolist() == [[3, 0], [2, 1]]


# ------------------------------------------------------------ maps with known evidence


def curves_of(model, x, maps: dict[str, torch.Tensor], chunk: int = 8) -> dict[str, Attribution]:
    executor = ChunkExecutor(model, ChunkSizes(chunk, chunk))
    tasks = [plan_perturbation_curves(x, m, 0, name, steps=16) for name, m in maps.items()]
    return {name: r for name, r in zip(maps, executor.run(tasks))}


def test_the_true_evidence_mask_beats_random_maps_on_deletion_and_insertion(quadrant):
    model, x, truth = quadrant
    maps = {"truth": truth.float(), **{f"random{i}": m for i, m in enumerate(random_maps(4))}}
    results = curves_of(model, x, maps)
    truth_stats = results["truth"].stats
    randoms = [results[f"random{i}"].stats for i in range(4)]
    # The quadrant is a quarter of the image: deleting it in 4 of 16 steps takes p from
    # sigmoid(6) to sigmoid(-6); random order removes the evidence linearly (AUC about 0.5).
    assert truth_stats["deletion_auc"] < 0.2
    assert all(0.35 < r["deletion_auc"] < 0.65 for r in randoms)
    assert truth_stats["insertion_auc"] > 0.8
    assert all(0.35 < r["insertion_auc"] < 0.65 for r in randoms)
    deletion, insertion = results["truth"].raw  # the curves themselves
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert float(deletion[0]) == pytest.approx(sigmoid(6.0), abs=1e-4)
    assert float(deletion[4]) == pytest.approx(sigmoid(-6.0), abs=1e-4)
    assert float(insertion[0]) < 0.01
    assert float(insertion[-1]) == pytest.approx(float(deletion[0]), abs=1e-5)


def test_curves_are_the_same_whatever_the_chunking_and_packing(quadrant):
    model, x, truth = quadrant
    maps = {"truth": truth.float(), "random": random_maps(1)[0]}
    one = curves_of(model, x, maps, chunk=1)
    packed = curves_of(model, x, maps, chunk=64)  # both maps' 68 samples in two model calls
    for name in maps:
        torch.testing.assert_close(one[name].raw, packed[name].raw, rtol=1e-5, atol=1e-6)


def test_pointing_game(quadrant):
    _, _, truth = quadrant
    assert pointing_game(truth.float(), truth)
    hits = [pointing_game(m, truth) for m in random_maps(12)]
    assert 0 < sum(hits) < 12  # about a quarter of random maxima land in the quadrant
    corner = torch.zeros(SIZE, SIZE)
    corner[SIZE // 2 + 1, SIZE // 2 + 1] = 1.0  # two pixels (diagonally) outside the region
    assert not pointing_game(corner, truth, tolerance=1)
    assert pointing_game(corner, truth, tolerance=2)


def test_evaluate_in_process_scores_the_truth_above_a_random_map(quadrant):
    model, x, truth = quadrant
    attributions = [Attribution("gradcam", 0, truth.float()), Attribution("rise", 0, random_maps(1)[0])]
    predictions = [Prediction(0, "c0", 6.0, 0.9975), Prediction(1, "c1", 0.0, 0.0025)]
    options = EvaluateOptions(region=truth)
    groups = options.groups(["gradcam", "rise"], Targets())
    assert groups == ("deletion", "insertion", "pointing_game", "agreement", "map_error")  # rise samples
    scores = evaluate_in_process(ChunkExecutor(model, ChunkSizes(16, 16)), x, predictions, attributions, groups, options)
    by = {(s.metric, s.method): s.value for s in scores}
    assert by["deletion_auc", "gradcam"] < by["deletion_auc", "rise"]
    assert by["insertion_auc", "gradcam"] > by["insertion_auc", "rise"]
    assert by["pointing_game", "gradcam"] == 1.0
    assert -0.2 < by["agreement_spearman", "gradcam"] < 0.2  # the truth vs noise


def test_agreement_contrast_and_completeness_from_maps():
    a = torch.arange(64.0).reshape(8, 8)
    attributions = [
        Attribution("vanilla", 3, a),
        Attribution("ig", 3, a**2, stats={"completeness_error": 0.02}),
        Attribution("vanilla", 5, -a),
        Attribution("ig", 5, a, stats={"completeness_error": 0.5, "map_error": 0.03}),
    ]
    predictions = [Prediction(3, "a", 2.0, 0.6), Prediction(5, "b", 1.0, 0.3)]
    options = EvaluateOptions()
    groups = options.groups(["vanilla", "ig"], Targets(top_k=2))
    assert set(groups) == {"deletion", "insertion", "agreement", "contrast", "completeness", "map_error"}
    scores = map_scores(attributions, predictions, groups, options)
    by = {(s.metric, s.method, s.target): s for s in scores}
    assert by["agreement_spearman", "vanilla", 3].value == pytest.approx(1.0)  # a vs a^2 (a >= 0)
    assert by["agreement_spearman", "vanilla", 3].other_method == "ig"
    assert by["agreement_spearman", "vanilla", 5].value == pytest.approx(-1.0)
    assert by["contrast_spearman", "vanilla", 3].value == pytest.approx(-1.0)
    assert by["contrast_spearman", "vanilla", 3].other_target == 5
    assert by["contrast_top_iou", "ig", 3].value == pytest.approx(1.0)  # a^2 and a share the top
    assert by["completeness_error", "ig", 5].value == 0.5
    assert by["map_error", "ig", 5].value == 0.03  # only the maps whose stats carry an estimate
    assert [k for k in by if k[0] == "map_error"] == [("map_error", "ig", 5)]
    assert by["agreement_spearman", "vanilla", 3].label == "vanilla_vs_ig"


@pytest.mark.parametrize(
    ("options", "methods", "targets", "field"),
    [
        (EvaluateOptions(metrics=("pointing_game",)), ["vanilla"], Targets(), "evaluate.metrics[0]"),
        (EvaluateOptions(metrics=("deletion", "agreement")), ["vanilla"], Targets(), "evaluate.metrics[1]"),
        (EvaluateOptions(metrics=("contrast",)), ["vanilla"], Targets(top_k=1), "evaluate.metrics[0]"),
        (EvaluateOptions(metrics=("contrast",)), ["vanilla"], Targets(classes=(1, 2)), "evaluate.metrics[0]"),
        (EvaluateOptions(metrics=("completeness",)), ["vanilla"], Targets(), "evaluate.metrics[0]"),
        (EvaluateOptions(metrics=("map_error",)), ["vanilla", "occlusion"], Targets(), "evaluate.metrics[0]"),
    ],
)
def test_a_listed_metric_that_cannot_apply_names_the_field(options, methods, targets, field):
    with pytest.raises(InvalidArgument) as info:
        options.groups(methods, targets)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"metrics": ("deletion", "deletion")}, "evaluate.metrics"),
        ({"metrics": ("nonsense",)}, "evaluate.metrics[0]"),
        ({"perturbation_steps": 1}, "evaluate.perturbation_steps"),
        ({"perturbation_steps": 257}, "evaluate.perturbation_steps"),
        ({"top_fraction": 0.0}, "evaluate.top_fraction"),
        ({"pointing_tolerance": -1}, "evaluate.pointing_tolerance"),
        ({"region": torch.zeros(4, 4, dtype=torch.bool)}, "evaluate.ground_truth"),
    ],
)
def test_bad_evaluate_options_name_the_field(changes, field):
    with pytest.raises(InvalidArgument) as info:
        EvaluateOptions(**changes).validate()
    assert info.value.field == field


def test_regions_from_a_box_and_a_mask_land_at_model_resolution():
    # A 100 x 200 photograph shown to a 10 x 10 model: model pixel (r, c) covers rows
    # 10r..10r+10 and columns 20c..20c+20 of the photograph.
    region = region_from_box((40.0, 0.0, 100.0, 50.0), (100, 200), (10, 10))
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[:5, 2:5] = True
    assert torch.equal(region, expected)
    mask = torch.zeros(100, 200)
    mask[:50, 40:100] = 1
    assert torch.equal(region_from_mask(mask, (10, 10)), expected)
