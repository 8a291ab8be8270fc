"""Where a container id is looked up, one ``Source`` each; and what a resolver answers to the
code that uses it (``Resolving``, public as ``ociresolve.Resolving``).

``Resolver`` asks its sources in order and keeps the first answer: the live index, what the
CRI answered before, the container's bundle on disk, the runtime's CRI API. Each source also
says in a few words what it found, so that ``ociresolve lookup --explain`` is the same walk,
timed. Adding a way to know containers (kubelet's pod API, NRI) is one more class here, one
more entry in the chain and one more name in ``model.Source``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol, TypeAlias

from ociresolve.cri.client import CriClient, GrpcCriClient
from ociresolve.cri.fallback import CriFallback, Observer
from ociresolve.entries import read_entry
from ociresolve.errors import BundleError
from ociresolve.hostpaths import HostPaths
from ociresolve.index import Index
from ociresolve.model import (
    CgroupRef,
    ContainerMeta,
    IndexedContainer,
    Resolution,
    StandaloneContainer,
)
from ociresolve.model import Source as SourceName
from ociresolve.render import short_id

# While no CRI socket exists, look for one again at most this often.
SOCKET_RECHECK: Final = 5.0
# With the watcher running, a container id not found on disk is not looked for again so soon
# (the watcher indexes it if its bundle appears).
DISK_MISS_TTL: Final = 1.0
DISK_MISSES: Final = 4096
_RECENT_DISK_MISS: Final = f"none (looked for less than {DISK_MISS_TTL:g} s ago)"

# What a source finds: a Kubernetes container, a container that is not one (which ends the
# walk: nothing else would know it as Kubernetes), or nothing.
Found: TypeAlias = ContainerMeta | StandaloneContainer | None


class Resolving(Protocol):
    """What the tracer needs of a resolver: ``Resolver`` on the node, or ``RemoteResolver``,
    which asks the node's daemon."""

    def lookup_cgroup_id(self, cgroup_id: int) -> ContainerMeta | None: ...

    def resolve_pid(self, pid: int) -> Resolution | None: ...

    def cgroup_of(self, pid: int) -> CgroupRef | None: ...


class Source(Protocol):
    """One place a container id can be looked up.

    ``find`` returns the container (``None``: not here) and a note on what was found, e.g. the
    bundle read or why the CRI did not answer; a source may skip the work a note costs unless
    ``explain`` is set. A note of ``None`` means nothing was tried (a cache holding nothing for
    the id), and ``--explain`` shows no step for it. ``find`` never
    raises for a container it cannot read: that is a miss. ``name`` is what
    ``Resolution.source`` says for its answers, and what names its ``--explain`` step.
    A ``StandaloneContainer`` (a podman container) ends the walk with no Kubernetes answer.
    """

    @property
    def name(self) -> SourceName: ...

    def find(self, container_id: str, explain: bool = False) -> tuple[Found, str | None]: ...


def standalone_note(record: StandaloneContainer) -> str:
    """What ``--explain`` says of a container that is not a Kubernetes one, and where it was
    found: "podman container <short id> (not Kubernetes): <its config.json>"."""
    where = record.config or record.bundle
    return f"{record.runtime} container {short_id(record.container_id)} (not Kubernetes): {where}"


class IndexSource:
    """The live index (kept current by the watcher, and by what the other sources read)."""

    name: Final = "index"

    def __init__(self, index: Index) -> None:
        self._by_id = index.meta_by_id
        self._standalone = index.standalone

    def find(self, container_id: str, explain: bool = False) -> tuple[Found, str | None]:
        meta = self._by_id.get(container_id)
        if meta is not None:
            return meta, "hit"
        return self.find_standalone(container_id, explain)

    def find_standalone(self, container_id: str, explain: bool = False) -> tuple[Found, str | None]:
        """Only the containers that are not Kubernetes ones (a caller looked up the others)."""
        other = self._standalone.get(container_id)
        if other is None:
            return None, "miss"
        return other, standalone_note(other) if explain else None


