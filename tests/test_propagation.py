"""DeepLIFT and LRP: Captum and closed-form references, conservation, pairing, model support."""

from __future__ import annotations

import copy
import threading

import grpc
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LRP, DeepLift
from captum.attr._core import deep_lift as captum_deep_lift
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from torch import nn

from helpers import wrap
from saliency.attribution.executor import ChunkExecutor, ChunkSizes, SampleStream
from saliency.attribution.registry import get_method, make_params
from saliency.errors import InvalidArgument
from saliency.instrument.hooks import backward_rule, has_hooks
from saliency.instrument.relevance import RelevanceRules
from saliency.models import LoadedModel, get_spec
from saliency.models.tinycnn import TinyCNN, build_tinycnn
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, method, with_config

PACKED = ChunkSizes(4, 8)


def explain(model: LoadedModel, name: str, xs, targets, chunk=PACKED, **params):
    """Run one `name` task per (x, target), packed on one executor; the Attributions."""
    p = make_params(name, **params)
    tasks = [get_method(name).plan(model, x, t, p) for x, t in zip(xs, targets)]
    return ChunkExecutor(model, chunk).run(tasks)


class FoldedTinyCNN(nn.Module):
    """tinycnn with bn2 folded into conv2 by this test's own formula (no BatchNorm module)."""

    def __init__(self, net: TinyCNN):
        super().__init__()
        self.conv1, self.act1, self.conv2, self.act2 = net.conv1, net.act1, net.conv2, net.act2
        self.conv3, self.features_act, self.pool, self.fc = net.conv3, net.features_act, net.pool, net.fc
        bn = net.bn2
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            self.conv2.weight.mul_(a[:, None, None, None])
            self.conv2.bias.copy_((self.conv2.bias - bn.running_mean) * a + bn.bias)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.features_act(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def zero_biases(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
    return net


def as_model(module: nn.Module) -> LoadedModel:
    return LoadedModel(get_spec("tinycnn"), module.eval(), torch.device("cpu"))


# ------------------------------------------------------------------------------- DeepLIFT


@pytest.mark.parametrize("baseline", ["zeros", "blur", "uniform"])
def test_deeplift_matches_captum_rescale_on_tinycnn(tiny, tiny_images, baseline):
    params = {"baseline": baseline, "blur_sigma": 2.0, "seed": 3}
    ours = explain(tiny, "deeplift", tiny_images, [1, 4, 7], chunk=ChunkSizes(3, 8), **params)
    p = make_params("deeplift", **params)
    refs = torch.stack([get_method("deeplift").plan(tiny, x, 0, p).streams[0].make_inputs(1, 2)[0] for x in tiny_images])
    expected = DeepLift(build_tinycnn()).attribute(tiny_images.clone(), baselines=refs, target=[1, 4, 7])
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a.raw, e, rtol=1e-4, atol=1e-7)
        assert a.stats["completeness_error"] < 1e-4  # summation to delta
        assert abs(float(a.raw.sum()) - (a.stats["score_input"] - a.stats["score_baseline"])) < 1e-5


class TwoLayerNet(nn.Module):
    """flatten -> linear -> in-place ReLU -> linear -> functional ReLU6 -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.fc1, self.act1 = nn.Linear(3 * 4 * 4, 12), nn.ReLU(inplace=True)
        self.fc2, self.fc3 = nn.Linear(12, 10), nn.Linear(10, 3)
        with torch.no_grad():
            self.fc2.weight.mul_(40)  # push some units past 6

    def forward(self, x):
        h = self.act1(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu6(self.fc2(h)))


def test_deeplift_closed_form_with_in_place_relu_and_functional_relu6():
    net = TwoLayerNet().eval()
    model = wrap(net, (4, 4), 3, "act1")
    x = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(2))
    ours = explain(model, "deeplift", [x], [2], baseline="black")[0]
    ref = torch.zeros_like(x)  # mean 0, std 1: black is 0 - 0 / 1

    def rescale(a, a_ref, f, derivative):
        d = a - a_ref
        return torch.where(d.abs() >= 1e-10, (f(a) - f(a_ref)) / torch.where(d == 0, 1.0, d), derivative(a))

    with torch.no_grad():
        a1, a1r = net.fc1(x.flatten()), net.fc1(ref.flatten())
        a2, a2r = net.fc2(a1.relu()), net.fc2(a1r.relu())
        r1 = rescale(a1, a1r, torch.relu, lambda a: (a > 0).float())
        r2 = rescale(a2, a2r, F.relu6, lambda a: ((a > 0) & (a < 6)).float())
        multipliers = ((net.fc3.weight[2] * r2) @ net.fc2.weight * r1) @ net.fc1.weight
    assert (a2 > 6).any() and (a2 < 0).any()  # both ReLU6 bends are exercised
    torch.testing.assert_close(ours.raw, (x - ref) * multipliers.view(3, 4, 4), rtol=1e-5, atol=1e-6)
    assert ours.stats["completeness_error"] < 1e-5


def test_deeplift_on_efficientnet_matches_captum_with_relu6_as_rescale(effnet, monkeypatch):
    """Captum's DeepLift leaves ReLU6 to autograd; registered as its generic rescale
    nonlinearity it computes the same rule as ours (any spatial size works: 64x64 here)."""
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = explain(effnet, "deeplift", [x], [281])[0]
    monkeypatch.setitem(captum_deep_lift.SUPPORTED_NON_LINEAR, nn.ReLU6, captum_deep_lift.nonlinear)
    expected = DeepLift(copy.deepcopy(effnet.module).float()).attribute(
        x[None].clone(), baselines=torch.zeros(1, 3, 64, 64), target=281
    )[0]
    torch.testing.assert_close(ours.raw, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    assert ours.stats["completeness_error"] < 1e-3


class PoolNet(nn.Module):
    """conv -> ReLU -> 1x1 conv -> max pool -> conv -> ReLU -> GAP -> fc; `adjacent`: ReLU ->
    max pool -> ReLU -> overlapping functional max pool instead.

    Captum 0.9's DeepLift breaks its own summation-to-delta when a max pool and a ReLU are
    adjacent modules (its backward hooks on both interact; measured on 4x4 toy nets), so it is
    the oracle only where a linear layer separates them."""

    def __init__(self, adjacent: bool = False):
        super().__init__()
        torch.manual_seed(8)
        self.adjacent = adjacent
        self.conv1, self.act1, self.mix = nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 5, 1)
        self.pool1, self.act_mid = nn.MaxPool2d(2), nn.ReLU()
        self.conv2, self.act2, self.pool2 = nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = self.act1(self.conv1(x))
        if self.adjacent:
            h = F.max_pool2d(self.act_mid(self.pool1(h)), 3, stride=1, padding=1)
        else:
            h = self.pool1(self.mix(h))
        return self.fc(torch.flatten(self.pool2(self.act2(self.conv2(h))), 1))


def test_max_pooling_deeplift_and_lrp_match_captum():
    model = wrap(PoolNet().eval(), (8, 8), 4, "act2")
    xs = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = explain(model, "deeplift", xs, [0, 1, 2], baseline="blur", blur_sigma=1.0)
    p = make_params("deeplift", baseline="blur", blur_sigma=1.0)
    baselines = torch.stack([get_method("deeplift").plan(model, x, 0, p).streams[0].make_inputs(1, 2)[0] for x in xs])
    expected = DeepLift(PoolNet().eval()).attribute(xs.clone(), baselines=baselines, target=[0, 1, 2])
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a.raw, e, rtol=1e-4, atol=1e-6 * float(e.abs().max()))
        assert a.stats["completeness_error"] < 1e-4
    lrp = explain(model, "lrp", xs, [0, 1, 2], epsilon=0.1)
    net = PoolNet().eval()
    for layer in (net.conv1, net.mix, net.conv2, net.fc):
        layer.rule = EpsilonRule(0.1)
    expected = LRP(net).attribute(xs.clone(), target=[0, 1, 2])
    for a, e in zip(lrp, expected):
        torch.testing.assert_close(a.raw, e, rtol=1e-4, atol=1e-6 * float(e.abs().max()))


def test_deeplift_max_pools_next_to_relus_and_overlapping_keep_summation_to_delta():
    """Where windows overlap, contributions reaching one input add up (completeness holds)."""
    model = wrap(PoolNet(adjacent=True).eval(), (8, 8), 4, "act2")
    xs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    for a in explain(model, "deeplift", xs, [3, 1], baseline="uniform"):
        assert a.stats["completeness_error"] < 1e-4


def test_deeplift_pairs_are_never_split_by_the_chunk_budget(tiny, tiny_images):
    seen = []
    for sizes in (ChunkSizes(1, 1), ChunkSizes(3, 3), ChunkSizes(5, 5)):
        executor = ChunkExecutor(tiny, sizes)
        original = executor._evaluate

        def spy(inputs, targets, needs_grad, original=original, **extras):
            seen.append((len(inputs), extras.get("backward_rule")))
            return original(inputs, targets, needs_grad, **extras)

        executor._evaluate = spy
        p = make_params("deeplift")
        tasks = [get_method("deeplift").plan(tiny, x, i, p) for i, x in enumerate(tiny_images)]
        packed = executor.run(tasks)
        alone = [explain(tiny, "deeplift", [x], [i])[0] for i, x in enumerate(tiny_images)]
        for a, b in zip(packed, alone):
            torch.testing.assert_close(a.raw, b.raw, rtol=1e-5, atol=1e-8)
    assert seen and all(n % 2 == 0 and rule == "rescale" for n, rule in seen)
    assert {n for n, _ in seen} == {2, 4}  # budget 1 still runs a pair; 3 and 5 round down


def test_paired_streams_and_rule_sets_are_checked():
    with pytest.raises(ValueError, match="even n_samples"):
        SampleStream(3, True, lambda a, b: None, lambda s, o: None, backward_rule="rescale")
    with pytest.raises(ValueError, match="unknown LRP rule"):
        RelevanceRules("z_plus")
    with pytest.raises(RuntimeError, match="row pairs"), backward_rule("rescale"):
        torch.relu(torch.ones(3, 2))


# ------------------------------------------------------------------------------------- LRP


def captum_lrp(net: nn.Module, x: torch.Tensor, targets: list[int], rule) -> torch.Tensor:
    for layer in (net.conv1, net.conv2, net.conv3, net.fc):
        layer.rule = rule()
    return LRP(net).attribute(x.clone(), target=targets)


def test_lrp_epsilon_matches_captum_with_batchnorm_folded(tiny, tiny_images):
    ours = explain(tiny, "lrp", tiny_images, [0, 5, 9], rule="epsilon", epsilon=0.01)
    expected = captum_lrp(FoldedTinyCNN(build_tinycnn()), tiny_images, [0, 5, 9], lambda: EpsilonRule(0.01))
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a.raw, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))


@pytest.mark.parametrize(("rule", "captum_rule"), [("gamma", lambda: GammaRule(0.25)), ("alpha1_beta0", Alpha1_Beta0_Rule)])
def test_lrp_gamma_and_alpha1_beta0_match_captum_without_biases(tiny_images, rule, captum_rule):
    """Captum keeps the plain bias in these rules' denominators and modifies weights only, so
    it agrees with the sign-aware rules (ours) where biases are zero and inputs non-negative;
    epsilon=0 gives Captum's 1e-9 stabilizer."""
    model = as_model(zero_biases(build_tinycnn()))
    x = tiny_images.abs()
    ours = explain(model, "lrp", x, [2, 3, 8], rule=rule, gamma=0.25, epsilon=0.0)
    expected = captum_lrp(FoldedTinyCNN(zero_biases(build_tinycnn())), x, [2, 3, 8], captum_rule)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a.raw, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))


