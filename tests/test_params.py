"""Absurd parameters and targets get InvalidArgument naming the field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saliency.attribution.engine import Engine
from saliency.attribution.executor import ChunkSizes
from saliency.attribution.registry import all_methods, make_params
from saliency.attribution.types import Targets
from saliency.errors import InvalidArgument


@pytest.mark.parametrize(
    ("method", "values", "field"),
    [
        ("ig", {"n_steps": 0}, "ig.n_steps"),
        ("ig", {"n_steps": 10**7}, "ig.n_steps"),
        ("ig", {"rule": "simpson"}, "ig.rule"),
        ("ig", {"baseline": "grey"}, "ig.baseline"),
        ("ig", {"baseline": "custom"}, "ig.custom_baseline"),
        ("ig", {"baseline": "custom", "custom_baseline": torch.full((3, 8, 8), float("nan"))}, "ig.custom_baseline"),
        ("ig", {"rule": "riemann_trapezoid", "n_steps": 1}, "ig.n_steps"),
        ("ig", {"blur_sigma": -1.0}, "ig.blur_sigma"),
        ("smoothgrad", {"sigma": -0.1}, "smoothgrad.sigma"),
        ("smoothgrad", {"n_samples": 0}, "smoothgrad.n_samples"),
        ("smoothgrad", {"n_samples": 10**6}, "smoothgrad.n_samples"),
        ("smoothgrad", {"aggregate": "median"}, "smoothgrad.aggregate"),
        ("smoothgrad", {"seed": -1}, "smoothgrad.seed"),
        ("rise", {"p": 0.0}, "rise.p"),
        ("rise", {"p": 1.5}, "rise.p"),
        ("rise", {"n_masks": 0}, "rise.n_masks"),
        ("rise", {"grid_size": 1}, "rise.grid_size"),
        ("vanilla", {"reduction": "mean"}, "vanilla.reduction"),
        ("ig", {"steps": 5}, "ig.params"),
        ("deeplift", {"baseline": "grey"}, "deeplift.baseline"),
        ("deeplift", {"baseline": "custom"}, "deeplift.custom_baseline"),
        ("deeplift", {"baseline": "custom", "custom_baseline": torch.full((3, 8, 8), float("inf"))}, "deeplift.custom_baseline"),
        ("deeplift", {"blur_sigma": 0.0}, "deeplift.blur_sigma"),
        ("lrp", {"rule": "z_plus"}, "lrp.rule"),
        ("lrp", {"epsilon": -1e-3}, "lrp.epsilon"),
        ("lrp", {"epsilon": float("nan")}, "lrp.epsilon"),
        ("lrp", {"gamma": 1e6}, "lrp.gamma"),
        ("attention_rollout", {"head_fusion": "median"}, "attention_rollout.head_fusion"),
        ("attention_rollout", {"discard_ratio": 1.0}, "attention_rollout.discard_ratio"),
        ("attention_rollout", {"discard_ratio": float("nan")}, "attention_rollout.discard_ratio"),
        ("raw_attention", {"layer": -2}, "raw_attention.layer"),
        ("raw_attention", {"head_fusion": "sum"}, "raw_attention.head_fusion"),
        ("gradient_shap", {"n_samples": 0}, "gradient_shap.n_samples"),
        ("gradient_shap", {"n_samples": 10**6}, "gradient_shap.n_samples"),
        ("gradient_shap", {"stdev": -0.5}, "gradient_shap.stdev"),
        ("gradient_shap", {"stdev": 2.0}, "gradient_shap.stdev"),
        ("gradient_shap", {"reference": "imagenet"}, "gradient_shap.reference"),
        ("gradient_shap", {"seed": 2**32}, "gradient_shap.seed"),
        ("gradient_shap", {"reference": "custom"}, "gradient_shap.custom_reference"),
        ("gradient_shap", {"custom_reference": torch.zeros(2, 3, 8, 8)}, "gradient_shap.custom_reference"),
        ("gradient_shap", {"reference": "custom", "custom_reference": torch.zeros(3, 8, 8)}, "gradient_shap.custom_reference"),
        ("gradient_shap", {"reference": "custom", "custom_reference": torch.zeros(65, 3, 2, 2)}, "gradient_shap.custom_reference"),
        ("gradient_shap", {"reference": "custom", "custom_reference": torch.full((2, 3, 8, 8), float("inf"))}, "gradient_shap.custom_reference"),
        ("xrai", {"n_steps": 0}, "xrai.n_steps"),
        ("xrai", {"n_steps": 10**6}, "xrai.n_steps"),
        ("xrai", {"baseline": "blur"}, "xrai.baseline"),
        ("xrai", {"area_threshold": 0.0}, "xrai.area_threshold"),
        ("xrai", {"area_threshold": 1.5}, "xrai.area_threshold"),
        ("xrai", {"min_region_area": -0.1}, "xrai.min_region_area"),
        ("xrai", {"min_region_area": 0.9}, "xrai.min_region_area"),
    ],
)
def test_absurd_parameters_name_their_field(method, values, field):
    with pytest.raises(InvalidArgument) as info:
        make_params(method, **values)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_defaults_are_valid_for_every_method():
    for name in all_methods():
        make_params(name)


def test_unknown_method():
    with pytest.raises(InvalidArgument, match="methods: unknown method 'magic'"):
        make_params("magic")


@pytest.mark.parametrize(
    ("targets", "field"),
    [
        (Targets(classes=(10,)), "targets.classes"),
        (Targets(classes=(-1,)), "targets.classes"),
        (Targets(classes=(1, 1)), "targets.classes"),
        (Targets(classes=tuple(range(10)) * 2), "targets.classes"),
        (Targets(top_k=0), "targets.top_k"),
        (Targets(top_k=11), "targets.top_k"),
    ],
)
def test_out_of_range_targets(tiny, tiny_images, targets, field):
    engine = Engine(tiny, ChunkSizes(4, 4))
    with pytest.raises(InvalidArgument) as info:
        engine.explain(tiny_images[0], targets, {"vanilla": make_params("vanilla")})
    assert info.value.field == field


def test_engine_explains_fast_and_deep_together(tiny, tiny_images):
    engine = Engine(tiny, ChunkSizes(4, 4))
    methods = {m: make_params(m, **({"n_steps": 4} if m == "ig" else {})) for m in ("gradcam", "ig")}
    result = engine.explain(tiny_images[0], Targets(top_k=2), methods)
    assert [(a.method, a.target) for a in result.attributions] == [
        ("gradcam", result.targets[0]),
        ("gradcam", result.targets[1]),
        ("ig", result.targets[0]),
        ("ig", result.targets[1]),
    ]


def test_engine_refuses_a_method_that_cannot_explain_the_model(tiny, tiny_images):
    spec = dataclasses.replace(tiny.spec, name="no_gap_head", classifier_layer="")
    engine = Engine(dataclasses.replace(tiny, spec=spec), ChunkSizes(4, 4))
    with pytest.raises(InvalidArgument, match="cam cannot explain model no_gap_head") as info:
        engine.explain(tiny_images[0], Targets(), {"cam": make_params("cam")})
    assert info.value.field == "methods"
