"""Prometheus metrics, all named ``ociresolve_*``, with prometheus-client.

The hot paths keep plain counters (the index, the watcher, the CRI fallback, the API service,
the tracer loop); a collector reads them when Prometheus scrapes, so that a lookup pays
nothing for metrics. Only CRI latencies are observed as they happen, into a histogram (a CRI
call costs a fraction of a millisecond; the observation about a microsecond).

The deprecation reporter's view is read at scrape time too (``watch_deprecations``): a gauge
per attributed client, valued its confidence, and one per container that mounts a runtime
socket, so that one PromQL query over every node's daemon lists the cluster's clients. Their
labels are names a tenant chooses, so the series are capped: the ``MAX_CLIENT_SERIES`` most
confident clients at ``MIN_CONFIDENCE`` or more, and ``MAX_SOCKET_MOUNT_SERIES`` socket mounts.

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
    from ociresolve.deprecations.correlate import Attribution
    from ociresolve.model import IndexedContainer
    from ociresolve.resolver import Resolver
    from ociresolve.tracer.counts import Counts

# CRI calls take 0.2-1 ms when the runtime is well, up to the deadline when it is not.
CRI_BUCKETS: Final = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BREAKER_STATES: Final = ("closed", "open", "half-open")

# () -> the tracer's totals so far, or None when no tracer runs.
TracerCounts = Callable[[], "Counts | None"]
# A container id -> its pod's workload ("Deployment/checkout"), None when unknown.
Workloads = Callable[[str | None], str | None]

# The attributed clients exposed at most (one series each), and the least confidence exposed:
# a client below it explains less than one occurrence in twenty (the reporter's own threshold
# for a client line).
MAX_CLIENT_SERIES: Final = 50
MIN_CONFIDENCE: Final = 0.05
# Series of ociresolve_runtime_socket_mounts at most (a container and one socket each).
MAX_SOCKET_MOUNT_SERIES: Final = 200


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

    def watch_deprecations(
        self,
        clients: Callable[[], list[Attribution]],
        socket_mounts: Callable[[], list[IndexedContainer]],
        workloads: Workloads | None = None,
    ) -> None:
        """Expose the reporter's attributed ``clients()`` (``Reporter.clients``) and the
        containers of ``socket_mounts()`` (``potential.socket_mounts``), read at each scrape."""
        self.registry.register(_DeprecationsCollector(clients, socket_mounts, workloads))

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
            yield CounterMetricFamily(
                "ociresolve_watch_feed_losses",
                "Times the API's feed of changes fell behind the index: every Watch stream ended.",
                value=self.service.feed_losses,
            )
            yield CounterMetricFamily(
                "ociresolve_api_unencodable",
                "Records left out of an API answer, listing or stream: a value out of its "
                "field's range.",
                value=self.service.unencodable,
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
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        watcher = self.resolver.watcher
        yield GaugeMetricFamily(
            "ociresolve_watches_missing",
            "Directories that need an inotify watch and could not get one (the watch limit, "
            "fs.inotify.max_user_watches, used up): rescanned until they do; /healthz says "
            "degraded meanwhile.",
            value=watcher.missing_watches if watcher is not None else 0,
        )
        for name, help_text, value in (
            ("watcher_rescans", "Full rescans of the runtime roots.", "rescans"),
            ("inotify_overflows", "inotify queue overflows (each causes a rescan).", "overflows"),
            ("bundle_errors", "Bundles that could not be read or decoded.", "bundle_errors"),
            (
                "watch_errors",
                "inotify watches that could not be added, each attempt (each retried by a rescan).",
                "watch_errors",
            ),
            (
                "identity_conflicts",
                "Bundles whose annotations claim an identity their structure denies.",
                "identity_conflicts",
            ),
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


class _DeprecationsCollector:
    def __init__(
        self,
        clients: Callable[[], list[Attribution]],
        socket_mounts: Callable[[], list[IndexedContainer]],
        workloads: Workloads | None,
    ) -> None:
        self.clients = clients
        self.socket_mounts = socket_mounts
        self.workloads = workloads

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        confidence = GaugeMetricFamily(
            "ociresolve_deprecated_api_client_confidence",
            "The estimated fraction of a deprecation's occurrences on this node that the client "
            f"causes, in [0, 1): the {MAX_CLIENT_SERIES} most confident clients at "
            f"{MIN_CONFIDENCE} or more (a host process has empty pod labels).",
            labels=["deprecation", "namespace", "pod", "container", "workload"],
        )
        for labels, value in self._confidences():
            confidence.add_metric(labels, value)
        yield confidence
        mounts = GaugeMetricFamily(
            "ociresolve_runtime_socket_mounts",
            "1 for each container that mounts a runtime socket (the socket file or a directory "
            "holding it), and each socket: it can call that runtime, seen calling or not "
            f"(at most {MAX_SOCKET_MOUNT_SERIES} series).",
            labels=["namespace", "pod", "container", "workload", "socket"],
        )
        for labels in self._socket_mounts():
            mounts.add_metric(labels, 1)
        yield mounts

    def _confidences(self) -> list[tuple[list[str], float]]:
        """One series per (deprecation, pod, container, workload), valued its most confident
        client's confidence (clients differ by process name too); the most confident first."""
        best: dict[tuple[str, ...], float] = {}
        for row in sorted(self.clients(), key=lambda row: -row.confidence):
            if row.confidence < MIN_CONFIDENCE:
                break
            who = row.identity
            key = (
                row.deprecation,
                who.pod_namespace or "",
                who.pod_name or "",
                who.container or "",
                self._workload(row.container_id),
            )
            if key not in best:
                if len(best) >= MAX_CLIENT_SERIES:
                    break
                best[key] = row.confidence
        return [(list(key), value) for key, value in best.items()]

    def _socket_mounts(self) -> list[list[str]]:
        series: list[list[str]] = []
        for record in self.socket_mounts():
            meta = record.meta
            workload = self._workload(meta.container_id)
            for socket in record.sockets:
                if len(series) >= MAX_SOCKET_MOUNT_SERIES:
                    return series
                series.append(
                    [
                        meta.pod_namespace or "",
                        meta.pod_name or "",
                        meta.container_name or "",
                        workload,
                        socket,
                    ]
                )
        return series

    def _workload(self, container_id: str | None) -> str:
        if self.workloads is None or container_id is None:
            return ""
        return self.workloads(container_id) or ""
