"""Registry-driven: every method leaves the model as it found it, on success and on failure."""

from __future__ import annotations

import pytest
import torch

from saliency.attribution.executor import ChunkExecutor, ChunkSizes
from saliency.attribution.fast import fast_pass
from saliency.attribution.registry import all_methods, get_method, make_params
from saliency.attribution.types import Targets
from saliency.instrument.hooks import has_hooks
from saliency.models import LoadedModel, get_spec
from saliency.models.tinycnn import TinyCNN, build_tinycnn
from saliency.models.vit import VisionTransformer

# Each method's registered example parameters: small, quick to compute.
SMALL = {name: dict(info.example) for name, info in all_methods().items()}


class ExplodingTinyCNN(TinyCNN):
    """Fails after the CAM layer has run, i.e. after any hook has fired."""

    def forward(self, x):
        x = self.features_act(self.conv3(self.act2(self.bn2(self.conv2(self.act1(self.conv1(x)))))))
        raise RuntimeError("boom inside the model")


class ExplodingViT(VisionTransformer):
    """Fails after its whole forward has run (every attention and CAM hook has fired)."""

    def forward(self, x):
        super().forward(x)
        raise RuntimeError("boom inside the model")


def model_for(method: str) -> str:
    """tinycnn when the method can explain it, else the test ViT (attention methods)."""
    for name in ("tinycnn", "tinyvit"):
        if get_method(method).unsupported_reason(get_spec(name)) is None:
            return name
    raise AssertionError(f"{method} explains no test model")


def fresh_model(exploding: bool = False, name: str = "tinycnn") -> LoadedModel:
    if name == "tinyvit":
        module = get_spec(name).build()
        if exploding:
            module.__class__ = ExplodingViT  # a fresh object of this test's own
        return LoadedModel(get_spec(name), module, torch.device("cpu"))
    module = build_tinycnn()
    if exploding:
        exploding_module = ExplodingTinyCNN().eval()
        exploding_module.load_state_dict(module.state_dict())
        module = exploding_module
    return LoadedModel(get_spec("tinycnn"), module, torch.device("cpu"))


def explain(model: LoadedModel, method: str) -> None:
    info = get_method(method)
    params = make_params(method, **SMALL.get(method, {}))
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    if info.kind == "fast":
        fast_pass(model, x[None], [Targets(top_k=2)], {method: params})
    else:
        ChunkExecutor(model, ChunkSizes(2, 2)).run([info.plan(model, x, 1, params)])


def assert_untouched(model: LoadedModel, before: dict[str, torch.Tensor]) -> None:
    assert not has_hooks(model.module)
    assert all(p.grad is None for p in model.module.parameters())
    assert all(p.requires_grad for p in model.module.parameters())
    assert not model.module.training
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_success_leaves_no_hook_no_grad_and_same_weights(method):
    model = fresh_model(name=model_for(method))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    explain(model, method)
    assert_untouched(model, before)


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_failure_inside_the_model_leaves_no_hook_and_no_grad(method):
    model = fresh_model(exploding=True, name=model_for(method))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, method)
    assert_untouched(model, before)
