"""The ``ociresolve.v1.Resolver`` service: lookups, the container list and watch streams.

It runs on the API server's event loop. A lookup the index answers is served on the loop (a
dict hit, or a ``/proc/<pid>/cgroup`` read for a PID); a miss, which may read a bundle or ask
the CRI (each call with its deadline), runs on a small thread pool of the service's own so
that it never holds up other clients, and more than ``max_in_flight`` misses waiting for it are
refused with RESOURCE_EXHAUSTED, not queued. A ``LookupBatch`` runs whole on a pool of its own
(``batch_workers`` threads), never on the loop: thousands of ``/proc`` reads in one call would
hold up every other client; more than ``max_batches`` batches at work or waiting for that pool
are refused with RESOURCE_EXHAUSTED. Watch streams share one subscription to the index;
each has a bounded queue, and a client that does not keep up has its stream ended, never the
daemon's memory grown. When that one subscription falls behind the index (its own queue full,
changes dropped), every stream is ended with ABORTED, so that no client's copy drifts from the
index unnoticed: each watches again and gets the current set.

A container id in a request must be a runtime's (64 lower-case hex digits): anything else is
INVALID_ARGUMENT, never a path. A record the API's fields cannot hold is left out of a listing
or a stream (logged and counted in ``unencodable``), never the end of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

import grpc

from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.api.convert import encodable, meta_message, to_messages
from ociresolve.errors import OciresolveError, ProcessNotFound
from ociresolve.ids import ID_LENGTH, is_runtime_id
from ociresolve.model import Change, IndexedContainer, Resolution
from ociresolve.resolver import Resolver

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_A = TypeVar("_A")
_T = TypeVar("_T")
Response = api_pb2.LookupResponse
_BatchAnswer = tuple[api_pb2.LookupBatchResponse, collections.Counter[tuple[str, str]]]

MAX_BATCH: Final = 4096
MAX_IN_FLIGHT: Final = 1024
MISS_WORKERS: Final = 4
BATCH_WORKERS: Final = 1  # one thread: the GIL is shared with the loop
MAX_BATCHES: Final = 8
BATCH_STRIDE: Final = 32  # lookups between two pauses of a batch
BATCH_PAUSE: Final = 0.0002
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


class _Invalid(Exception):
    """A request the API does not take (INVALID_ARGUMENT)."""


class _Stream:
    """One watch stream's queue, filled on the loop by the fan-out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: collections.deque[api_pb2.WatchEvent] = collections.deque()
        self.ready = asyncio.Event()
        self.overflowed = False
        self.lost = False  # the daemon's own feed fell behind the index
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

    def lose(self) -> None:
        self.lost = True
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
        batch_workers: int = BATCH_WORKERS,
        max_batches: int = MAX_BATCHES,
    ) -> None:
        self.resolver = resolver
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="ociresolve-miss")
        self.batch_executor = ThreadPoolExecutor(
            batch_workers, thread_name_prefix="ociresolve-batch"
        )
        self.max_batches = max_batches
        self.batches = 0  # at work or waiting for the batch pool
        self._batch_lock = threading.Lock()
        self._on_batch_thread = threading.local()
        self.max_watchers = max_watchers
        self.watch_queue = watch_queue
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # misses being looked up off the loop
        self.refused = 0
        # (source, result) -> lookups answered; source is "none" when nothing was found.
        self.lookups: collections.Counter[tuple[str, str]] = collections.Counter()
        self.watch_overflows = 0
        # Times the service's subscription fell behind the index (every stream then ended).
        self.feed_losses = 0
        # Records left out of an answer, a listing or a stream: the API's fields cannot hold them.
        self.unencodable = 0
        self._streams: set[_Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._detached = False

    @property
    def watchers(self) -> int:
        return len(self._streams)

    def register(self, server: grpc.aio.Server) -> None:
        api_pb2_grpc.add_ResolverServicer_to_server(self, server)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to the index once; changes reach the streams on ``loop``."""
        self._loop = loop
        self._unsubscribe = self.resolver.subscribe(self._on_change, on_lost=self._on_lost)

    def detach(self) -> None:
        """End every watch stream (on the loop): the daemon is stopping. A watch that comes
        after this, in the server's grace period, is refused."""
        self._detached = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for stream in list(self._streams):
            stream.close()

    def close(self) -> None:
        """Drop the misses still waiting for the pool: the server has stopped."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.batch_executor.shutdown(wait=False, cancel_futures=True)

    # -- lookups -------------------------------------------------------------------------------

    async def Lookup(self, request: api_pb2.LookupRequest, context: Context) -> Response:
        try:
            _check(request)
            return self._count(await self._lookup(request))
        except _Invalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # not reached: abort raises
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
            for n, one in enumerate(request.lookups):
                _check(one, f"lookups[{n}]: ")
        except _Invalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # not reached: abort raises
        with self._batch_lock:
            busy = self.batches >= self.max_batches
            if not busy:
                self.batches += 1
        if busy:
            self.refused += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_batches} batches at work already; at most {self.max_batches}",
            )
        work = self.batch_executor.submit(self._batch, request)
        work.add_done_callback(self._batch_done)  # run, failed or cancelled: the slot is free
        response, counts = await asyncio.wrap_future(work)
        self.lookups.update(counts)
        return response

    async def List(self, request: api_pb2.ListRequest, context: Context) -> api_pb2.ListResponse:
        containers, skipped = to_messages(self.resolver.containers())
        self.unencodable += skipped
        return api_pb2.ListResponse(containers=containers)

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
            return self._found(record, "index")
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
            return self._found(record, "index")
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
            return self._found(record, resolution.source)
        return Response(
            status=Response.FOUND,
            container=meta_message(resolution.meta),
            source=resolution.source,
            container_id=container_id,
        )

    def _batch(self, request: api_pb2.LookupBatchRequest) -> _BatchAnswer:
        """On the batch pool: each lookup as ``Lookup`` makes it, where ``_offload`` calls at
        once (this thread may block), and the answers counted. Every ``BATCH_STRIDE`` lookups
        it pauses: the loop's thread then gets the GIL at once, instead of after the
        interpreter's switch interval (5 ms), again and again for one call."""
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        results: list[Response] = []
        self._on_batch_thread.active = True
        try:
            for n, one in enumerate(request.lookups):
                if n and not n % BATCH_STRIDE:
                    time.sleep(BATCH_PAUSE)
                response = _run_now(self._lookup(one))
                counts[_counted_as(response)] += 1
                results.append(response)
        finally:
            self._on_batch_thread.active = False
        return api_pb2.LookupBatchResponse(results=results), counts

    def _batch_done(self, _: Future[_BatchAnswer]) -> None:
        with self._batch_lock:
            self.batches -= 1

    async def _offload(self, call: Callable[[_A], _T], argument: _A) -> _T:
        """Run a lookup that may touch the disk or the CRI off the loop; refuse it (``_Busy``)
        when ``max_in_flight`` already wait for the pool. On a batch's thread, call it."""
        if getattr(self._on_batch_thread, "active", False):
            return call(argument)
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            raise _Busy(f"{self.in_flight} lookups in flight already; at most {self.max_in_flight}")
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, call, argument)
        finally:
            self.in_flight -= 1

    def _found(self, record: IndexedContainer, source: str) -> Response:
        container = encodable(record)
        container_id = record.meta.container_id or ""
        if container is None:
            self.unencodable += 1
            return Response(
                status=Response.ERROR,
                container_id=container_id,
                error="the container's record cannot be encoded (a value out of its field's range)",
            )
        return Response(
            status=Response.FOUND, container=container, source=source, container_id=container_id
        )

    def _count(self, response: Response) -> Response:
        self.lookups[_counted_as(response)] += 1
        return response

    # -- watch ---------------------------------------------------------------------------------

    async def Watch(
        self, request: api_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[api_pb2.WatchEvent]:
        if self._detached:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon is stopping")
        if len(self._streams) >= self.max_watchers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(self._streams)} watchers already; at most {self.max_watchers}",
            )
        stream = _Stream(self.watch_queue)
        self._streams.add(stream)  # before the snapshot: no change falls in between
        try:
            for record in self.resolver.containers():
                container = encodable(record)
                if container is None:
                    self.unencodable += 1
                    continue
                kind = api_pb2.WatchEvent.REMOVED if record.removed else api_pb2.WatchEvent.ADDED
                yield api_pb2.WatchEvent(kind=kind, container=container)
            yield api_pb2.WatchEvent(kind=api_pb2.WatchEvent.SYNCED)
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.lost:
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        "the daemon's change feed fell behind (changes were dropped); watch again",
                    )
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
        container = encodable(record)
        if container is None:
            self.unencodable += 1
            return
        event = api_pb2.WatchEvent(kind=_KINDS[change], container=container)
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is stopping
            loop.call_soon_threadsafe(self._fan_out, event)

    def _on_lost(self, dropped: int) -> None:
        """From the index's subscriber thread, after every change it got before the loss: the
        streams miss changes now; end them all (on the loop, after those changes)."""
        loop = self._loop
        log.warning("watch feed fell behind the index (%d dropped): ending every stream", dropped)
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._lose_all)

    def _fan_out(self, event: api_pb2.WatchEvent) -> None:
        for stream in self._streams:
            stream.offer(event)

    def _lose_all(self) -> None:
        self.feed_losses += 1
        for stream in self._streams:
            stream.lose()


def _counted_as(response: Response) -> tuple[str, str]:
    """(source, result): the key of ``lookups``; source is "none" when nothing was found."""
    return response.source or "none", _RESULTS.get(response.status, "error")


def _run_now(lookup: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that never suspends: a lookup on a batch's thread."""
    try:
        lookup.send(None)
    except StopIteration as done:
        value: _T = done.value
        return value
    lookup.close()
    raise RuntimeError("a lookup waited on a batch's thread")


def _check(request: api_pb2.LookupRequest, where: str = "") -> None:
    """Refuse a container id that is not a runtime's: never let one reach a path."""
    if request.WhichOneof("key") != "container_id" or not request.container_id:
        return  # no id, or an empty one: answered as an error, as before
    container_id = request.container_id
    if not is_runtime_id(container_id):
        shown = repr(container_id[: ID_LENGTH + 8])
        raise _Invalid(f"{where}{shown} is not a container id (64 lower-case hex digits)")