def dense_layers(net: FoldedTinyCNN, size: int) -> list[tuple[torch.Tensor, torch.Tensor | None, str]]:
    """Each layer of the folded tinycnn as (M [in, out], bias [out] or None, kind) on a
    size x size input: M[i, j] = d z_j / d x_i, found by pushing every basis vector through."""

    def conv_matrix(conv, c, h, w):
        basis = torch.eye(c * h * w, dtype=torch.float64).view(-1, c, h, w)
        out = F.conv2d(basis, conv.weight.double(), None, conv.stride, conv.padding)
        return out.flatten(1), conv.bias.double().repeat_interleave(out.shape[-2] * out.shape[-1]), out.shape[1:]

    layers, shape = [], (3, size, size)
    for conv in (net.conv1, net.conv2, net.conv3):
        m, b, shape = conv_matrix(conv, *shape)
        layers.append((m, b, "conv"))
    c, hw = shape[0], shape[1] * shape[2]
    pool = torch.kron(torch.eye(c, dtype=torch.float64), torch.full((hw, 1), 1 / hw, dtype=torch.float64))
    layers.append((pool, None, "pool"))
    layers.append((net.fc.weight.double().T, net.fc.bias.double(), "fc"))
    return layers


def dense_lrp(layers, x: torch.Tensor, target: int, rule: str, eps: float, gamma: float) -> torch.Tensor:
    """LRP written from the contribution matrices Z_ij = x_i M_ij (Montavon et al. 2019)."""
    acts = [x.double().flatten()]
    for m, b, kind in layers:
        z = acts[-1] @ m + (0 if b is None else b)
        acts.append(z.relu() if kind == "conv" else z)
    relevance = torch.zeros_like(acts[-1])
    relevance[target] = acts[-1][target]

    def stab(z, e):
        return z + e * torch.where(z >= 0, 1.0, -1.0).double()

    for (m, b, kind), a in reversed(list(zip(layers, acts))):
        b = torch.zeros(m.shape[1], dtype=torch.float64) if b is None else b
        if kind == "pool":
            contrib = a[:, None] * m
            relevance = (contrib / stab(contrib.sum(0), 1e-9)) @ relevance
        elif rule == "epsilon":
            contrib = a[:, None] * m
            relevance = (contrib / stab(contrib.sum(0) + b, eps)) @ relevance
        elif rule == "gamma":  # positive contributions amplified; eps stabilizes
            contrib = a[:, None] * m
            contrib = contrib + gamma * contrib.clamp(min=0)
            relevance = (contrib / stab(contrib.sum(0) + b + gamma * b.clamp(min=0), eps)) @ relevance
        else:
            alpha, beta = (1.0, 0.0) if rule == "alpha1_beta0" else (2.0, 1.0)
            contrib = a[:, None] * m
            pos, neg = contrib.clamp(min=0), contrib.clamp(max=0)
            z_pos = stab(pos.sum(0) + b.clamp(min=0), 1e-9)
            z_neg = stab(neg.sum(0) + b.clamp(max=0), 1e-9)
            relevance = (alpha * pos / z_pos - beta * neg / z_neg) @ relevance
    return relevance.view(x.shape)


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha1_beta0", "alpha2_beta1"])
def test_lrp_matches_the_rules_written_as_contribution_matrices(tiny, rule):
    """Every rule with biases and signed inputs, against an independent dense formulation."""
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))
    ours = explain(tiny, "lrp", [x], [6], rule=rule, epsilon=0.05, gamma=0.5)[0]
    expected = dense_lrp(dense_layers(FoldedTinyCNN(build_tinycnn()), 8), x, 6, rule, 0.05, 0.5)
    torch.testing.assert_close(ours.raw.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


class ResidualNet(nn.Module):
    """Bias-free conv -> ReLU -> (conv + skip) -> ReLU6 -> avg pool -> max pool -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act2 = nn.ReLU6()
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 4, bias=False)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(-1.5, 1.5)  # negative scales too: W * a flips signs

    def forward(self, x):
        h = self.act1(self.conv1(x))
        h = self.act2(self.bn(self.conv2(h)) + h)
        return self.fc(torch.flatten(F.max_pool2d(self.avg(h), 2), 1))


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha1_beta0", "alpha2_beta1"])
def test_lrp_conserves_the_logit_without_biases(rule):
    """No bias anywhere (BatchNorm without shift): the input relevance sums to the logit, through
    a residual addition, average and max pooling, ReLU6 and a folded BatchNorm."""
    model = wrap(ResidualNet().eval(), (8, 8), 4, "act2")
    xs = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    for a in explain(model, "lrp", xs, [0, 1, 3], rule=rule, epsilon=0.0):
        assert abs(a.stats["relevance_sum"] - a.stats["score"]) <= 1e-4 * abs(a.stats["score"]) + 1e-6
        assert a.stats["conservation_error"] < 1e-3


def test_lrp_residual_split_and_pass_through_closed_form():
    """z = conv(x) + x on a 1x1 conv, LRP-0: R_x = x * (W^T (R / z)) + x * R / z."""

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.conv = nn.Conv2d(2, 2, 1, bias=False)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2, 2, bias=False)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.conv(x) + x), 1))

    net = Skip().eval()
    model = wrap(net, (1, 1), 2, "conv", channels=2)
    x = torch.tensor([[[0.7]], [[1.3]]])
    ours = explain(model, "lrp", [x], [1], epsilon=0.0)[0]
    with torch.no_grad():
        v = x.flatten()
        w = net.conv.weight[:, :, 0, 0]
        conv = w @ v
        z = conv + v
        logits = net.fc.weight @ z
        r_z = net.fc.weight[1] * z / logits[1] * logits[1]
        r_conv, r_skip = conv * r_z / z, v * r_z / z
        r_x = v * (w.T @ (r_conv / conv)) + r_skip
    torch.testing.assert_close(ours.raw.flatten(), r_x, rtol=1e-5, atol=1e-7)


def test_lrp_gives_the_same_map_with_or_without_batchnorm_modules(tiny, tiny_images):
    """The canonizer folds BN on the fly: a model whose BN was folded at load time (as the
    served EfficientNet may be) gets the same relevance."""
    for rule in ("gamma", "alpha2_beta1"):
        with_bn = explain(tiny, "lrp", tiny_images[:2], [3, 4], rule=rule)
        folded = explain(as_model(FoldedTinyCNN(build_tinycnn())), "lrp", tiny_images[:2], [3, 4], rule=rule)
        for a, b in zip(with_bn, folded):
            torch.testing.assert_close(a.raw, b.raw, rtol=1e-4, atol=1e-6 * float(b.raw.abs().max()))


def test_lrp_packs_requests_with_equal_rules_and_never_mixes_rules(tiny, tiny_images):
    seen = []
    executor = ChunkExecutor(tiny, ChunkSizes(3, 3))
    original = executor._evaluate

    def spy(inputs, targets, needs_grad, **extras):
        seen.append((len(inputs), extras.get("backward_rule")))
        return original(inputs, targets, needs_grad, **extras)

    executor._evaluate = spy
    settings = [{"rule": "epsilon"}, {"rule": "gamma"}, {"rule": "epsilon"}, {"rule": "epsilon", "epsilon": 1.0},
                {"rule": "epsilon"}, {"rule": "gamma"}]
    tasks = [get_method("lrp").plan(tiny, tiny_images[i % 3], i, make_params("lrp", **s)) for i, s in enumerate(settings)]
    packed = executor.run(tasks)
    for i, s in enumerate(settings):
        alone = explain(tiny, "lrp", [tiny_images[i % 3]], [i], chunk=ChunkSizes(1, 1), **s)[0]
        # gamma's denominators (stabilizer 1e-9) can sit near zero and magnify float noise
        tol = 1e-3 if s["rule"] == "gamma" else 1e-6
        torch.testing.assert_close(packed[i].raw, alone.raw, rtol=1e-4, atol=tol * float(alone.raw.abs().max()))
    assert sorted(n for n, _ in seen) == [1, 2, 3]  # three epsilon maps in one chunk
    assert len({rule for _, rule in seen}) == 3


# --------------------------------------------------------------------------- no leak, no mutation


class RendezvousCNN(TinyCNN):
    """Waits after its first layer until a second forward arrives: two forwards in flight."""

    def forward(self, x):
        x = self.act1(self.conv1(x))
        self.barrier.wait(timeout=20)
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.features_act(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.mark.parametrize("name", ["lrp", "deeplift"])
def test_a_propagation_request_never_leaks_into_a_concurrent_plain_one(tiny_images, name):
    module = RendezvousCNN().eval()
    module.load_state_dict(build_tinycnn().state_dict())
    module.barrier = threading.Barrier(2)
    model = as_model(module)
    before = copy.deepcopy(module.state_dict())
    x, target, results, errors = tiny_images[1], 6, {}, []

    def propagated():
        results["rule"] = explain(model, name, [x], [target])[0].raw

    def plain():
        xg = x[None].clone().requires_grad_(True)
        (results["plain"],) = torch.autograd.grad(module(xg)[0, target], xg)

    def guard(job):
        try:
            job()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(job,)) for job in (propagated, plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    net = build_tinycnn()
    xg = x[None].clone().requires_grad_(True)
    (ref_plain,) = torch.autograd.grad(net(xg)[0, target], xg)
    torch.testing.assert_close(results["plain"], ref_plain, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(results["rule"], explain(as_model(build_tinycnn()), name, [x], [target])[0].raw)
    assert not has_hooks(module) and all(p.grad is None for p in module.parameters())
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


# ---------------------------------------------------------------------------- model support


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_propagation_support_names_the_first_call_without_a_rule(tiny, tiny_vit, effnet):
    """Decided by the probe from the calls each forward makes: the first call no rule handles,
    and the module it was made in."""
    for family in ("guided", "rescale", "lrp"):
        assert tiny.spec.profile.rule_gap(family) is None
        assert effnet.spec.profile.rule_gap(family) is None
        assert tiny_vit.spec.profile.rule_gap(family) is not None
    gelu = wrap(GeluNet(), (8, 8), 2, "features")
    for name in ("deeplift", "lrp", "guided_backprop"):
        reason = get_method(name).unsupported_reason(gelu.spec)
        assert reason == "no rule for torch.nn.functional.gelu at features.1 (torch.nn.GELU)", reason
        assert get_method(name).unsupported_reason(tiny_vit.spec) is not None
        assert get_method(name).unsupported_reason(tiny.spec) is None


@pytest.mark.parametrize("name", ["deeplift", "lrp"])
def test_an_unsupported_model_is_refused_at_plan_time(name):
    model = wrap(GeluNet(), (8, 8), 2, "features")
    with pytest.raises(InvalidArgument, match=r"torch\.nn\.functional\.gelu at features\.1 \(torch\.nn\.GELU\)") as info:
        get_method(name).plan(model, torch.zeros(3, 8, 8), 0, make_params(name))
    assert info.value.field == "methods"


def test_lrp_refuses_batchnorm_in_training_mode(tiny_images):
    model = as_model(build_tinycnn())
    model.module.bn2.train()  # as_model put it in eval mode
    with pytest.raises(RuntimeError, match="eval mode"):
        explain(model, "lrp", tiny_images[:1], [0])


# ------------------------------------------------------------------------------- the wire


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=("tinycnn", "tinyvit")))
    yield running
    running.stop()


def lrp_request(model: str, **params) -> pb.ExplainRequest:
    request = method(pb.METHOD_LRP)
    request.lrp.MergeFrom(pb.LrpParams(**params))
    tensor = pb.Tensor(shape=[3, 32, 32], dtype=pb.DTYPE_FLOAT32, data=torch.zeros(3, 32, 32).numpy().tobytes())
    return pb.ExplainRequest(model=model, tensor=tensor, methods=[request])


def test_propagation_over_the_wire(service, tiny):
    stub = service.stub()
    ok = stub.Explain(lrp_request("tinycnn", rule=pb.LRP_RULE_ALPHA2_BETA1), timeout=60)
    (attribution,) = ok.attributions
    assert attribution.method == pb.METHOD_LRP and "conservation_error" in attribution.stats
    deeplift = method(pb.METHOD_DEEPLIFT)
    deeplift.deeplift.MergeFrom(pb.DeepLiftParams(baseline=pb.BASELINE_BLUR, blur_sigma=2.0))
    request = lrp_request("tinycnn")
    del request.methods[:]
    request.methods.append(deeplift)
    (dl,) = stub.Explain(request, timeout=60).attributions
    assert dl.stats["completeness_error"] < 1e-3
    def deeplift_request(**params) -> pb.ExplainRequest:
        bad = method(pb.METHOD_DEEPLIFT)
        bad.deeplift.MergeFrom(pb.DeepLiftParams(**params))
        request = lrp_request("tinycnn")
        del request.methods[:]
        request.methods.append(bad)
        return request

    for bad, mentions in [
        (lrp_request("tinycnn", epsilon=-1.0), "lrp.epsilon"),
        (lrp_request("tinycnn", rule=99), "rule"),
        (lrp_request("tinyvit"), "lrp cannot explain model tinyvit"),
        (deeplift_request(baseline=pb.BASELINE_BLUR, blur_sigma=-2.0), "deeplift.blur_sigma"),
        (deeplift_request(baseline=pb.BASELINE_CUSTOM), "deeplift.custom_baseline"),
        (deeplift_request(baseline=77), "baseline"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(bad, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert mentions in info.value.details()
