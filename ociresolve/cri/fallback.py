"""The CRI fallback: resolve the index's misses over CRI without ever becoming the hot path.

Every call has the client's deadline; a failing runtime opens the breaker, so that lookups
return at once while it is down; answers are cached (positive for long: container ids are
never reused; negative for ``negative_ttl``, so a storm of events from one unknown container
costs one RPC), and concurrent misses for the same id share one RPC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final, TypeVar

from ociresolve.cri.breaker import Breaker
from ociresolve.cri.client import CriClient, StatusReply
from ociresolve.cri.info import parse_verbose_info
from ociresolve.errors import CriUnavailable
from ociresolve.model import ContainerMeta
from ociresolve.runtimes import normalize_cri

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_V = TypeVar("_V")

# observer(method, outcome, seconds) after every call that reached the runtime (metrics).
Observer = Callable[[str, str, float], None]

NEGATIVE_TTL: Final = 2.0
POSITIVE_TTL: Final = 600.0
CACHE_SIZE: Final = 4096
# Runtimes' names for themselves (CRI Version.runtime_name) -> ours.
RUNTIME_NAMES: Final = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.leader = threading.get_ident()
        self.result: ContainerMeta | None = None


class CriFallback:
    """``resolve(container_id)`` over CRI; never raises, returns ``None`` when it cannot."""

    def __init__(
        self,
        client: CriClient,
        *,
        negative_ttl: float = NEGATIVE_TTL,
        positive_ttl: float = POSITIVE_TTL,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.client = client
        self.observer = observer
        self.breaker = breaker or Breaker(clock=clock)
        self.negative_ttl = negative_ttl
        self.positive_ttl = positive_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, ContainerMeta | None]] = OrderedDict()
        self._labels: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._completing = threading.local()  # .active: this thread is in _with_pod
        self._runtime: str | None = None
        # (method, outcome) -> count: "ok", "not_found", a gRPC code, or "breaker_open".
        self.calls: Counter[tuple[str, str]] = Counter()

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    def resolve(self, container_id: str) -> ContainerMeta | None:
        """The container (or sandbox) with this id, from the runtime; ``None`` if unknown, or
        if the runtime cannot answer now."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(container_id)
            if cached is not None and cached[0] > now:
                return cached[1]
            flight = self._flights.get(container_id)
            leader = flight is None
            if flight is None:
                flight = self._flights[container_id] = _Flight()
            elif flight.leader == threading.get_ident():
                return None  # asked for again while resolving it: a container naming itself
        if not leader:
            # Another thread is asking already: share its answer (it has a deadline too).
            flight.done.wait(timeout=getattr(self.client, "timeout", 1.0) * 3)
            return flight.result
        try:
            flight.result = self._resolve_uncached(container_id)
        finally:
            with self._lock:
                del self._flights[container_id]
            flight.done.set()
        return flight.result

    def cached(self, container_id: str) -> ContainerMeta | None:
        """A record the runtime gave earlier and that is still fresh; no call is made."""
        cached = self._cache.get(container_id)
        return cached[1] if cached is not None and cached[0] > self._clock() else None

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None:
        """The pod's labels (from its sandbox's status), fetched once per sandbox."""
        with self._lock:
            labels = self._labels.get(sandbox_id)
        if labels is not None:
            return labels
        _, reply = self._call("PodSandboxStatus", self.client.sandbox_status, sandbox_id)
        if reply is None:
            return None
        with self._lock:
            self._labels[sandbox_id] = reply.labels
            _trim(self._labels)
        return reply.labels

    def close(self) -> None:
        self.client.close()

    # -- internals -----------------------------------------------------------------------------

    def _resolve_uncached(self, container_id: str) -> ContainerMeta | None:
        answered, reply = self._call("ContainerStatus", self.client.container_status, container_id)
        if answered and reply is None:
            # Not a container: a sandbox id, maybe (its pause process is in the pod too).
            answered, reply = self._call(
                "PodSandboxStatus", self.client.sandbox_status, container_id
            )
        meta = None if reply is None else self._meta(reply)
        if meta is not None and reply is not None and reply.kind == "container":
            meta = self._with_pod(meta)
        if answered:  # "the runtime is down" is not an answer: only answers are cached
            # A record whose runtime could not be named (Version failed) is kept briefly only.
            whole = meta is not None and self._runtime is not None
            ttl = self.positive_ttl if whole else self.negative_ttl
            with self._lock:
                self._cache[container_id] = (self._clock() + ttl, meta)
                _trim(self._cache)
        return meta

    def _meta(self, reply: StatusReply) -> ContainerMeta:
        info = parse_verbose_info(reply.info)
        return normalize_cri(
            runtime=self._runtime_name(),
            container_type=reply.kind,
            container_id=reply.id,
            annotations=info.annotations if info else {},
            cgroups_path=info.cgroups_path if info else None,
            labels=reply.labels,
            name=reply.name,
            namespace=reply.namespace,
            uid=reply.uid,
            sandbox_id=info.sandbox_id if info else None,
            image=reply.image,
        )

    def _with_pod(self, meta: ContainerMeta) -> ContainerMeta:
        """A container whose spec and labels lack pod fields (containerd <= 1.5 has no pod
        UID): complete them from its sandbox's status. One level only: a sandbox that is itself
        a container lacking pod fields (a runtime's garbage) is not followed further."""
        complete = meta.pod_uid and meta.pod_name and meta.pod_namespace
        if complete or not meta.sandbox_id or getattr(self._completing, "active", False):
            return meta
        self._completing.active = True
        try:
            sandbox = self.resolve(meta.sandbox_id)
        finally:
            self._completing.active = False
        if sandbox is None:
            return meta
        return ContainerMeta(
            runtime=meta.runtime,
            container_type=meta.container_type,
            container_id=meta.container_id,
            sandbox_id=meta.sandbox_id,
            pod_name=meta.pod_name or sandbox.pod_name,
            pod_namespace=meta.pod_namespace or sandbox.pod_namespace,
            pod_uid=meta.pod_uid or sandbox.pod_uid,
            container_name=meta.container_name,
            image=meta.image,
        )

    def _runtime_name(self) -> str:
        if self._runtime is None:
            _, name = self._call("Version", lambda _: self.client.runtime_name(), "")
            if name is None:
                return "unknown"
            self._runtime = RUNTIME_NAMES.get(name.lower(), name.lower())
        return self._runtime

    def _call(
        self, method: str, call: Callable[[str], _T | None], argument: str
    ) -> tuple[bool, _T | None]:
        """(whether the runtime answered, its answer); ``None`` answers are "not found"."""
        if not self.breaker.allow():
            self.calls[method, "breaker_open"] += 1
            return False, None
        started = time.perf_counter()
        try:
            result = call(argument)
        except CriUnavailable as exc:
            self._count(method, exc.code or "error", started)
            self.breaker.failure()
            log.warning("%s", exc)
            return False, None
        except Exception as exc:  # a broken runtime must never break a lookup
            self._count(method, "error", started)
            self.breaker.failure()
            log.warning("CRI %s %s: unexpected %r", self.endpoint, method, exc)
            return False, None
        self.breaker.success()
        self._count(method, "ok" if result is not None else "not_found", started)
        return True, result

    def _count(self, method: str, outcome: str, started: float) -> None:
        self.calls[method, outcome] += 1
        if self.observer is not None:
            self.observer(method, outcome, time.perf_counter() - started)


def _trim(cache: OrderedDict[str, _V]) -> None:
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
