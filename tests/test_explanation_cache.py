"""The embedded backend's explanation cache, over real gRPC on 127.0.0.1 (tinycnn): a hit is
byte-identical and marked cached; anything that changes the map misses; the budget holds; a
deep map requested twice at once is computed once; a dropped computation is never cached."""

from __future__ import annotations

import contextlib
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from saliency.attribution.registry import make_params
from saliency.attribution.types import Attribution
from saliency.codec import convert
from saliency.runtime.config import load_config
from saliency.runtime.explanation_cache import (
    ENTRY_OVERHEAD,
    ExplanationCache,
    canonical_params,
    parse_size,
)
from saliency.v1 import explainer_pb2 as pb
from service_harness import ServiceThread, with_config

TINY = "tinycnn"
MAP_BYTES = 32 * 32 * 4


@pytest.fixture(scope="module")
def service():
    running = ServiceThread(with_config(models=(TINY,), explanation_cache_bytes="8MiB"))
    yield running
    running.stop()


def image(seed: int) -> pb.Tensor:
    """A normalised input [3, 32, 32] of its own."""
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return convert.tensor_to_proto(x)


def request(x: pb.Tensor, methods: dict, targets: pb.Targets | None = None) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model=TINY, tensor=x, targets=targets or pb.Targets(top_k=2),
        methods=convert.method_requests_to_proto(methods),
    )


def maps(response: pb.ExplainResponse) -> dict[tuple[int, int], pb.Attribution]:
    return {(a.method, a.target): a for a in response.attributions}


def counted(service: ServiceThread, which: str, method: str) -> float:
    return service.metric(f"saliency_cache_{which}_total", {"model": TINY, "method": method})


METHODS = {
    "vanilla": None,
    "gradcam": None,
    "ig": {"n_steps": 8},
    "rise": {"n_masks": 64, "seed": 3},
    "smoothgrad": {"n_samples": 4, "seed": 1},
}


def test_a_hit_returns_byte_identical_maps_marked_cached_without_model_work(service):
    stub = service.stub()
    x = image(1)
    hits, misses = counted(service, "hits", "ig"), counted(service, "misses", "ig")
    fast_passes = service.metric("saliency_batch_requests_count", {"model": TINY, "pool": "fast"})
    deep_samples = service.metric("saliency_batch_samples_sum", {"model": TINY, "pool": "deep"})
    first = stub.Explain(request(x, METHODS), timeout=60)
    assert not any(a.cached for a in first.attributions)
    assert len(first.attributions) == 2 * len(METHODS)
    computed_samples = service.metric("saliency_batch_samples_sum", {"model": TINY, "pool": "deep"}) - deep_samples
    assert computed_samples > 0

    second = stub.Explain(request(x, METHODS), timeout=60)
    assert all(a.cached for a in second.attributions)
    assert second.predictions == first.predictions and second.targets == first.targets
    before, after = maps(first), maps(second)
    assert before.keys() == after.keys()
    for key, a in before.items():
        assert after[key].map.data == a.map.data, key
        assert after[key].map.shape == a.map.shape and dict(after[key].stats) == dict(a.stats)
    # No model work: one fast pass and one set of deep samples for both calls.
    assert service.metric("saliency_batch_requests_count", {"model": TINY, "pool": "fast"}) == fast_passes + 1
    assert service.metric("saliency_batch_samples_sum", {"model": TINY, "pool": "deep"}) == deep_samples + computed_samples
    assert counted(service, "misses", "ig") == misses + 2  # two targets
    assert counted(service, "hits", "ig") == hits + 2


