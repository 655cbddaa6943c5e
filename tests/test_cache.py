"""The tiered session cache: LRU order and byte bounds per tier, demotion to the host and promotion back,
counts, compact copies, and consistency under concurrent use (on CUDA too, skipped without it)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.meta.flat import Flat, flatten, rows_of
from app.serving.cache import SessionCache, TierStats
from tests.conftest import requires_cuda

CPU = torch.device("cpu")
HEAD = (5 * 64 + 5) * 4
"""Bytes of an ANIL glyph session: the conv4 head."""


def head(value: float, device: torch.device = CPU) -> Flat:
    return flatten(
        {
            "head.weight": torch.full((5, 64), float(value), device=device),
            "head.bias": torch.full((5,), float(value), device=device),
        }
    )


def value_of(found: Flat | None) -> float:
    assert found is not None
    params = found.params()
    values = {float(t.min()) for t in params.values()} | {float(t.max()) for t in params.values()}
    assert len(values) == 1, values
    return values.pop()


def tiers(cache: SessionCache) -> tuple[TierStats, TierStats]:
    stats = cache.stats()
    return stats["device"], stats["host"]


def test_the_device_tier_keeps_the_most_recently_used_sets_within_its_bytes() -> None:
    cache = SessionCache(CPU, 2 * HEAD, 0)
    cache.put("a", head(1))
    cache.put("b", head(2))
    assert value_of(cache.get("a")) == 1
    cache.put("c", head(3))
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    device, host = tiers(cache)
    assert device == TierStats(
        hits=1, misses=0, evictions=1, entries=2, size_bytes=2 * HEAD, capacity_bytes=2 * HEAD
    )
    assert host == TierStats(hits=0, misses=0, evictions=0, entries=0, size_bytes=0, capacity_bytes=0)


def test_a_set_evicted_from_the_device_moves_to_the_host_and_back_on_a_get() -> None:
    cache = SessionCache(CPU, HEAD, 2 * HEAD)
    cache.put("a", head(1))
    cache.put("b", head(2))
    device, host = tiers(cache)
    assert (device.entries, device.evictions, host.entries, host.size_bytes) == (1, 1, 1, HEAD)

    assert value_of(cache.get("a")) == 1  # promoted, demoting b
    device, host = tiers(cache)
    assert (device.hits, device.misses, host.hits, host.misses) == (0, 1, 1, 0)
    assert (device.entries, device.size_bytes, host.entries, host.size_bytes) == (1, HEAD, 1, HEAD)
    assert value_of(cache.get("a")) == 1 and value_of(cache.get("b")) == 2
    assert tiers(cache)[0].hits == 1 and len(cache) == 2


def test_on_a_cpu_moving_a_set_between_tiers_copies_nothing() -> None:
    cache = SessionCache(CPU, HEAD, HEAD)
    cache.put("a", head(1))
    found = cache.get("a")
    assert found is not None
    cache.put("b", head(2))  # a demoted
    again = cache.get("a")  # a promoted, b demoted
    assert again is not None and tiers(cache)[1].hits == 1
    assert again.tensor.data_ptr() == found.tensor.data_ptr()


def test_the_host_tier_drops_its_least_recently_used_set() -> None:
    cache = SessionCache(CPU, HEAD, 2 * HEAD)
    for i, key in enumerate("abc"):
        cache.put(key, head(i))  # device: c; host: a, b
    assert value_of(cache.get("a")) == 0  # device: a; host: b, c
    cache.put("d", head(3))  # device: d; host: c, a (b dropped)
    assert "b" not in cache and all(key in cache for key in "acd")
    assert cache.get("b") is None
    device, host = tiers(cache)
    assert (device.evictions, host.evictions, host.entries, host.size_bytes) == (4, 1, 2, 2 * HEAD)
    assert (device.misses, host.hits, host.misses) == (2, 1, 1)


def test_a_set_that_owns_its_tensor_is_kept_as_it_is_and_answers_the_tensors_put() -> None:
    params = {
        "w": torch.randn(40, 1),
        "b": torch.randn(40),
        "scale": torch.tensor(0.5),
        "m": torch.randn(3, 4).T,
    }
    flat = flatten(params)
    cache = SessionCache(CPU, 10_000, 0)
    cache.put("a", flat)
    found = cache.get("a")
    assert found is not None and found.tensor is flat.tensor, "handed over, not copied"
    assert list(found.params()) == list(params)
    assert all(torch.equal(found.params()[k], params[k]) for k in params)
    assert all(found.params()[k].shape == params[k].shape for k in params)


def test_the_budget_counts_the_bytes_of_the_copy_not_of_the_batch_a_set_is_a_row_of() -> None:
    batch = {"head.weight": torch.randn(1000, 5, 64), "head.bias": torch.randn(1000, 5)}
    first = rows_of(batch, ["head.weight", "head.bias"])[0]
    cache = SessionCache(CPU, 10 * HEAD, 0)
    cache.put("a", first)
    assert tiers(cache)[0].size_bytes == HEAD
    found = cache.get("a")
    assert found is not None and found.tensor.untyped_storage().nbytes() == HEAD
    assert torch.equal(found.params()["head.bias"], batch["head.bias"][0])


def test_a_set_larger_than_the_device_tier_stays_in_the_host_and_one_larger_than_both_is_not_kept() -> None:
    cache = SessionCache(CPU, HEAD - 1, HEAD)
    cache.put("a", head(1))
    assert value_of(cache.get("a")) == 1 and value_of(cache.get("a")) == 1
    device, host = tiers(cache)
    assert (device.entries, device.evictions, device.misses) == (0, 0, 2)
    assert (host.entries, host.hits, host.size_bytes) == (1, 2, HEAD)

    small = SessionCache(CPU, HEAD - 1, HEAD - 1)
    small.put("a", head(1))
    assert len(small) == 0 and small.get("a") is None
    assert tiers(small)[0].evictions == tiers(small)[1].evictions == 0


def test_put_replaces_and_discard_removes_a_set_in_either_tier() -> None:
    cache = SessionCache(CPU, HEAD, HEAD)
    cache.put("a", head(1))
    cache.put("b", head(2))  # a in the host tier
    cache.put("a", head(3))  # replaced and on the device; b demoted
    device, host = tiers(cache)
    assert (device.entries, host.entries, device.size_bytes + host.size_bytes) == (1, 1, 2 * HEAD)
    assert value_of(cache.get("a")) == 3

    cache.discard("a")
    cache.discard("b")
    cache.discard("never put")
    device, host = tiers(cache)
    assert len(cache) == 0 and device.size_bytes == host.size_bytes == 0
    assert cache.get("a") is None and cache.get("b") is None


def test_put_refuses_an_empty_set_a_flat_set_one_dtype_and_budgets_must_not_be_negative() -> None:
    cache = SessionCache(CPU, HEAD, HEAD)
    with pytest.raises(TypeError, match="one dtype"):
        flatten({"w": torch.ones(3), "steps": torch.ones(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="empty set"):
        cache.put("a", flatten({}))
    with pytest.raises(ValueError, match="host -1"):
        SessionCache(CPU, HEAD, -1)


def test_concurrent_puts_gets_and_discards_keep_every_set_and_count_consistent() -> None:
    cache = SessionCache(CPU, 8 * HEAD, 8 * HEAD)
    gets_per_thread = 1500

    def work(seed: int) -> int:
        rng, found = random.Random(seed), 0
        for _ in range(gets_per_thread):
            key = rng.randrange(40)
            if rng.random() < 0.3:
                cache.put(str(key), head(key))
            elif rng.random() < 0.05:
                cache.discard(str(key))
            got = cache.get(str(key))
            if got is not None:
                assert value_of(got) == key
                found += 1
        return found

    with ThreadPoolExecutor(6) as pool:
        found = sum(pool.map(work, range(6)))
    device, host = tiers(cache)
    assert device.hits + device.misses == 6 * gets_per_thread
    assert device.misses == host.hits + host.misses and device.hits + host.hits == found
    assert device.size_bytes == device.entries * HEAD <= 8 * HEAD
    assert host.size_bytes == host.entries * HEAD <= 8 * HEAD
    assert len(cache) == device.entries + host.entries


@requires_cuda
@pytest.mark.cuda
def test_on_cuda_the_host_tier_holds_host_copies_and_the_device_frees_what_it_demotes() -> None:
    cuda = torch.device("cuda")
    cache = SessionCache(cuda, HEAD, HEAD)
    cache.put("a", head(1, cuda))  # handed over: the cache holds the only reference
    with_one = torch.cuda.memory_allocated(cuda)
    cache.put("b", head(2, cuda))  # a demoted: its device tensor freed
    assert torch.cuda.memory_allocated(cuda) == with_one
    found = cache.get("a")  # a promoted, b demoted
    assert found is not None and found.tensor.device.type == "cuda"
    assert value_of(found) == 1 and torch.cuda.memory_allocated(cuda) == with_one
    device, host = tiers(cache)
    assert (device.entries, host.entries, device.evictions, host.hits) == (1, 1, 2, 1)
    assert value_of(cache.get("b")) == 2
