"""Prometheus metrics, all named ``ociresolve_*``, with prometheus-client.

The hot paths keep plain counters (the index, the watcher, the CRI fallback, the API service,
the tracer loop); a collector reads them when Prometheus scrapes, so that a lookup pays
nothing for metrics. Only CRI latencies are observed as they happen, into a histogram (a CRI
call costs a fraction of a millisecond; the observation about a microsecond).

Everything goes into a registry of its own: importing this module registers nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from ociresolve.errors import OciresolveError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.core import Metric

    from ociresolve.daemon.service import ResolverService
    from ociresolve.resolver import Resolver
    from ociresolve.tracer.counts import Counts

# CRI calls take 0.2-1 ms when the runtime is well, up to the deadline when it is not.
CRI_BUCKETS: Final = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BREAKER_STATES: Final = ("closed", "open", "half-open")

# () -> the tracer's totals so far, or None when no tracer runs.
TracerCounts = Callable[[], "Counts | None"]


class Metrics:
    """The daemon's registry; ``observe_cri`` is the resolver's ``cri_observer``."""

    def __init__(self) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise OciresolveError(
                "metrics need prometheus-client: pip install 'ociresolve[metrics]'"
            ) from exc
        self.registry: CollectorRegistry = prometheus_client.CollectorRegistry(auto_describe=True)
        self._cri_seconds: Histogram = prometheus_client.Histogram(
            "ociresolve_cri_request_duration_seconds",
            "CRI calls made for the index's misses, by method.",
            ["method"],
            buckets=CRI_BUCKETS,
            registry=self.registry,
        )
        prometheus_client.ProcessCollector(namespace="ociresolve", registry=self.registry)

    def observe_cri(self, method: str, outcome: str, seconds: float) -> None:
        self._cri_seconds.labels(method).observe(seconds)

    def watch(
        self,
        resolver: Resolver,
        service: ResolverService | None,
        tracer: TracerCounts | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """Expose the counters of these components (read at each scrape)."""
        self.registry.register(_Collector(resolver, service, tracer, ready))

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Collector:
    def __init__(
        self,
        resolver: Resolver,
        service: ResolverService | None,
        tracer: TracerCounts | None,
        ready: Callable[[], bool] | None,
    ) -> None:
        self.resolver = resolver
        self.service = service
        self.tracer = tracer
        self.ready = ready

    def describe(self) -> list[Metric]:
        return []  # collected fresh at every scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        containers = GaugeMetricFamily(
            "ociresolve_containers",
            "Containers and sandboxes in the index (those in their grace period excluded).",
            labels=["runtime", "type"],
        )
        live = collections.Counter(
            (r.meta.runtime, r.meta.container_type)
            for r in self.resolver.containers()
            if not r.removed
        )
        for (runtime, kind), count in sorted(live.items()):
            containers.add_metric([runtime, kind], count)
        yield containers

        if self.service is not None:
            lookups = CounterMetricFamily(
                "ociresolve_lookups",
                "API lookups answered, by where the answer came from (index, bundle, cri; none "
                "when nothing was found) and result.",
                labels=["source", "result"],
            )
            for (source, result), count in sorted(self.service.lookups.items()):
                lookups.add_metric([source, result], count)
            yield lookups
            yield GaugeMetricFamily(
                "ociresolve_watch_streams", "Open Watch streams.", value=self.service.watchers
            )
            yield CounterMetricFamily(
                "ociresolve_watch_overflows",
                "Watch streams ended because the client did not keep up.",
                value=self.service.watch_overflows,
            )

        yield from self._cri()
        yield from self._watcher()
        yield from self._tracer()
        if self.ready is not None:
            yield GaugeMetricFamily(
                "ociresolve_ready", "1 once the initial scan is done.", value=int(self.ready())
            )

    def _cri(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cri = self.resolver.cri
        requests = CounterMetricFamily(
            "ociresolve_cri_requests",
            "CRI calls for the index's misses, by method and code (ok, not_found, a gRPC code, "
            "or breaker_open when the breaker refused the call).",
            labels=["method", "code"],
        )
        breaker = GaugeMetricFamily(
            "ociresolve_cri_breaker_state",
            "1 for the CRI circuit breaker's current state (no series before the first miss "
            "that needed the CRI).",
            labels=["state"],
        )
        if cri is not None:
            for (method, code), count in sorted(cri.calls.items()):
                requests.add_metric([method, code], count)
            for state in BREAKER_STATES:
                breaker.add_metric([state], int(cri.breaker.state == state))
        yield requests
        yield breaker

    def _watcher(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        watcher = self.resolver.watcher
        for name, help_text, value in (
            ("watcher_rescans", "Full rescans of the runtime roots.", "rescans"),
            ("inotify_overflows", "inotify queue overflows (each causes a rescan).", "overflows"),
            ("bundle_errors", "Bundles that could not be read or decoded.", "bundle_errors"),
        ):
            count = getattr(watcher, value) if watcher is not None else 0
            yield CounterMetricFamily(f"ociresolve_{name}", help_text, value=count)

    def _tracer(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        counts = self.tracer() if self.tracer is not None else None
        if counts is None:
            return
        yield CounterMetricFamily(
            "ociresolve_tracer_events", "connect() events read from the kernel.", counts.events
        )
        resolved = CounterMetricFamily(
            "ociresolve_tracer_resolved",
            "Events attributed to a container, by where the answer came from.",
            labels=["source"],
        )
        for source, count in sorted(counts.sources.items()):
            resolved.add_metric([source], count)
        yield resolved
        yield CounterMetricFamily(
            "ociresolve_tracer_host", "Events from host processes.", value=counts.host
        )
        yield CounterMetricFamily(
            "ociresolve_tracer_unresolved",
            "Events from a container nobody knows, or an exited process of unknown cgroup.",
            value=counts.unresolved,
        )
        yield CounterMetricFamily(
            "ociresolve_tracer_lost",
            "Events dropped in the kernel (ring buffer full) before they could be read.",
            value=counts.lost,
        )