def test_output_options_apply_to_cached_maps_as_to_computed_ones(service):
    """The cache holds the engine's map; normalisation and dtype are applied after it."""
    stub = service.stub()
    x = image(2)
    stub.Explain(request(x, {"vanilla": None}), timeout=60)
    asked = request(x, {"vanilla": None})
    asked.output.CopyFrom(pb.OutputOptions(map_dtype=pb.DTYPE_FLOAT16, normalization=pb.NORMALIZATION_MAX_ABS))
    cached = stub.Explain(asked, timeout=60)
    assert all(a.cached for a in cached.attributions)
    decoded = convert.tensor_from_proto(cached.attributions[0].map, "map", 10**6)
    assert cached.attributions[0].map.dtype == pb.DTYPE_FLOAT16
    assert float(decoded.abs().max()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "change",
    ["parameter", "image", "target", "seed"],
)
def test_anything_that_changes_the_map_misses(service, change):
    stub = service.stub()
    x = image(10)
    base = {"ig": {"n_steps": 8}, "rise": {"n_masks": 64, "seed": 5}, "vanilla": None}
    targets = pb.Targets(classes=pb.ClassList(indices=[1]))
    stub.Explain(request(x, base, targets), timeout=60)
    methods, other_x, other_targets = dict(base), x, targets
    if change == "parameter":
        methods["ig"] = {"n_steps": 9}
    elif change == "image":
        changed = convert.tensor_from_proto(x, "x", 10**6).clone()
        changed[0, 0, 0] += 0.5  # one value of one pixel
        other_x = convert.tensor_to_proto(changed)
    elif change == "target":
        other_targets = pb.Targets(classes=pb.ClassList(indices=[2]))
    else:
        methods["rise"] = {"n_masks": 64, "seed": 6}
    response = stub.Explain(request(other_x, methods, other_targets), timeout=60)
    cached = {convert.method_name(a.method): a.cached for a in response.attributions}
    if change == "parameter":
        assert cached == {"ig": False, "rise": True, "vanilla": True}
    elif change == "seed":
        assert cached == {"ig": True, "rise": False, "vanilla": True}
    else:
        assert cached == {"ig": False, "rise": False, "vanilla": False}


def test_a_request_without_a_seed_is_the_request_with_seed_0(service):
    """Sampling methods draw only from their seed, 0 when unset: the unseeded request is
    deterministic, so it is cached under seed 0 (and a computed map equals the cached one)."""
    stub = service.stub()
    x = image(20)
    unseeded = stub.Explain(request(x, {"smoothgrad": {"n_samples": 4}}), timeout=60)
    assert not any(a.cached for a in unseeded.attributions)
    seeded = stub.Explain(request(x, {"smoothgrad": {"n_samples": 4, "seed": 0}}), timeout=60)
    assert all(a.cached for a in seeded.attributions)
    assert [a.map.data for a in seeded.attributions] == [a.map.data for a in unseeded.attributions]
    other = stub.Explain(request(x, {"smoothgrad": {"n_samples": 4, "seed": 1}}), timeout=60)
    assert not any(a.cached for a in other.attributions)
    assert [a.map.data for a in other.attributions] != [a.map.data for a in unseeded.attributions]


def test_identical_requests_at_once_compute_each_map_once(service):
    stub = service.stub()
    x = image(30)
    heavy = {"ig": {"n_steps": 256}}
    samples = service.metric("saliency_batch_samples_sum", {"model": TINY, "pool": "deep"})
    futures = [stub.Explain.future(request(x, heavy, pb.Targets(top_k=1)), timeout=60) for _ in range(3)]
    responses = [f.result() for f in futures]
    computed = service.metric("saliency_batch_samples_sum", {"model": TINY, "pool": "deep"}) - samples
    assert computed == responses[0].attributions[0].stats["samples"]  # once for the three
    flags = sorted(r.attributions[0].cached for r in responses)
    assert flags == [False, True, True]
    assert len({r.attributions[0].map.data for r in responses}) == 1
    assert len(service.service.backend._flights) == 0


@contextlib.contextmanager
def slow_chunks(service: ServiceThread, seconds: float):
    """Every deep model call of tinycnn takes `seconds` longer while inside."""
    executor = service.service.backend.workers[TINY].executor
    real = executor._call

    def slow(batch):
        time.sleep(seconds)
        return real(batch)

    executor._call = slow
    try:
        yield
    finally:
        del executor._call


def test_a_waiter_keeps_a_computation_alive_when_the_request_that_started_it_goes(service):
    stub = service.stub()
    x = image(40)
    heavy = request(x, {"ig": {"n_steps": 64}}, pb.Targets(top_k=1))  # 8 chunks of 8
    dropped = service.metric("saliency_dropped_samples_total", {"model": TINY})
    with slow_chunks(service, 0.1):
        first = stub.Explain.future(heavy, timeout=60)
        time.sleep(0.3)
        second = stub.Explain.future(heavy, timeout=60)
        time.sleep(0.2)
        first.cancel()
        response = second.result()
    assert service.metric("saliency_dropped_samples_total", {"model": TINY}) == dropped
    assert response.attributions[0].cached  # the computation the first request started
    again = stub.Explain(heavy, timeout=60)
    assert again.attributions[0].cached and again.attributions[0].map.data == response.attributions[0].map.data


