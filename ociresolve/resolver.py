"""Resolver: PID, cgroup id or container id -> ContainerMeta, from the live index first.

Order: the in-memory index (kept current by the inotify watcher), then the container's bundle
on disk, read synchronously on a miss (which closes any race with the watcher).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

from ociresolve.cgroup import parse_cgroup
from ociresolve.entries import read_entry, with_cgroup_id
from ociresolve.errors import BundleError, OciresolveError, ProcessNotFound
from ociresolve.hostpaths import HostPaths
from ociresolve.index import Index, Subscriber
from ociresolve.model import CgroupRef, ContainerMeta, IndexedContainer, Resolution
from ociresolve.watcher import Watcher

# /proc/<pid>/cgroup is a few hundred bytes; a v1 host with many hierarchies stays under this.
_CGROUP_FILE_MAX = 16384


class Resolver:
    """Who a PID, a cgroup id or a container id belongs to, from the node alone.

    ``start()`` scans the runtime roots and keeps the index current with inotify from a
    background thread; without it every lookup reads the bundle from disk (one-shot use).
    Lookups are thread-safe and never wait for the watcher. Use as a context manager.
    """

    def __init__(
        self,
        *,
        host_root: str = "/",
        runtime_roots: Sequence[str] | None = None,
        grace_period: float = 5.0,
    ) -> None:
        self.paths = HostPaths(host_root, runtime_roots)
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
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
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

    def resolve_pid(self, pid: int) -> Resolution | None:
        """``lookup_pid`` that also says where the answer came from."""
        ref = self.cgroup_of(pid)
        if ref is None:
            return None
        meta = self._by_id.get(ref.container_id)
        if meta is not None:
            return Resolution(meta=meta, source="index")
        meta = self._container_miss(ref.container_id)
        return None if meta is None else Resolution(meta=meta, source="bundle")

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
        """Not indexed (yet): read the container's bundle from disk and index it."""
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
                return record.meta
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
        if len(self._unknown_cgroups) > 4096:
            self._unknown_cgroups.clear()
        self._unknown_cgroups[cgroup_id] = self.index.generation
        return None
