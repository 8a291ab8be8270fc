"""The in-memory index: container id -> record, cgroup id -> record, and tombstones.

Lookups are single ``dict.get`` calls with no lock (atomic under the GIL); writers hold one
lock. Removed containers stay resolvable for ``grace_period`` seconds, then ``expire()``
drops them; the number of tombstones is capped so that endless churn keeps memory bounded.

Containers that are not Kubernetes ones (podman's) are kept apart, in ``standalone``: a lookup
of one ends there ("podman container, not Kubernetes") instead of reading the disk or asking the
CRI again. They have no pod, no cgroup-id mapping, no grace period and no subscriber.

Two records may claim one cgroup id (a runtime reusing a cgroup, or a forged ``cgroupsPath``):
each claim is kept, the cgroup id maps to the latest live claimant (else the latest one), and
removing either leaves the other mapped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import msgspec

from ociresolve.model import Change, ContainerMeta, IndexedContainer, StandaloneContainer

log = logging.getLogger(__name__)

Subscriber = Callable[[IndexedContainer, Change], None]
# Told that changes were dropped (how many), after every change given before the loss.
LostHandler = Callable[[int], None]

MAX_TOMBSTONES: Final = 10_000
SUBSCRIBER_QUEUE: Final = 10_000


class Index:
    def __init__(
        self,
        *,
        grace_period: float = 5.0,
        max_tombstones: int = MAX_TOMBSTONES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_period = grace_period
        self.max_tombstones = max_tombstones
        self._clock = clock
        self._lock = threading.Lock()
        # The hot paths read these two directly.
        self.meta_by_id: dict[str, ContainerMeta] = {}
        self.meta_by_cgroup: dict[int, ContainerMeta] = {}
        self._records: dict[str, IndexedContainer] = {}
        # cgroup id -> the ids of the records that claim it, in the order they first did.
        self._claims: dict[int, list[str]] = {}
        self._by_bundle: dict[str, str] = {}
        # Containers that are not Kubernetes ones, by id and by bundle.
        self.standalone: dict[str, StandaloneContainer] = {}
        self._standalone_by_bundle: dict[str, str] = {}
        self._tombstones: OrderedDict[str, float] = OrderedDict()  # id -> removal time
        # Containers of containerd < 1.6.11 lack the pod UID: their sandbox has it.
        self._waiting_for_uid: dict[str, set[str]] = {}
        self._subscribers: list[_Subscription] = []
        # Bumped on every change: a cached miss is only valid for the generation it saw.
        self.generation = 0
        # Changes some subscriber never got (its queue was full).
        self.lost_changes = 0

    # -- reads ---------------------------------------------------------------------------------

    def get(self, container_id: str) -> IndexedContainer | None:
        return self._records.get(container_id)

    def by_bundle(self, bundle: str) -> IndexedContainer | None:
        container_id = self._by_bundle.get(bundle)
        return None if container_id is None else self._records.get(container_id)

    def records(self) -> list[IndexedContainer]:
        return list(self._records.values())

    def unmapped(self) -> list[IndexedContainer]:
        """Live containers whose cgroup id is not known yet (their cgroup may not exist yet)."""
        return [r for r in list(self._records.values()) if r.cgroup_id is None and not r.removed]

    def __len__(self) -> int:
        return len(self._records)

    # -- writes --------------------------------------------------------------------------------

    def put(self, record: IndexedContainer, *, only_if_live: bool = False) -> None:
        """Add or replace a container's record (a rewritten config, a PID or cgroup learned).

        ``only_if_live``: update a live record of the same bundle, never add or revive one
        (for facts learned outside the watcher, which may race with the container's removal).
        """
        with self._lock:
            record = self._join_sandbox(record)
            container_id = record.meta.container_id
            if container_id is None:
                return
            old = self._records.get(container_id)
            if old == record:
                return
            if only_if_live and (old is None or old.removed or old.bundle != record.bundle):
                return
            self._drop_standalone(container_id)
            self._tombstones.pop(container_id, None)
            self._records[container_id] = record
            self.meta_by_id[container_id] = record.meta
            self._by_bundle[record.bundle] = container_id
            if old is not None and old.cgroup_id is not None and old.cgroup_id != record.cgroup_id:
                self._unclaim(old.cgroup_id, container_id)
            if record.cgroup_id is not None:
                self._claim(record.cgroup_id, container_id)
            joined: list[IndexedContainer] = []
            if record.meta.container_type == "sandbox" and record.meta.pod_uid:
                joined = self._give_uid(container_id, record.meta.pod_uid)
            change: Change = "added" if old is None or old.removed else "updated"
            self.generation += 1
            # Published under the lock (offers never block) so subscribers see changes in order.
            self._publish(record, change)
            for other in joined:  # its containers, which learned their pod UID from it
                self._publish(other, "updated")

    def put_standalone(self, record: StandaloneContainer) -> None:
        """Add or replace a container that is not a Kubernetes one."""
        with self._lock:
            if record.container_id in self._records:
                return  # a Kubernetes record of the same id is what the node runs
            old = self.standalone.get(record.container_id)
            if old is not None and old.bundle != record.bundle:
                self._standalone_by_bundle.pop(old.bundle, None)
            self.standalone[record.container_id] = record
            self._standalone_by_bundle[record.bundle] = record.container_id

    def remove_bundle(self, bundle: str) -> None:
        """The bundle directory went away: keep its container resolvable for the grace period."""
        with self._lock:
            standalone = self._standalone_by_bundle.pop(bundle, None)
            if standalone is not None:
                self.standalone.pop(standalone, None)
            container_id = self._by_bundle.pop(bundle, None)
            record = None if container_id is None else self._records.get(container_id)
            if record is None or record.removed or container_id is None:
                return
            record = msgspec.structs.replace(record, removed=True)
            self._records[container_id] = record
            if record.cgroup_id is not None:
                self._remap(record.cgroup_id)  # a live claimant of its cgroup, if any, wins
            self._tombstones[container_id] = self._clock()
            self._drop_excess_tombstones()
            self._publish(record, "removed")

    def remove_below(self, directory: str) -> None:
        """Every bundle below a removed directory (a namespace, a containers-storage id dir)."""
        prefix = directory.rstrip("/") + "/"
        known = [*list(self._by_bundle), *list(self._standalone_by_bundle)]
        for bundle in [b for b in known if b.startswith(prefix)]:
            self.remove_bundle(bundle)

    def bundles(self) -> set[str]:
        """The bundle directories of every record, standalone containers' included."""
        return set(self._by_bundle) | set(self._standalone_by_bundle)

    def expire(self) -> int:
        """Forget containers removed more than ``grace_period`` ago; return how many."""
        deadline = self._clock() - self.grace_period
        expired = 0
        with self._lock:
            while self._tombstones:
                container_id, removed_at = next(iter(self._tombstones.items()))
                if removed_at > deadline:
                    break
                self._forget(container_id)
                expired += 1
        return expired

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(
        self, callback: Subscriber, *, on_lost: LostHandler | None = None
    ) -> Callable[[], None]:
        """Call ``callback(record, change)`` on every change, from a thread of its own.

        A slow subscriber only fills its own bounded queue; it never stalls the watcher.
        Changes beyond the queue are dropped, counted (``lost_changes``) and logged; with
        ``on_lost``, none is accepted until the subscriber has had every change before the
        first one dropped and then ``on_lost(dropped)`` (on the same thread), which must re-sync
        from the index (``records()``). Returns a function that unsubscribes.
        """
        subscription = _Subscription(callback, on_lost)
        with self._lock:
            self._subscribers.append(subscription)

        def unsubscribe() -> None:
            with self._lock:
                if subscription in self._subscribers:
                    self._subscribers.remove(subscription)
            subscription.close()

        return unsubscribe

    def close(self) -> None:
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription.close()

    # -- internals (lock held) -----------------------------------------------------------------

    def _drop_standalone(self, container_id: str) -> None:
        old = self.standalone.pop(container_id, None)
        if old is not None:
            self._standalone_by_bundle.pop(old.bundle, None)

    def _forget(self, container_id: str) -> None:
        self._tombstones.pop(container_id, None)
        record = self._records.pop(container_id, None)
        self.meta_by_id.pop(container_id, None)
        if record is not None:
            if record.cgroup_id is not None:
                self._unclaim(record.cgroup_id, container_id)
            if self._by_bundle.get(record.bundle) == container_id:
                del self._by_bundle[record.bundle]
            sandbox_id = record.meta.sandbox_id
            waiting = self._waiting_for_uid.get(sandbox_id or "")
            if waiting is not None:
                waiting.discard(container_id)
                if not waiting:
                    del self._waiting_for_uid[sandbox_id or ""]

    def _drop_excess_tombstones(self) -> None:
        while len(self._tombstones) > self.max_tombstones:
            self._forget(next(iter(self._tombstones)))

    def _join_sandbox(self, record: IndexedContainer) -> IndexedContainer:
        meta = record.meta
        if meta.pod_uid or meta.container_type != "container" or not meta.sandbox_id:
            return record
        sandbox = self.meta_by_id.get(meta.sandbox_id)
        if sandbox is not None and sandbox.pod_uid:
            return msgspec.structs.replace(
                record, meta=msgspec.structs.replace(meta, pod_uid=sandbox.pod_uid)
            )
        if meta.container_id:
            self._waiting_for_uid.setdefault(meta.sandbox_id, set()).add(meta.container_id)
        return record

    def _give_uid(self, sandbox_id: str, uid: str) -> list[IndexedContainer]:
        joined: list[IndexedContainer] = []
        for container_id in self._waiting_for_uid.pop(sandbox_id, ()):
            record = self._records.get(container_id)
            if record is None or record.meta.pod_uid:
                continue
            meta = msgspec.structs.replace(record.meta, pod_uid=uid)
            record = msgspec.structs.replace(record, meta=meta)
            self._records[container_id] = record
            self.meta_by_id[container_id] = meta
            if record.cgroup_id is not None:
                self._remap(record.cgroup_id)
            joined.append(record)
        return joined

    def _claim(self, cgroup_id: int, container_id: str) -> None:
        claims = self._claims.setdefault(cgroup_id, [])
        if container_id not in claims:
            claims.append(container_id)
        self._remap(cgroup_id)

    def _unclaim(self, cgroup_id: int, container_id: str) -> None:
        claims = self._claims.get(cgroup_id)
        if claims is not None and container_id in claims:
            claims.remove(container_id)
        self._remap(cgroup_id)

    def _remap(self, cgroup_id: int) -> None:
        """Map ``cgroup_id`` to its latest live claimant, else its latest one, else nothing."""
        claims = [r for r in map(self._records.get, self._claims.get(cgroup_id, ())) if r]
        if not claims:
            self._claims.pop(cgroup_id, None)
            self.meta_by_cgroup.pop(cgroup_id, None)
            return
        live = [r for r in claims if not r.removed]
        self.meta_by_cgroup[cgroup_id] = (live or claims)[-1].meta

    def _publish(self, record: IndexedContainer, change: Change) -> None:
        for subscription in self._subscribers:
            if not subscription.offer(record, change):
                self.lost_changes += 1


class _Subscription:
    def __init__(self, callback: Subscriber, on_lost: LostHandler | None = None) -> None:
        self._callback = callback
        self._on_lost = on_lost
        self._queue: queue.Queue[tuple[IndexedContainer, Change] | None] = queue.Queue(
            SUBSCRIBER_QUEUE
        )
        self.dropped = 0
        # With ``on_lost``: changes were dropped, and the subscriber has not been told yet.
        self._lost = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ociresolve-subscriber", daemon=True)
        self._thread.start()

    def offer(self, record: IndexedContainer, change: Change) -> bool:
        """Queue a change (called with the index's lock held); ``False``: dropped."""
        if not self._lost:
            try:
                self._queue.put_nowait((record, change))
                return True
            except queue.Full:
                pass
        self.dropped += 1
        if self._on_lost is not None:
            self._lost += 1  # nothing more is queued until the subscriber is told
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("slow subscriber %r: %d changes dropped", self._callback, self.dropped)
        return False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes the thread; a full queue is drained instead
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._closed:
            item = self._queue.get()
            if item is None:
                break
            try:
                self._callback(*item)
            except Exception:
                log.exception("subscriber %r failed", self._callback)
            if self._lost and self._queue.empty():
                self._tell_lost()

    def _tell_lost(self) -> None:
        """Every change queued before the loss has been handed over: say how many were dropped.
        Changes are queued again from now on (those after the re-sync the subscriber starts)."""
        dropped, self._lost = self._lost, 0
        assert self._on_lost is not None
        try:
            self._on_lost(dropped)
        except Exception:
            log.exception("subscriber %r failed to re-sync", self._callback)