def test_a_dropped_computation_is_not_cached(service):
    stub = service.stub()
    x = image(50)
    heavy = request(x, {"ig": {"n_steps": 64}}, pb.Targets(top_k=1))
    dropped = service.metric("saliency_dropped_samples_total", {"model": TINY})
    with slow_chunks(service, 0.1):
        call = stub.Explain.future(heavy, timeout=60)
        time.sleep(0.4)
        call.cancel()
        deadline = time.monotonic() + 10
        while service.metric("saliency_dropped_samples_total", {"model": TINY}) == dropped:
            assert time.monotonic() < deadline, "the cancelled computation was never dropped"
            time.sleep(0.05)
    assert len(service.service.backend._flights) == 0
    response = stub.Explain(heavy, timeout=60)
    assert not response.attributions[0].cached


def test_a_failed_computation_is_not_cached(service):
    stub = service.stub()
    x = image(60)
    executor = service.service.backend.workers[TINY].executor
    failed = threading.Event()

    def fail_once(batch):
        failed.set()
        del executor._call  # the class's own from now on
        raise RuntimeError("injected model failure")

    ig = request(x, {"ig": {"n_steps": 8}}, pb.Targets(top_k=1))
    executor._call = fail_once
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(ig, timeout=30)
    assert failed.is_set() and info.value.code() == grpc.StatusCode.INTERNAL
    assert len(service.service.backend._flights) == 0
    response = stub.Explain(ig, timeout=60)
    cached = {convert.method_name(a.method): a.cached for a in response.attributions}
    assert cached == {"ig": False}


def test_the_cache_never_holds_more_than_its_budget():
    budget = 3 * (MAP_BYTES + ENTRY_OVERHEAD) + 2 * (10 * 4 + ENTRY_OVERHEAD)
    running = ServiceThread(with_config(models=(TINY,), explanation_cache_bytes=budget))
    try:
        stub = running.stub()
        cache = running.service.backend.cache
        for seed in range(6):
            response = stub.Explain(request(image(seed), {"vanilla": None, "gradcam": None}), timeout=60)
            assert not any(a.cached for a in response.attributions)
            time.sleep(0.05)  # the fast pass is stored off the loop
            assert 0 < cache.nbytes <= budget
            assert running.metric("saliency_cache_bytes", {}) <= budget
        again = stub.Explain(request(image(0), {"vanilla": None, "gradcam": None}), timeout=60)
        assert not any(a.cached for a in again.attributions)  # long evicted
    finally:
        running.stop()


def test_cache_off_caches_nothing():
    running = ServiceThread(with_config(models=(TINY,), explanation_cache_bytes=0))
    try:
        stub = running.stub()
        x = image(7)
        for _ in range(2):
            response = stub.Explain(request(x, {"vanilla": None, "ig": {"n_steps": 4}}), timeout=60)
            assert not any(a.cached for a in response.attributions)
        assert len(running.service.backend.cache) == 0
        assert running.metric("saliency_cache_hits_total", {"model": TINY, "method": "vanilla"}) == 0
    finally:
        running.stop()


# ---- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["lots", "12 parsecs", "-1", "1e400MiB", True, ""])
def test_a_budget_that_is_not_a_size_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="config explanation_cache_bytes"):
        load_config(env={}, overrides={"explanation_cache_bytes": value})
    with pytest.raises(ValueError, match="config explanation_cache_bytes"):
        load_config(env={"SALIENCY_EXPLANATION_CACHE_BYTES": str(value)})


def test_a_budget_set_on_the_config_directly_is_refused_before_any_model_loads():
    """A ServiceConfig built in code skips load_config: the runtime parses the size itself."""
    from opentelemetry import trace

    from saliency.runtime.embedded import EmbeddedBackend
    from saliency.runtime.metrics import Metrics

    config = with_config(models=("no_such_model",), explanation_cache_bytes="lots")
    with pytest.raises(ValueError, match="config explanation_cache_bytes"):
        EmbeddedBackend(config, Metrics(), trace.get_tracer("test"))


def test_sizes():
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("512k") == 512 * 1024
    assert parse_size(0) == parse_size("0") == 0
    assert load_config(env={"SALIENCY_EXPLANATION_CACHE_BYTES": "2MiB"}).explanation_cache_bytes == 2 * 2**20
    assert load_config(env={}).explanation_cache_bytes > 0  # on by default