class BundleSource:
    """The container's bundle, read from disk when the index does not hold it (yet): closes
    any race with the watcher. What it reads goes into the index, so the next lookup is a hit.

    ``watching()`` says whether the watcher runs: while it does, an id found nowhere on disk is
    not looked for again for ``DISK_MISS_TTL`` (the watcher will index its bundle if one
    appears), so a storm of events from a container no runtime root holds costs one look per
    second. Without it (one-shot use) every miss reads the disk: nothing else would notice.
    """

    name: Final = "bundle"

    def __init__(self, paths: HostPaths, index: Index, *, watching: Callable[[], bool]) -> None:
        self._paths = paths
        self._index = index
        self._watching = watching
        self._misses: dict[str, float] = {}  # container id -> perf_counter() expiry

    def find(self, container_id: str, explain: bool = False) -> tuple[Found, str | None]:
        if self._misses.get(container_id, 0.0) > time.perf_counter() and self._watching():
            return None, _RECENT_DISK_MISS
        for bundle, layout in self._paths.bundle_candidates(container_id):
            try:
                record = read_entry(self._paths, bundle, layout).record
            except BundleError:
                continue
            if record is None:
                continue
            if isinstance(record, IndexedContainer):
                self._index.put(record)
            else:
                self._index.put_standalone(record)
            if not os.path.isdir(bundle):
                # Removed while we read it, maybe before the watcher knew of it: no ghost.
                self._index.remove_bundle(bundle)
            if isinstance(record, IndexedContainer):
                return record.meta, bundle
            return record, standalone_note(record)
        if len(self._misses) >= DISK_MISSES:
            self._misses.clear()
        self._misses[container_id] = time.perf_counter() + DISK_MISS_TTL
        return None, "none under the runtime roots"


class CriSource:
    """The runtime's CRI API, for what neither the index nor a bundle knows.

    The ``CriFallback`` (deadline, breaker, caches) is made on the first miss that needs it:
    with ``client`` if given (tests inject faults with it), else over ``socket`` (a host path)
    or the first default socket that exists, looked for again at most every
    ``SOCKET_RECHECK`` seconds while there is none. ``enabled=False`` never makes one.
    """

    name: Final = "cri"

    def __init__(
        self,
        paths: HostPaths,
        *,
        enabled: bool,
        socket: str | None,
        timeout: float,
        client: CriClient | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.enabled = enabled
        self._paths = paths
        self._socket = socket
        self._timeout = timeout
        self._observer = observer
        self.fallback: CriFallback | None = (
            CriFallback(client, observer=observer) if client and enabled else None
        )
        self._checked_at = -SOCKET_RECHECK
        self._closed = False
        self._lock = threading.Lock()

    def connect(self) -> CriFallback | None:
        """The fallback, made now if it can be; ``None`` when off, closed or without a socket."""
        if self.fallback is not None or not self.enabled or self._closed:
            return self.fallback
        now = time.monotonic()
        with self._lock:
            due = now - self._checked_at >= SOCKET_RECHECK
            if self.fallback is None and not self._closed and due:
                self._checked_at = now
                socket = self._paths.cri_socket(self._socket)
                if socket is not None:
                    client = GrpcCriClient(socket, timeout=self._timeout)
                    self.fallback = CriFallback(client, observer=self._observer)
            return self.fallback

    def find(self, container_id: str, explain: bool = False) -> tuple[Found, str | None]:
        if not self.enabled:
            return None, "off"
        cri = self.fallback or self.connect()
        if cri is None:
            return None, "no CRI socket found"
        if not explain:
            return cri.resolve(container_id), None
        before = dict(cri.calls)  # a copy: the calls this lookup makes tell why it missed
        meta = cri.resolve(container_id)
        if meta is not None:
            return meta, f"{cri.endpoint}: found"
        return None, _cri_miss(cri, before)

    def close(self) -> None:
        """Close the fallback's connection; no other is made afterwards."""
        with self._lock:
            self._closed = True
            cri, self.fallback = self.fallback, None
        if cri is not None:
            cri.close()


class CriCacheSource:
    """What the CRI answered before and still holds fresh: asked before the disk, since an id
    only the CRI knew has no bundle to look for again. Asks nothing itself; only an answer
    shows as an ``--explain`` step."""

    name: Final = "cri"

    def __init__(self, cri: CriSource) -> None:
        self._cri = cri

    def find(self, container_id: str, explain: bool = False) -> tuple[Found, str | None]:
        cri = self._cri.fallback
        meta = None if cri is None else cri.cached(container_id)
        if cri is None or meta is None:
            return None, None
        return meta, f"{cri.endpoint}: cached" if explain else None


def _cri_miss(cri: CriFallback, before: dict[tuple[str, str], int]) -> str:
    """Why the CRI did not resolve an id, from the calls made since ``before``: "not found"
    only when the runtime said so (or the negative cache did), else the calls that got no
    answer."""
    after = dict(cri.calls)  # a copy: other threads count their calls meanwhile
    if after == before:  # no call made: the negative cache answered
        return f"{cri.endpoint}: not found (breaker {cri.breaker.state})"
    failed = sorted(
        f"{method} {outcome}"
        for (method, outcome), count in after.items()
        if count > before.get((method, outcome), 0) and outcome not in ("ok", "not_found")
    )
    if failed:
        return f"{cri.endpoint}: no answer ({', '.join(failed)}; breaker {cri.breaker.state})"
    return f"{cri.endpoint}: not found (breaker {cri.breaker.state})"
