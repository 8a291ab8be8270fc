"""The ``ociresolve.v1.Resolver`` service: lookups, the container list and watch streams.

It runs on the API server's event loop. A lookup the index answers is served on the loop (a
dict hit, or a ``/proc/<pid>/cgroup`` read for a PID); a miss, which may read a bundle or ask
the CRI (each call with its deadline), runs on a small thread pool of the service's own so
that it never holds up other clients, and more than ``max_in_flight`` misses waiting for it are
refused with RESOURCE_EXHAUSTED, not queued. Watch streams share one subscription to the index;
each has a bounded queue, and a client that does not keep up has its stream ended, never the
daemon's memory grown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import grpc

from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.api.convert import meta_message, to_message
from ociresolve.errors import OciresolveError, ProcessNotFound
from ociresolve.model import Change, IndexedContainer, Resolution
from ociresolve.resolver import Resolver

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_A = TypeVar("_A")
_T = TypeVar("_T")
Response = api_pb2.LookupResponse

MAX_BATCH: Final = 4096
MAX_IN_FLIGHT: Final = 1024
MISS_WORKERS: Final = 4
MAX_WATCHERS: Final = 256
WATCH_QUEUE: Final = 10_000

_KINDS: Final[dict[Change, api_pb2.WatchEvent.Kind.ValueType]] = {
    "added": api_pb2.WatchEvent.ADDED,
    "updated": api_pb2.WatchEvent.UPDATED,
    "removed": api_pb2.WatchEvent.REMOVED,
}
_RESULTS: Final[dict[api_pb2.LookupResponse.Status.ValueType, str]] = {
    Response.FOUND: "found",
    Response.HOST: "host",
    Response.NOT_FOUND: "not_found",
    Response.NO_SUCH_PROCESS: "no_such_process",
    Response.ERROR: "error",
}


class _Busy(Exception):
    """Too many lookups wait for the thread pool: refuse, do not queue."""


class _Stream:
    """One watch stream's queue, filled on the loop by the fan-out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: collections.deque[api_pb2.WatchEvent] = collections.deque()
        self.ready = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def offer(self, event: api_pb2.WatchEvent) -> None:
        if len(self.events) >= self.limit:
            self.overflowed = True
        else:
            self.events.append(event)
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class ResolverService(api_pb2_grpc.ResolverServicer):
    """The API over a started ``Resolver``, a ``Service`` of ``ApiServer`` (which registers,
    attaches, detaches and closes it). Misses are looked up on a pool of ``workers`` threads,
    started by the first miss."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        workers: int = MISS_WORKERS,
        max_watchers: int = MAX_WATCHERS,
        watch_queue: int = WATCH_QUEUE,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.resolver = resolver
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="ociresolve-miss")
        self.max_watchers = max_watchers
        self.watch_queue = watch_queue
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # misses being looked up off the loop
        self.refused = 0
        # (source, result) -> lookups answered; source is "none" when nothing was found.
        self.lookups: collections.Counter[tuple[str, str]] = collections.Counter()
        self.watch_overflows = 0
        self._streams: set[_Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def watchers(self) -> int:
        return len(self._streams)

    def register(self, server: grpc.aio.Server) -> None:
        api_pb2_grpc.add_ResolverServicer_to_server(self, server)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to the index once; changes reach the streams on ``loop``."""
        self._loop = loop
        self._unsubscribe = self.resolver.subscribe(self._on_change)

    def detach(self) -> None:
        """End every watch stream (on the loop): the daemon is stopping."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for stream in list(self._streams):
            stream.close()

    def close(self) -> None:
        """Drop the misses still waiting for the pool: the server has stopped."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- lookups -------------------------------------------------------------------------------

    async def Lookup(self, request: api_pb2.LookupRequest, context: Context) -> Response:
        try:
            return self._count(await self._lookup(request))
        except _Busy as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise  # not reached: abort raises

    async def LookupBatch(
        self, request: api_pb2.LookupBatchRequest, context: Context
    ) -> api_pb2.LookupBatchResponse:
        if len(request.lookups) > MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.lookups)} lookups in one batch; at most {MAX_BATCH}",
            )
        try:
            results = [self._count(await self._lookup(one)) for one in request.lookups]
        except _Busy as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise  # not reached: abort raises
        return api_pb2.LookupBatchResponse(results=results)

    async def List(self, request: api_pb2.ListRequest, context: Context) -> api_pb2.ListResponse:
        return api_pb2.ListResponse(containers=[to_message(r) for r in self.resolver.containers()])

    async def _lookup(self, request: api_pb2.LookupRequest) -> Response:
        key = request.WhichOneof("key")
        try:
            if key == "pid":
                if request.explain:
                    return await self._offload(self._explain, request.pid)
                return await self._lookup_pid(request.pid)
            if key == "cgroup_id":
                return await self._lookup_cgroup_id(request.cgroup_id)
            if key == "container_id":
                return await self._lookup_container(request.container_id)
        except OciresolveError as exc:
            return Response(status=Response.ERROR, error=str(exc))
        return Response(status=Response.ERROR, error="no pid, cgroup_id or container_id given")

    async def _lookup_pid(self, pid: int) -> Response:
        try:
            ref = self.resolver.cgroup_of(pid)
        except ProcessNotFound:
            return Response(status=Response.NO_SUCH_PROCESS, error=f"no process {pid}")
        if ref is None:
            return Response(status=Response.HOST)
        return await self._lookup_container(ref.container_id)

    async def _lookup_container(self, container_id: str) -> Response:
        if not container_id:
            return Response(status=Response.ERROR, error="empty container id")
        record = self.resolver.container(container_id)
        if record is not None:
            return _found(record, "index")
        resolution = await self._offload(self.resolver.resolve_container, container_id)
        return self._answer(resolution, container_id)

    async def _lookup_cgroup_id(self, cgroup_id: int) -> Response:
        meta = self.resolver.index.meta_by_cgroup.get(cgroup_id)
        if meta is None:
            meta = await self._offload(self.resolver.lookup_cgroup_id, cgroup_id)
            if meta is None:
                return Response(status=Response.NOT_FOUND)
        record = self.resolver.container(meta.container_id or "")
        if record is not None:
            return _found(record, "index")
        return Response(status=Response.FOUND, container=meta_message(meta), source="index")

    def _explain(self, pid: int) -> Response:
        try:
            explanation = self.resolver.explain_pid(pid)
        except ProcessNotFound:
            return Response(status=Response.NO_SUCH_PROCESS, error=f"no process {pid}")
        steps = [
            api_pb2.Step(step=s.step, result=s.result, seconds=s.seconds) for s in explanation.steps
        ]
        if explanation.container_id is None:
            response = Response(status=Response.HOST)
        else:
            response = self._answer(explanation.resolution, explanation.container_id)
        response.steps.extend(steps)
        return response

    def _answer(self, resolution: Resolution | None, container_id: str) -> Response:
        if resolution is None:
            return Response(status=Response.NOT_FOUND, container_id=container_id)
        record = self.resolver.container(container_id)
        if record is not None:
            return _found(record, resolution.source)
        return Response(
            status=Response.FOUND,
            container=meta_message(resolution.meta),
            source=resolution.source,
            container_id=container_id,
        )

    async def _offload(self, call: Callable[[_A], _T], argument: _A) -> _T:
        """Run a lookup that may touch the disk or the CRI off the loop; refuse it (``_Busy``)
        when ``max_in_flight`` already wait for the pool."""
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            raise _Busy(f"{self.in_flight} lookups in flight already; at most {self.max_in_flight}")
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, call, argument)
        finally:
            self.in_flight -= 1

    def _count(self, response: Response) -> Response:
        self.lookups[response.source or "none", _RESULTS.get(response.status, "error")] += 1
        return response

    # -- watch ---------------------------------------------------------------------------------

    async def Watch(
        self, request: api_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[api_pb2.WatchEvent]:
        if len(self._streams) >= self.max_watchers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(self._streams)} watchers already; at most {self.max_watchers}",
            )
        stream = _Stream(self.watch_queue)
        self._streams.add(stream)  # before the snapshot: no change falls in between
        try:
            for record in self.resolver.containers():
                kind = api_pb2.WatchEvent.REMOVED if record.removed else api_pb2.WatchEvent.ADDED
                yield api_pb2.WatchEvent(kind=kind, container=to_message(record))
            yield api_pb2.WatchEvent(kind=api_pb2.WatchEvent.SYNCED)
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.overflowed:
                    self.watch_overflows += 1
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"watcher too slow: more than {stream.limit} changes queued; watch again",
                    )
                while stream.events:
                    yield stream.events.popleft()
                if stream.closed:
                    return
        finally:
            self._streams.discard(stream)

    def _on_change(self, record: IndexedContainer, change: Change) -> None:
        """From the index's subscriber thread: hand the change to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        event = api_pb2.WatchEvent(kind=_KINDS[change], container=to_message(record))
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is stopping
            loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: api_pb2.WatchEvent) -> None:
        for stream in self._streams:
            stream.offer(event)


def _found(record: IndexedContainer, source: str) -> Response:
    return Response(
        status=Response.FOUND,
        container=to_message(record),
        source=source,
        container_id=record.meta.container_id or "",
    )