def test_keys_separate_every_parameter_including_tensors_left_out_of_equality():
    zeros = make_params("ig", baseline="custom", custom_baseline=torch.zeros(3, 4, 4))
    ones = make_params("ig", baseline="custom", custom_baseline=torch.ones(3, 4, 4))
    assert zeros == ones  # dataclass equality ignores the tensor ...
    assert canonical_params(zeros) != canonical_params(ones)  # ... the key does not
    assert canonical_params(make_params("ig")) == canonical_params(make_params("ig"))
    assert canonical_params(make_params("occlusion", baseline=1.0)) != canonical_params(
        make_params("occlusion", baseline=0.5)
    )
    key = ExplanationCache.map_key("m", "w", b"d", "ig", zeros, 1)
    assert key != ExplanationCache.map_key("m", "w", b"d", "ig", zeros, 2)
    assert key != ExplanationCache.map_key("m", "other weights", b"d", "ig", zeros, 1)


def test_lru_evicts_the_least_recently_used_and_never_stores_an_entry_over_budget():
    cache = ExplanationCache(2 * (MAP_BYTES + ENTRY_OVERHEAD))
    def a(v: float) -> Attribution:
        return Attribution("vanilla", 0, torch.full((32, 32), v))
    cache.put_map("a", a(1))
    cache.put_map("b", a(2))
    assert cache.get_map("a", "vanilla", 0) is not None  # a is now the most recent
    cache.put_map("c", a(3))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes <= cache.budget
    cache.put_map("huge", Attribution("vanilla", 0, torch.zeros(64, 64)))
    assert cache.get("huge") is None and len(cache) == 2
    hit = cache.get_map("a", "vanilla", 0)
    hit.map.add_(1)  # a caller's copy: the entry is unchanged
    assert np.array_equal(cache.get_map("a", "vanilla", 0).map.numpy(), np.full((32, 32), 1, np.float32))


def test_a_stream_delivers_cached_maps_too(service):
    stub = service.stub()
    x = image(70)
    asked = request(x, {"gradcam": None, "ig": {"n_steps": 8}})
    first = list(stub.ExplainStream(asked, timeout=60))
    second = list(stub.ExplainStream(asked, timeout=60))
    assert first[0].WhichOneof("event") == second[0].WhichOneof("event") == "prediction"
    assert not any(a.cached for a in first[0].prediction.attributions)
    assert all(a.cached for a in second[0].prediction.attributions)
    deep_first = {(e.attribution.method, e.attribution.target): e.attribution for e in first[1:]}
    deep_second = {(e.attribution.method, e.attribution.target): e.attribution for e in second[1:]}
    assert deep_first.keys() == deep_second.keys() and len(deep_first) == 2
    assert all(a.cached and a.map.data == deep_first[k].map.data for k, a in deep_second.items())


def test_the_latency_policy_adaptive_ig_rounds_are_never_cached(service):
    """Their step count depends on the time left: not a function of the request."""
    stub = service.stub()
    x = image(80)
    asked = request(x, {"vanilla": None, "ig": {"n_steps": 64}})
    asked.latency_budget_ms = 60_000
    for _ in range(2):
        response = stub.Explain(asked, timeout=60)
    cached = {convert.method_name(a.method): a.cached for a in response.attributions}
    assert cached == {"vanilla": True, "ig": False}, cached
    assert response.HasField("policy")


def test_maps_are_copied_into_the_cache_off_the_event_loop(service):
    """Storing copies each map: never on the event loop (a deep map's store runs when its
    computation lands), and still before the request is answered, so asking again hits."""
    import asyncio

    cache = service.service.backend.cache
    real = cache.put_map
    on_loop = []

    def put_map(key, attribution):
        try:
            asyncio.get_running_loop()
            on_loop.append(attribution.method)
        except RuntimeError:  # no running loop: a thread
            pass
        return real(key, attribution)

    cache.put_map = put_map
    try:
        stub = service.stub()
        asked = request(image(90), {"vanilla": None, "ig": {"n_steps": 8}, "rise": {"n_masks": 16}})
        stub.Explain(asked, timeout=60)
        again = stub.Explain(asked, timeout=60)
    finally:
        del cache.put_map
    assert on_loop == []
    assert all(a.cached for a in again.attributions)
    assert len(service.service.backend._flights) == 0
