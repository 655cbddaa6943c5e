"""The service's Prometheus metrics: the series observed as requests and batches go by (HTTP latency,
batch sizes, adaptations) and, read at each scrape, the state they leave (``app.api.collectors``).

Each service process keeps its own: with ``metaserve serve --workers N`` a scrape lands on one worker, so
every series of the process carries its ``pid`` label, and sums over workers are ``sum by`` queries. Only
the jobs' series, the database's, are the same from every process and carry none."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Histogram, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.datastructures import State

from app.api.collectors import JobsCollector, ServingCollector
from app.serving import SessionRecord
from app.serving.sessions import SupportSet

__all__ = ["METHODS", "UNMATCHED", "Metrics"]

Item = TypeVar("Item")
Result = TypeVar("Result")
Run = Callable[[Sequence[Item]], Sequence[Result | Exception]]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods named in the ``method`` label; any other is ``other``, so that no client can add series."""
UNMATCHED = "unmatched"
"""The ``route`` label of a request that no route matched (a 404 on an unknown path)."""
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Latency buckets from half a millisecond (a /predict) to the request timeout."""
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STEPS = (1, 2, 3, 5, 10, 20, 50, 100)


class Metrics:
    """The series of one service process and ``registry``, what ``GET /metrics`` exposes. ``state`` is the
    app's, read at each scrape for what the lifespan has started (batchers, sessions, jobs)."""

    def __init__(self, state: State) -> None:
        own = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=own)
        self._http = Histogram(
            "metaserve_http_request_duration_seconds",
            "HTTP requests by method, route template and status: latency, and in _count the requests.",
            ["method", "route", "status"],
            buckets=SECONDS,
            registry=own,
        )
        self._batch_size = Histogram(
            "metaserve_batch_size", "Calls run together in one batch, by batcher.", ["batcher"],
            buckets=SIZES, registry=own,
        )  # fmt: skip
        self._batch_seconds = Histogram(
            "metaserve_batch_duration_seconds", "Time to run one batch, by batcher.", ["batcher"],
            buckets=SECONDS, registry=own,
        )  # fmt: skip
        self._adapt_steps = Histogram(
            "metaserve_adapt_inner_steps", "Inner steps of each adapted session.", buckets=STEPS, registry=own
        )
        self._adapt_seconds = Histogram(
            "metaserve_adapt_duration_seconds",
            "Inner-loop time of each adapted session: that of the batch it adapted in.",
            buckets=SECONDS,
            registry=own,
        )
        own.register(ServingCollector(state))
        self.registry = CollectorRegistry()
        self.registry.register(_OfThisProcess(own))
        self.registry.register(JobsCollector(state))
        # Children by label values, so that a request costs a dictionary lookup and one observe.
        self._requests: dict[tuple[str, str, int], Callable[[float], None]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency; ``route`` is the template, e.g. ``/sessions/{id}``."""
        key = (method, route, status)
        observe = self._requests.get(key)
        if observe is None:
            label = method if method in METHODS else "other"
            observe = self._requests[key] = self._http.labels(label, route, str(status)).observe
        observe(seconds)

    def batches(self, batcher: str, run: Run[Item, Result]) -> Run[Item, Result]:
        """``run`` (a batcher's) with each batch's size and time observed under ``batcher``."""
        size, seconds = self._batch_size.labels(batcher), self._batch_seconds.labels(batcher)

        def observed(items: Sequence[Item]) -> Sequence[Result | Exception]:
            started = time.perf_counter()
            try:
                return run(items)
            finally:
                seconds.observe(time.perf_counter() - started)
                size.observe(len(items))

        return observed

    def adaptations(self, run: Run[SupportSet, SessionRecord]) -> Run[SupportSet, SessionRecord]:
        """``run`` (``SessionStore.create_many``) as the ``adapt`` batcher, with each adapted session's
        inner steps and time observed too."""

        def observed(supports: Sequence[SupportSet]) -> Sequence[SessionRecord | Exception]:
            results = run(supports)
            for result in results:
                if isinstance(result, SessionRecord):
                    self._adapt_steps.observe(result.steps)
                    self._adapt_seconds.observe(result.adapt_seconds)
            return results

        return self.batches("adapt", observed)


class _OfThisProcess(Collector):
    """The series of ``registry``, each labelled with this process's ``pid``: with several workers behind
    one port, what a scrape answers is one worker's, and the label says whose."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        pid = str(os.getpid())
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, "pid": pid}) for s in family.samples]
            yield labelled
