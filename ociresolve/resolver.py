"""Resolver: PID, cgroup id or container id -> ContainerMeta, from the live index first.

Order: the in-memory index (kept current by the inotify watcher), then the container's bundle
on disk, read synchronously on a miss (which closes any race with the watcher), then the
runtime's CRI API, with a deadline, a circuit breaker and caches (``ociresolve.cri``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType

from ociresolve.cgroup import parse_cgroup
from ociresolve.cri.client import DEFAULT_TIMEOUT, CriClient, GrpcCriClient
from ociresolve.cri.fallback import CriFallback, Observer
from ociresolve.entries import read_entry, with_cgroup_id
from ociresolve.errors import BundleError, OciresolveError, ProcessNotFound
from ociresolve.hostpaths import HostPaths
from ociresolve.index import Index, Subscriber
from ociresolve.model import (
    CgroupRef,
    ContainerMeta,
    Explanation,
    IndexedContainer,
    Resolution,
    Step,
)
from ociresolve.watcher import Watcher

# /proc/<pid>/cgroup is a few hundred bytes; a v1 host with many hierarchies stays under this.
_CGROUP_FILE_MAX = 16384
# While no CRI socket exists, look for one again at most this often.
_SOCKET_RECHECK = 5.0
# With the watcher running, a container id not found on disk is not looked for again so soon
# (the watcher indexes it if its bundle appears).
_DISK_MISS_TTL = 1.0
_DISK_MISSES = 4096


class Resolver:
    """Who a PID, a cgroup id or a container id belongs to, from the node alone.

    ``start()`` scans the runtime roots and keeps the index current with inotify from a
    background thread; without it every lookup reads the bundle from disk (one-shot use).
    Lookups are thread-safe and never wait for the watcher. Use as a context manager.

    ``cri``: resolve what neither the index nor a bundle knows over CRI (``cri_socket``, a host
    path, or the first of the default sockets that exists), each call with ``cri_timeout``;
    ``cri_client`` replaces the gRPC client (tests inject faults with it); ``cri_observer`` is
    called with (method, outcome, seconds) after every CRI call (metrics).
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
        self.cri_enabled = cri
        self._cri_socket = cri_socket
        self._cri_timeout = cri_timeout
        self._cri_observer = cri_observer
        self._cri: CriFallback | None = (
            CriFallback(cri_client, observer=cri_observer) if cri_client and cri else None
        )
        self._cri_checked_at = -_SOCKET_RECHECK
        self._closed = False
        self._disk_misses: dict[str, float] = {}  # container id -> perf_counter() expiry
        self.index = Index(grace_period=grace_period)
        self._watcher: Watcher | None = None
        self._by_id = self.index.meta_by_id
        self._by_cgroup = self.index.meta_by_cgroup
        self._proc_cgroup = self.paths.proc_cgroup(0)[: -len("0/cgroup")] + "%d/cgroup"
        self._lock = threading.Lock()
        self._unknown_cgroups: dict[int, int] = {}  # cgroup id -> index size when it missed

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Resolver:
        """Index every bundle on disk, then follow changes. Returns when the index is full."""
        with self._lock:
            if self._watcher is None:
                watcher = Watcher(self.paths, self.index, tick=min(0.5, self.index.grace_period))
                watcher.start()
                self._watcher = watcher
        return self

    def scan(self) -> Resolver:
        """Index every bundle on disk once, without watching (one-shot commands)."""
        Watcher(self.paths, self.index).scan()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watcher, self._watcher = self._watcher, None
            cri, self._cri = self._cri, None
        if watcher is not None:
            watcher.close()
        if cri is not None:
            cri.close()
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
    def watcher(self) -> Watcher | None:
        return self._watcher

    @property
    def cri(self) -> CriFallback | None:
        """The CRI fallback, once a miss has needed it (``None`` before, or when off)."""
        return self._cri

    # -- lookups -------------------------------------------------------------------------------

    def lookup_cgroup_id(self, cgroup_id: int) -> ContainerMeta | None:
        """The container whose cgroup v2 directory has this inode (BPF's cgroup id)."""
        return self._by_cgroup.get(cgroup_id) or self._cgroup_miss(cgroup_id)

    def lookup_pid(self, pid: int) -> ContainerMeta | None:
        """The container process ``pid`` runs in, from its live cgroup; ``None`` on the host.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        ref = self.cgroup_of(pid)
        if ref is None:
            return None
        return self._by_id.get(ref.container_id) or self._container_miss(ref.container_id)

    def lookup_container(self, container_id: str) -> ContainerMeta | None:
        return self._by_id.get(container_id) or self._container_miss(container_id)

    def resolve_container(self, container_id: str) -> Resolution | None:
        """``lookup_container`` that also says where the answer came from."""
        meta = self._by_id.get(container_id)
        if meta is not None:
            return Resolution(meta=meta, source="index")
        return self._miss(container_id, None)

    def resolve_pid(self, pid: int) -> Resolution | None:
        """``lookup_pid`` that also says where the answer came from."""
        ref = self.cgroup_of(pid)
        if ref is None:
            return None
        meta = self._by_id.get(ref.container_id)
        if meta is not None:
            return Resolution(meta=meta, source="index")
        return self._miss(ref.container_id, None)

    def explain_pid(self, pid: int) -> Explanation:
        """Resolve ``pid`` and say what was tried, step by step, with timings.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        steps: list[Step] = []
        started = time.perf_counter()
        ref = self.cgroup_of(pid)
        found = "host (no container in its cgroup)" if ref is None else ref.container_id
        steps.append(_step("cgroup", found, started))
        if ref is None:
            return Explanation(pid=pid, container_id=None, resolution=None, steps=steps)
        started = time.perf_counter()
        meta = self._by_id.get(ref.container_id)
        steps.append(_step("index", "hit" if meta else "miss", started))
        resolution = (
            Resolution(meta=meta, source="index")
            if meta is not None
            else self._miss(ref.container_id, steps)
        )
        return Explanation(
            pid=pid, container_id=ref.container_id, resolution=resolution, steps=steps
        )

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None:
        """The pod's labels, asked of the CRI (once per sandbox) only when a caller wants them."""
        cri = self._cri_fallback()
        return None if cri is None else cri.pod_labels(sandbox_id)

    def container(self, container_id: str) -> IndexedContainer | None:
        """The index's full record (bundle, init PID, cgroup id) of a container."""
        return self.index.get(container_id)

    def containers(self) -> list[IndexedContainer]:
        """Every container in the index, those in their grace period included."""
        return self.index.records()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """``callback(record, change)`` for every added, updated and removed container."""
        return self.index.subscribe(callback)

    # -- the live cgroup, and misses ------------------------------------------------------------

    def cgroup_of(self, pid: int) -> CgroupRef | None:
        """What the live cgroup of ``pid`` says: its container id, or ``None`` on the host.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        path = self._proc_cgroup % pid
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessNotFound(pid) from None
        except OSError as exc:
            raise OciresolveError(f"pid {pid}: cannot read {path}: {exc.strerror}") from exc
        try:
            data = os.read(fd, _CGROUP_FILE_MAX)
        except ProcessLookupError:  # ESRCH: exited between open and read
            raise ProcessNotFound(pid) from None
        finally:
            os.close(fd)
        return parse_cgroup(data.decode(errors="replace"))

    def _container_miss(self, container_id: str) -> ContainerMeta | None:
        resolution = self._miss(container_id, None)
        return None if resolution is None else resolution.meta

    def _miss(self, container_id: str, steps: list[Step] | None) -> Resolution | None:
        """Not indexed (yet): read the container's bundle from disk and index it; failing
        that, ask the runtime over CRI."""
        started = time.perf_counter()
        cri = self._cri
        if cri is not None and (known := cri.cached(container_id)) is not None:
            # The CRI named it before: no disk to look at again.
            if steps is not None:
                steps.append(_step("cri", f"{cri.endpoint}: cached", started))
            return Resolution(meta=known, source="cri")
        if self._watcher is not None and self._disk_misses.get(container_id, 0.0) > started:
            # Looked for on disk a moment ago, and the watcher has not seen it since.
            if steps is not None:
                steps.append(_step("bundle", "none (looked for less than 1 s ago)", started))
        else:
            resolution = self._read_bundle_of(container_id, steps, started)
            if resolution is not None:
                return resolution
        started = time.perf_counter()
        cri = self._cri_fallback()
        if cri is None:
            if steps is not None:
                why = "off" if not self.cri_enabled else "no CRI socket found"
                steps.append(_step("cri", why, started))
            return None
        calls = cri.calls.copy() if steps is not None else None
        meta = cri.resolve(container_id)
        if steps is not None and calls is not None:
            result = "found" if meta else _cri_miss(cri.calls - calls, cri.breaker.state)
            steps.append(_step("cri", f"{cri.endpoint}: {result}", started))
        return None if meta is None else Resolution(meta=meta, source="cri")

    def _read_bundle_of(
        self, container_id: str, steps: list[Step] | None, started: float
    ) -> Resolution | None:
        for bundle, layout in self.paths.bundle_candidates(container_id):
            try:
                record = read_entry(self.paths, bundle, layout)
            except BundleError:
                continue
            if record is not None:
                self.index.put(record)
                if not os.path.isdir(bundle):
                    # Removed while we read it, maybe before the watcher knew of it: no ghost.
                    self.index.remove_bundle(bundle)
                if steps is not None:
                    steps.append(_step("bundle", bundle, started))
                return Resolution(meta=record.meta, source="bundle")
        if steps is not None:
            steps.append(_step("bundle", "none under the runtime roots", started))
        # A storm of events from a container no runtime root holds costs one look per second.
        if len(self._disk_misses) >= _DISK_MISSES:
            self._disk_misses.clear()
        self._disk_misses[container_id] = time.perf_counter() + _DISK_MISS_TTL
        return None

    def _cri_fallback(self) -> CriFallback | None:
        if self._cri is not None or not self.cri_enabled or self._closed:
            return self._cri
        now = time.monotonic()
        with self._lock:
            if self._cri is None and now - self._cri_checked_at >= _SOCKET_RECHECK:
                self._cri_checked_at = now
                socket = self.paths.cri_socket(self._cri_socket)
                if socket is not None:
                    client = GrpcCriClient(socket, timeout=self._cri_timeout)
                    self._cri = CriFallback(client, observer=self._cri_observer)
            return self._cri

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
        if len(self._unknown_cgroups) > 4096:
            self._unknown_cgroups.clear()
        self._unknown_cgroups[cgroup_id] = self.index.generation
        return None


def _cri_miss(calls: Counter[tuple[str, str]], breaker: str) -> str:
    """Why the CRI did not resolve an id, from the calls made meanwhile: "not found" only when
    the runtime said so (or the negative cache did), else the calls that got no answer."""
    failed = sorted(
        f"{method} {outcome}" for method, outcome in calls if outcome not in ("ok", "not_found")
    )
    if failed:
        return f"no answer ({', '.join(failed)}; breaker {breaker})"
    return f"not found (breaker {breaker})"


def _step(step: str, result: str, started: float) -> Step:
    return Step(step=step, result=result, seconds=time.perf_counter() - started)
