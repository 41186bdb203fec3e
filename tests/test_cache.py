"""attribution/cache.py: one build per key under threads, other keys not blocked, byte budget."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from saliency.attribution.cache import TensorCache


def test_concurrent_misses_of_one_key_build_it_once():
    cache, started = TensorCache(max_bytes=1 << 20), threading.Event()

    def slow_build():
        started.set()
        time.sleep(0.2)
        return torch.ones(4)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build("k", slow_build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert cache.builds == 1 and len(results) == 4
    assert all(r is results[0] for r in results)


def test_a_slow_build_does_not_block_other_keys():
    cache, release = TensorCache(max_bytes=1 << 20), threading.Event()
    slow = threading.Thread(target=lambda: cache.get_or_build("slow", lambda: release.wait(5) and torch.zeros(1)))
    slow.start()
    try:
        began = time.perf_counter()
        assert torch.equal(cache.get_or_build("fast", lambda: torch.ones(1)), torch.ones(1))
        assert time.perf_counter() - began < 1.0
    finally:
        release.set()
        slow.join(5)
    assert cache.builds == 2


def test_least_recently_used_values_leave_first_under_the_byte_budget():
    cache = TensorCache(max_bytes=3 * 16)  # room for three float32 [4] tensors
    for key in "abc":
        cache.get_or_build(key, lambda: torch.zeros(4))
    cache.get_or_build("a", lambda: pytest.fail("a is cached"))  # a is now the most recent
    cache.get_or_build("d", lambda: torch.zeros(4))
    assert len(cache) == 3 and cache.builds == 4
    cache.get_or_build("a", lambda: pytest.fail("a was used recently, b should have gone"))
    cache.get_or_build("b", lambda: torch.zeros(4))
    assert cache.builds == 5


def test_a_failed_build_is_not_cached_and_the_next_caller_builds():
    cache = TensorCache(max_bytes=1 << 20)
    with pytest.raises(RuntimeError):
        cache.get_or_build("k", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert torch.equal(cache.get_or_build("k", lambda: torch.ones(2)), torch.ones(2))
    assert cache.builds == 1


def test_a_value_over_the_whole_budget_is_returned_but_never_stored():
    """It used to be kept ("it is in use"): a 3.3 GB mask bank stayed under a 1 GiB budget."""
    cache = TensorCache(max_bytes=3 * 16)
    cache.get_or_build("small", lambda: torch.zeros(4))
    big = cache.get_or_build("big", lambda: torch.zeros(16))  # 64 bytes > 48
    assert big.shape == (16,)
    cache.get_or_build("small", lambda: pytest.fail("small was evicted for a value that cannot fit"))
    cache.get_or_build("big", lambda: torch.zeros(16))
    assert cache.builds == 3  # not stored, so built again
    assert len(cache) == 1 and cache.nbytes == 16


def test_the_budget_counts_the_storage_behind_a_view():
    cache = TensorCache(max_bytes=100)
    view = torch.zeros(1000)[:4]  # 16 bytes seen, 4000 held
    cache.get_or_build("view", lambda: view)
    assert len(cache) == 0


def test_callers_waiting_on_an_over_budget_build_share_it():
    """Concurrent callers of one key share its build even when it cannot be stored."""
    cache, release = TensorCache(max_bytes=8), threading.Event()

    def slow_build():
        release.wait(5)
        return torch.ones(16)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build("k", slow_build))) for _ in range(4)]
    for t in threads:
        t.start()
    while cache.waiting("k") < 3:  # the other three wait on the first one's build
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(5)
    assert cache.builds == 1 and len(results) == 4 and all(r is results[0] for r in results)
    assert len(cache) == 0
