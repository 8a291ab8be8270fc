"""``RemoteResolver``: the node daemon's index, mirrored in this process through ``Watch``.

For tracers in their own processes: one daemon watches the node and talks to the CRI, and
each tracer keeps a local copy of its index, so that an event's lookup is a dict hit here,
not a round trip. What the copy does not hold is asked of the daemon (one ``Lookup`` with a
deadline); an id that missed is not asked again until the copy changes.

If the daemon restarts, the copy is kept and the watch resumes, with a backoff, replacing the
copy with the daemon's new current set once it is synced. If the daemon ends the stream because
changes could not be delivered (this copy, or the daemon's own feed, fell behind), the copy is
re-synced the same way at once, and counted in ``fell_behind``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from types import TracebackType
from typing import Final

from ociresolve.api.client import DaemonClient, Key, LookupResult, Watch, WatchLost
from ociresolve.errors import DaemonUnavailable, OciresolveError
from ociresolve.hostpaths import HostPaths
from ociresolve.model import CgroupRef, ContainerMeta, IndexedContainer, Resolution, Source
from ociresolve.proc import read_cgroup

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 0.25
_BACKOFF: Final = (0.1, 2.0)
_MISSES: Final = 4096


class RemoteResolver:
    """Lookups answered by the daemon on ``socket`` (default: ``$OCIRESOLVE_SOCKET``).

    ``start()`` waits up to ``sync_timeout`` seconds for the daemon's current set and raises
    ``DaemonUnavailable`` if it does not come; afterwards a daemon that goes away is waited
    for in the background. ``host_root`` is where this process sees the host's ``/proc``.
    Removed containers stay resolvable for ``grace_period`` seconds, as in the daemon.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        host_root: str = "/",
        grace_period: float = 5.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.client = DaemonClient(socket, timeout=timeout)
        self.grace_period = grace_period
        self._paths = HostPaths(host_root, runtime_roots=())  # only /proc is read here
        self._records: dict[str, IndexedContainer] = {}
        self._by_cgroup: dict[int, ContainerMeta] = {}
        self._removed: deque[tuple[float, str]] = deque()
        self._misses: dict[int | str, int] = {}  # key -> generation when it missed
        self.generation = 0
        self.synced = threading.Event()
        self.resyncs = 0
        self.fell_behind = 0  # streams the daemon ended for changes it could not deliver
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, sync_timeout: float = 5.0) -> RemoteResolver:
        self._thread = threading.Thread(target=self._run, name="ociresolve-mirror", daemon=True)
        self._thread.start()
        if not self.synced.wait(sync_timeout):
            self.close()
            raise DaemonUnavailable(self.client.socket, f"no current set within {sync_timeout} s")
        return self

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self.client.close()

    def __enter__(self) -> RemoteResolver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- lookups (the tracer's ``Resolving``) -----------------------------------------------------

    def lookup_cgroup_id(self, cgroup_id: int) -> ContainerMeta | None:
        meta = self._by_cgroup.get(cgroup_id)
        if meta is not None:
            return meta
        result = self._ask(cgroup_id, ("cgroup_id", cgroup_id))
        return None if result is None or result.record is None else result.record.meta

    def lookup_container(self, container_id: str) -> ContainerMeta | None:
        resolution = self.resolve_container(container_id)
        return None if resolution is None else resolution.meta

    def resolve_container(self, container_id: str) -> Resolution | None:
        record = self._records.get(container_id)
        if record is not None:
            return Resolution(meta=record.meta, source="index")
        result = self._ask(container_id, ("container_id", container_id))
        if result is None or result.record is None:
            return None
        return Resolution(meta=result.record.meta, source=_source(result.source))

    def lookup_pid(self, pid: int) -> ContainerMeta | None:
        resolution = self.resolve_pid(pid)
        return None if resolution is None else resolution.meta

    def resolve_pid(self, pid: int) -> Resolution | None:
        """From the process's live cgroup (read here), then the copy, then the daemon.

        Raises ``ProcessNotFound`` when there is no such process.
        """
        ref = self.cgroup_of(pid)
        return None if ref is None else self.resolve_container(ref.container_id)

    def cgroup_of(self, pid: int) -> CgroupRef | None:
        """What the live cgroup of ``pid`` says (read here, not asked of the daemon).

        Raises ``ProcessNotFound`` when there is no such process.
        """
        return read_cgroup(self._paths, pid)

    def container(self, container_id: str) -> IndexedContainer | None:
        return self._records.get(container_id)

    def containers(self) -> list[IndexedContainer]:
        return list(self._records.values())

    # -- misses --------------------------------------------------------------------------------

    def _ask(self, key: int | str, lookup: Key) -> LookupResult | None:
        """The daemon's answer for what the copy does not hold; ``None`` without asking when
        the same key missed and the copy has not changed since."""
        generation = self.generation
        if self._misses.get(key) == generation:
            return None
        try:
            result = self.client.lookup(lookup)
        except OciresolveError as exc:
            log.debug("daemon lookup %s: %s", lookup, exc)
            return None
        if result.record is None:
            if len(self._misses) >= _MISSES:
                self._misses.clear()
            self._misses[key] = generation
        return result

    # -- the copy ------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF[0]
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = _BACKOFF[0]
            except DaemonUnavailable as exc:
                log.info("daemon: %s; watching again in %.1f s", exc.reason, backoff)
            except Exception:
                log.exception("daemon watch failed")
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF[1])

    def _follow(self) -> None:
        watch = self.client.watch()
        with self._lock:
            if self._stop.is_set():
                watch.cancel()
                return
            self._watch = watch
        fresh: dict[str, IndexedContainer] | None = {}
        try:
            for kind, record in watch:
                if fresh is not None:  # the current set, until `synced`
                    if record is not None and record.meta.container_id:
                        fresh[record.meta.container_id] = record
                    if kind == "synced":
                        self._replace(fresh)
                        fresh = None
                    continue
                if record is not None:
                    self._apply(record, removed=kind == "removed")
        except WatchLost as exc:
            if fresh is not None:
                raise  # refused before the current set (too many watchers): back off
            self.fell_behind += 1
            log.warning("daemon: %s; re-syncing", exc.reason)

    def _replace(self, records: dict[str, IndexedContainer]) -> None:
        now = time.monotonic()
        self._records = records
        self._by_cgroup = {r.cgroup_id: r.meta for r in records.values() if r.cgroup_id is not None}
        self._removed = deque((now + self.grace_period, i) for i, r in records.items() if r.removed)
        self.generation += 1
        if self.synced.is_set():
            self.resyncs += 1
        self.synced.set()

    def _apply(self, record: IndexedContainer, *, removed: bool) -> None:
        container_id = record.meta.container_id
        if not container_id:
            return
        now = time.monotonic()
        self._records[container_id] = record
        if record.cgroup_id is not None:
            self._by_cgroup[record.cgroup_id] = record.meta
        if removed:
            self._removed.append((now + self.grace_period, container_id))
        while self._removed and self._removed[0][0] <= now:
            _, gone = self._removed.popleft()
            old = self._records.get(gone)
            if old is not None and old.removed:
                del self._records[gone]
                if old.cgroup_id is not None:
                    self._by_cgroup.pop(old.cgroup_id, None)
        self.generation += 1


def _source(source: str | None) -> Source:
    if source == "bundle":
        return "bundle"
    return "cri" if source == "cri" else "index"
