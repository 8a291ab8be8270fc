"""Resolver: PID, cgroup id or container id -> ContainerMeta, from the live index first.

A container id is looked up in a chain of sources (``ociresolve.sources``): the in-memory
index (kept current by the inotify watcher); what the CRI answered before; the container's
bundle on disk, read synchronously on a miss (which closes any race with the watcher); the
runtime's CRI API, with a deadline, a circuit breaker and caches (``ociresolve.cri``). The
first answer wins and says which source gave it; ``explain_pid`` is the same walk, timed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from ociresolve.cri.client import DEFAULT_TIMEOUT, CriClient
from ociresolve.cri.fallback import CriFallback, Observer
from ociresolve.entries import with_cgroup_id
from ociresolve.hostpaths import HostPaths
from ociresolve.ids import is_runtime_id
from ociresolve.index import Index, LostHandler, Subscriber
from ociresolve.model import (
    CgroupRef,
    ContainerMeta,
    Explanation,
    IndexedContainer,
    Resolution,
    StandaloneContainer,
    Step,
)
from ociresolve.proc import read_cgroup
from ociresolve.sources import BundleSource, CriCacheSource, CriSource, IndexSource, Source
from ociresolve.watcher import Watcher

_UNKNOWN_CGROUPS = 4096


class Resolver:
    """Who a PID, a cgroup id or a container id belongs to, from the node alone.

    ``start()`` scans the runtime roots and keeps the index current with inotify from a
    background thread; without it every lookup reads the bundle from disk (one-shot use).
    Lookups are thread-safe and never wait for the watcher. Use as a context manager.

    ``cri``: resolve what neither the index nor a bundle knows over CRI (``cri_socket``, a host
    path, or the first of the default sockets that exists), each call with ``cri_timeout``;
    ``cri_client`` replaces the gRPC client (tests inject faults with it); ``cri_observer`` is
    called with (method, outcome, seconds) after every CRI call (metrics).

    ``sources`` is the chain a container id is looked up in, in order; assign a new chain to
    add a source. ``close()`` closes the sources the resolver made; one added to the chain is
    its owner's to close.
    """

    def __init__(
        self,
        *,
        host_root: str = "/",
        runtime_roots: Sequence[str] | None = None,
        grace_period: float = 5.0,
        cri: bool = True,
        cri_socket: str | None = None,
        cri_timeout: float = DEFAULT_TIMEOUT,
        cri_client: CriClient | None = None,
        cri_observer: Observer | None = None,
    ) -> None:
        self.paths = HostPaths(host_root, runtime_roots)
        self.index = Index(grace_period=grace_period)
        self._watcher: Watcher | None = None
        self._cri = CriSource(
            self.paths,
            enabled=cri,
            socket=cri_socket,
            timeout=cri_timeout,
            client=cri_client,
            observer=cri_observer,
        )
        self._index_source = IndexSource(self.index)
        self.sources = (
            self._index_source,
            CriCacheSource(self._cri),
            BundleSource(self.paths, self.index, watching=lambda: self._watcher is not None),
            self._cri,
        )
        self._by_id = self.index.meta_by_id
        self._by_cgroup = self.index.meta_by_cgroup
        self._lock = threading.Lock()
        self._unknown_cgroups: dict[int, int] = {}  # cgroup id -> index generation when it missed

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Resolver:
        """Index every bundle on disk, then follow changes. Returns when the index is full.

        Raises ``InotifyLimitReached`` when this user has no inotify instance left (sysctl
        ``fs.inotify.max_user_instances``). Directories that cannot be watched (no watch left,
        ``fs.inotify.max_user_watches``) are indexed anyway and rescanned until they can be:
        ``watcher.degraded`` says so meanwhile.
        """
        with self._lock:
            if self._watcher is None:
                watcher = Watcher(self.paths, self.index, tick=min(0.5, self.index.grace_period))
                try:
                    watcher.start()
                except BaseException:
                    watcher.close()
                    raise
                self._watcher = watcher
        return self

    def scan(self) -> Resolver:
        """Index every bundle on disk once, without watching (one-shot commands)."""
        Watcher(self.paths, self.index).scan()
        return self

    def close(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        self._cri.close()
        self.index.close()

    def __enter__(self) -> Resolver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def sources(self) -> tuple[Source, ...]:
        """The chain a container id is looked up in, in order (assign a new one to change it)."""
        return self._sources

    @sources.setter
    def sources(self, chain: Sequence[Source]) -> None:
        self._sources = tuple(chain)
        # When the index leads, every caller of an untimed walk looked up its Kubernetes
        # records first: the walk starts with the rest of it, the containers that are not.
        path = [(source.find, source.name) for source in chain]
        if chain and chain[0] is self._index_source:
            path[0] = (self._index_source.find_standalone, self._index_source.name)
        self._miss_path = tuple(path)

    @property
    def watcher(self) -> Watcher | None:
        return self._watcher

    @property
    def cri(self) -> CriFallback | None:
        """The CRI fallback, once a miss has needed it (``None`` before, or when off)."""
        return self._cri.fallback

    @property
    def cri_enabled(self) -> bool:
        """Whether a miss may be asked of the CRI (``cri``)."""
        return self._cri.enabled

    # -- lookups -------------------------------------------------------------------------------
    # Each ``lookup_*`` is its ``resolve_*`` without the source, with the index hit inline: it
    # is a tracer's hot path (a dict get), the chain is walked only on a miss.

    def lookup_cgroup_id(self, cgroup_id: int) -> ContainerMeta | None:
        """The container whose cgroup v2 directory has this inode (BPF's cgroup id)."""
        return self._by_cgroup.get(cgroup_id) or self._cgroup_miss(cgroup_id)

    def lookup_pid(self, pid: int) -> ContainerMeta | None:
        """The container process ``pid`` runs in, from its live cgroup; ``None`` on the host.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        ref = read_cgroup(self.paths, pid)
        if ref is None:
            return None
        return self._by_id.get(ref.container_id) or _meta(self._walk(ref.container_id, None))

    def lookup_container(self, container_id: str) -> ContainerMeta | None:
        """The container of a full runtime id (64 lower-case hex digits); anything else is a
        miss, never looked for on disk or asked of the CRI."""
        meta = self._by_id.get(container_id)
        if meta is not None or not is_runtime_id(container_id):
            return meta
        return _meta(self._walk(container_id, None))

    def resolve_container(self, container_id: str) -> Resolution | None:
        """``lookup_container`` that also says where the answer came from."""
        meta = self._by_id.get(container_id)
        if meta is not None:
            return Resolution(meta=meta, source="index")
        if not is_runtime_id(container_id):
            return None
        return _resolution(self._walk(container_id, None))

    def resolve_pid(self, pid: int) -> Resolution | None:
        """``lookup_pid`` that also says where the answer came from."""
        ref = read_cgroup(self.paths, pid)
        return None if ref is None else self.resolve_container(ref.container_id)

    def explain_pid(self, pid: int) -> Explanation:
        """Resolve ``pid`` and say what was tried, step by step, with timings.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        started = time.perf_counter()
        ref = read_cgroup(self.paths, pid)
        what = "host (no container in its cgroup)" if ref is None else ref.container_id
        steps = [Step.since("cgroup", what, started)]
        if ref is None:
            return Explanation(pid=pid, container_id=None, resolution=None, steps=steps)
        found = self._walk(ref.container_id, steps)
        return Explanation(
            pid=pid,
            container_id=ref.container_id,
            resolution=_resolution(found),
            steps=steps,
            standalone=found if isinstance(found, StandaloneContainer) else None,
        )

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None:
        """The pod's labels, asked of the CRI (once per sandbox) only when a caller wants them."""
        cri = self._cri.connect()
        return None if cri is None else cri.pod_labels(sandbox_id)

    def container(self, container_id: str) -> IndexedContainer | None:
        """The index's full record (bundle, init PID, cgroup id) of a container."""
        return self.index.get(container_id)

    def containers(self) -> list[IndexedContainer]:
        """Every container in the index, those in their grace period included."""
        return self.index.records()

    def subscribe(
        self, callback: Subscriber, *, on_lost: LostHandler | None = None
    ) -> Callable[[], None]:
        """``callback(record, change)`` for every added, updated and removed container; and
        ``on_lost(dropped)`` when changes were dropped for a subscriber that fell behind (see
        ``Index.subscribe``): re-sync from ``containers()`` then."""
        return self.index.subscribe(callback, on_lost=on_lost)

    def cgroup_of(self, pid: int) -> CgroupRef | None:
        """What the live cgroup of ``pid`` says: its container id, or ``None`` on the host.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        return read_cgroup(self.paths, pid)

    # -- misses --------------------------------------------------------------------------------

    def _walk(
        self, container_id: str, steps: list[Step] | None
    ) -> Resolution | StandaloneContainer | None:
        """Ask each source in turn; the first answer wins: a Kubernetes container, or one that
        is not (a podman container), which nobody would know otherwise. With ``steps``, each
        source that tried something adds its step, timed (``explain_pid``): the walk is the
        same."""
        if steps is None:
            for find, name in self._miss_path:
                found = find(container_id)[0]
                if found is None:
                    continue
                if isinstance(found, ContainerMeta):
                    return Resolution(meta=found, source=name)
                return found
            return None
        for source in self._sources:
            started = time.perf_counter()
            found, note = source.find(container_id, explain=True)
            if note is not None:
                steps.append(Step.since(source.name, note, started))
            if found is None:
                continue
            if isinstance(found, ContainerMeta):
                return Resolution(meta=found, source=source.name)
            return found
        return None

    def _cgroup_miss(self, cgroup_id: int) -> ContainerMeta | None:
        """Check the containers whose cgroup did not exist when they were indexed.

        Host cgroups miss on every event: after one check, a cgroup id is not checked again
        until the index has changed.
        """
        generation = self.index.generation
        if self._unknown_cgroups.get(cgroup_id) == generation:
            return None
        for record in self.index.unmapped():
            mapped = with_cgroup_id(self.paths, record)
            if mapped.cgroup_id is not None:
                self.index.put(mapped, only_if_live=True)
                if mapped.cgroup_id == cgroup_id:
                    return mapped.meta
        if len(self._unknown_cgroups) > _UNKNOWN_CGROUPS:
            self._unknown_cgroups.clear()
        self._unknown_cgroups[cgroup_id] = self.index.generation
        return None


def _meta(found: Resolution | StandaloneContainer | None) -> ContainerMeta | None:
    return found.meta if isinstance(found, Resolution) else None


def _resolution(found: Resolution | StandaloneContainer | None) -> Resolution | None:
    return found if isinstance(found, Resolution) else None
