"""Prometheus collectors that read the service's state at each scrape, from the objects that keep it (the
batchers' queues and counts, the session cache's tiers, the device, the jobs table) rather than from
copies kept beside them. Before the lifespan has started those objects, they yield nothing."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.datastructures import State

from app.jobs.store import JobStore
from app.serving import Registry, SessionStore
from app.serving.batcher import Batcher

__all__ = ["JobsCollector", "ServingCollector"]

BATCHERS = {"adapt": "adapting", "predict": "predicting"}
"""The ``batcher`` label of each batcher, and its name in the app's state."""


class ServingCollector(Collector):
    """This process's batchers (queue depth, calls refused or dropped), session cache (per tier) and
    device memory (on CUDA)."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        batchers = {
            label: batcher
            for label, name in BATCHERS.items()
            if isinstance(batcher := getattr(self._state, name, None), Batcher)
        }
        if batchers:
            yield from _batchers(batchers)
        store = getattr(self._state, "store", None)
        if isinstance(store, SessionStore):
            yield from _cache(store)
        registry = getattr(self._state, "registry", None)
        if isinstance(registry, Registry) and registry.device.type == "cuda":
            yield from _device_memory(registry.device)


def _batchers(batchers: dict[str, Batcher[object, object]]) -> Iterator[Metric]:
    queued = GaugeMetricFamily(
        "metaserve_batcher_queued_calls", "Calls waiting to be taken into a batch.", labels=["batcher"]
    )
    in_flight = GaugeMetricFamily(
        "metaserve_batcher_in_flight_calls",
        "Calls waiting or running: what METASERVE_MAX_QUEUE bounds.",
        labels=["batcher"],
    )
    dropped = CounterMetricFamily(
        "metaserve_batcher_dropped_calls",
        "Calls that got no answer: refused when the queue was full (overloaded), given up after "
        "METASERVE_REQUEST_TIMEOUT_SECONDS (timed_out), or whose caller left first (abandoned).",
        labels=["batcher", "reason"],
    )
    for label, batcher in batchers.items():
        queued.add_metric([label], batcher.waiting)
        in_flight.add_metric([label], batcher.in_flight)
        stats = batcher.stats
        for reason, count in (
            ("overloaded", stats.overloaded), ("timed_out", stats.timed_out), ("abandoned", stats.abandoned)
        ):  # fmt: skip
            dropped.add_metric([label, reason], count)
    yield from (queued, in_flight, dropped)


CACHE_SERIES = (
    ("hits", CounterMetricFamily, "metaserve_session_cache_hits", "Gets found in"),
    ("misses", CounterMetricFamily, "metaserve_session_cache_misses", "Gets not found in"),
    ("evictions", CounterMetricFamily, "metaserve_session_cache_evictions", "Sessions pushed out of"),
    ("entries", GaugeMetricFamily, "metaserve_session_cache_entries", "Sessions in"),
    ("size_bytes", GaugeMetricFamily, "metaserve_session_cache_bytes", "Bytes of adapted tensors in"),
    ("capacity_bytes", GaugeMetricFamily, "metaserve_session_cache_capacity_bytes", "The byte budget of"),
)
"""Each ``TierStats`` field's series: its kind, name and help (which ends with the tier)."""


def _cache(store: SessionStore) -> Iterator[Metric]:
    tiers = store.cache.stats()
    for field, kind, name, help_ in CACHE_SERIES:
        family = kind(name, f"{help_} the session cache's tier (device, then host memory).", labels=["tier"])
        for tier, stats in tiers.items():
            family.add_metric([tier], getattr(stats, field))
        yield family


def _device_memory(device: torch.device) -> Iterator[Metric]:
    allocated = GaugeMetricFamily(
        "metaserve_device_memory_allocated_bytes", "CUDA memory held by tensors.", labels=["device"]
    )
    reserved = GaugeMetricFamily(
        "metaserve_device_memory_reserved_bytes",
        "CUDA memory reserved by torch's caching allocator (what other processes cannot have).",
        labels=["device"],
    )
    allocated.add_metric([str(device)], torch.cuda.memory_allocated(device))
    reserved.add_metric([str(device)], torch.cuda.memory_reserved(device))
    yield from (allocated, reserved)


class JobsCollector(Collector):
    """The jobs table, the same from every process: jobs per state, and the meta-training iterations done
    (``deriv()`` of it is the training throughput; a resumed job steps back to its checkpoint)."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        jobs = getattr(self._state, "jobs", None)
        if not isinstance(jobs, JobStore):
            return
        totals = jobs.totals()
        states = GaugeMetricFamily("metaserve_jobs", "Meta-training jobs by state.", labels=["state"])
        for state, count in totals.states.items():
            states.add_metric([state], count)
        iterations = GaugeMetricFamily(
            "metaserve_job_iterations",
            "Meta-training iterations done, summed over every job; deriv() of it is the throughput.",
        )
        iterations.add_metric([], totals.iterations)
        yield from (states, iterations)
