"""``ociresolve serve``: the watcher, the resolver, the API, metrics and (optionally) the
connect tracer, in one process, until SIGTERM or SIGINT (SIGHUP is logged and ignored).

Start-up: the API socket's path claimed (a daemon already serving there makes this one exit
2 at once, see ``SocketClaim``), metrics and health (``/readyz`` says 503 meanwhile), the
tracer's probe compiled and attached (so a node without BPF fails at once, with the reason),
the initial scan, then the API. Stopping: the watch streams end, requests in flight get a
second, the tracer drains what the kernel buffered and writes its last summary; the process
exits 0 within a second or two. Nothing is kept on disk: a restarted daemon rebuilds the index from
the bundles, which the runtimes keep.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Final

from ociresolve.daemon import logs
from ociresolve.daemon.deprecations_service import DeprecationsService
from ociresolve.daemon.feed import ReporterFeed
from ociresolve.daemon.http import HttpServer
from ociresolve.daemon.metrics import Metrics
from ociresolve.daemon.server import ApiServer, Service
from ociresolve.daemon.service import ResolverService
from ociresolve.daemon.socketclaim import SocketClaim
from ociresolve.errors import InotifyLimitReached, OciresolveError
from ociresolve.resolver import Resolver

if TYPE_CHECKING:
    from ociresolve.deprecations.labels import Workloads
    from ociresolve.deprecations.reporter import Reporter
    from ociresolve.tracer.connect import ConnectTracer

log = logging.getLogger("ociresolve.serve")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 2
EXIT_INOTIFY_LIMIT: Final = 3  # no inotify instance left: fs.inotify.max_user_instances
STOP_GRACE: Final = 1.0


def run(args: argparse.Namespace, *, stop: threading.Event | None = None) -> int:
    """Serve until ``stop`` is set (SIGTERM and SIGINT set it when on the main thread)."""
    from ociresolve.tracer.connect import node_name, stop_on_signals

    stop = threading.Event() if stop is None else stop
    logs.configure(args.log_format, args.log_level, node=node_name())
    with stop_on_signals(stop), _log_hangups():
        try:
            return Daemon(args).run(stop)
        except InotifyLimitReached as exc:
            log.error("cannot serve: %s", exc)
            return EXIT_INOTIFY_LIMIT
        except OciresolveError as exc:
            log.error("cannot serve: %s", exc)
            return EXIT_ERROR


@contextlib.contextmanager
def _log_hangups() -> Iterator[None]:
    """A SIGHUP (a closed terminal, a stray ``kill -HUP``) is logged; the daemon serves on.
    There is no configuration file to reload."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGHUP ignored: stop the daemon with SIGTERM")

    previous = signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ready = threading.Event()
        self.metrics = Metrics() if args.metrics_address else None
        self.resolver = Resolver(
            host_root=args.host_root,
            runtime_roots=args.runtime_roots,
            grace_period=args.grace_period,
            cri=not args.no_cri,
            cri_socket=args.cri_socket,
            cri_observer=self.metrics.observe_cri if self.metrics is not None else None,
        )
        self.api: ApiServer | None = None  # built once the reporter is (or is not) made
        self.claim: SocketClaim | None = None  # the API socket's path, claimed first
        self.tracer: ConnectTracer | None = None
        self.reporter: Reporter | None = None
        self.workloads: Workloads | None = None  # with the reporter
        self._threads: list[threading.Thread] = []
        self._tracer_stop = threading.Event()

    def healthy(self) -> bool:
        watcher = self.resolver.watcher
        if not self.ready.is_set():
            return True  # still scanning: alive, not ready
        alive = watcher is not None and watcher.alive
        alive = alive and (self.api is None or self.api.serving)
        return alive and all(thread.is_alive() for thread in self._threads)

    def degraded(self) -> str | None:
        """Why the daemon, alive, may see changes late (directories without an inotify watch,
        rescanned until they have one), or None."""
        watcher = self.resolver.watcher
        return None if watcher is None else watcher.degraded

    def run(self, stop: threading.Event) -> int:
        if self.args.socket:
            self.claim = SocketClaim(self.args.socket).acquire()
        try:
            http = self._start_http()
        except BaseException:
            if self.claim is not None:
                self.claim.release()
            raise
        try:
            self._start_tracer()
            if stop.is_set():
                return EXIT_OK
            self._make_reporter()
            started = time.perf_counter()
            self.resolver.start()
            service = self._start_api()
            if self.metrics is not None:
                self.metrics.watch(
                    self.resolver,
                    service,
                    self.tracer.counts if self.tracer is not None else None,
                    self.ready.is_set,
                )
                self._watch_deprecations(self.metrics)
            self._run_tracer()
            self._run_reporter(stop)
            self.ready.set()
            log.info(
                "ready",
                extra=logs.fields(
                    containers=len(self.resolver.index),
                    scan_ms=round((time.perf_counter() - started) * 1000, 1),
                    socket=self.api.socket_path if self.api is not None else None,
                    metrics=self.args.metrics_address or None,
                    tracer="connect" if self.tracer is not None else None,
                    deprecations=self.reporter.source.endpoint if self.reporter else None,
                ),
            )
            stop.wait()
            log.info("stopping")
        finally:
            self._stop(http)
        log.info("stopped")
        return EXIT_OK

    def _start_api(self) -> ResolverService | None:
        """Serve the API when there is a socket to serve it on: the resolver's service, and
        the reporter's when it runs. Returns the resolver's, for the metrics."""
        if not self.args.socket:
            return None
        service = ResolverService(self.resolver)
        services: list[Service] = [service]
        if self.reporter is not None:
            services.append(
                DeprecationsService(
                    self.reporter,
                    resolver=self.resolver,
                    workloads=self.workloads,
                    exclude=self._own_container(),
                )
            )
        self.api = ApiServer(
            services,
            self.args.socket,
            mode=self.args.socket_mode,
            owner=self.args.socket_owner,
            claim=self.claim,
        )
        self.api.start()
        return service

    def _start_http(self) -> HttpServer | None:
        if not self.args.metrics_address:
            return None
        exposition: Callable[[], tuple[bytes, str]] | None = (
            self.metrics.exposition if self.metrics is not None else None
        )
        return HttpServer(
            self.args.metrics_address,
            healthy=self.healthy,
            degraded=self.degraded,
            ready=self.ready.is_set,
            metrics=exposition,
        ).start()

    def _start_tracer(self) -> None:
        if not self.args.trace_connect:
            return
        from ociresolve.daemon.feed import own_tgid
        from ociresolve.tracer.connect import ConnectTracer
        from ociresolve.tracer.errors import TracerUnavailable

        try:
            # With the reporter, the probe also follows each socket until it is closed and
            # sees each request sent on it; the daemon's own connections are no candidates.
            tracer = ConnectTracer(
                self.args,
                lifetimes=self.args.report_deprecations,
                ignore_tgid=own_tgid(self.resolver.paths),
            )
            tracer.start()
        except (TracerUnavailable, ValueError) as exc:
            raise OciresolveError(f"--trace-connect: {exc}") from exc
        self.tracer = tracer

    def _make_reporter(self) -> None:
        if not self.args.report_deprecations:
            return
        from ociresolve.deprecations import IntrospectionClient, containerd_socket
        from ociresolve.deprecations.correlate import Correlator, Settings
        from ociresolve.deprecations.labels import Workloads
        from ociresolve.deprecations.reporter import Reporter
        from ociresolve.tracer.connect import node_name

        socket = containerd_socket(self.resolver.paths, self.args.containerd_socket)
        if socket is None:
            raise OciresolveError(
                "--report-deprecations: no containerd socket found; give --containerd-socket"
            )
        # The pod's labels over the resolver's CRI fallback (deadline, breaker); a runtime that
        # does not answer leaves the workload out.
        self.workloads = Workloads(self.resolver)
        self.reporter = Reporter(
            IntrospectionClient(socket),
            node=node_name(),
            stream=sys.stdout,
            interval=self.args.deprecations_interval,
            correlator=(
                Correlator(Settings(closes_tracked=True)) if self.tracer is not None else None
            ),
            output="json" if self.args.output == "json" else "logfmt",  # as the tracer's
            workloads=self.workloads,
        )

    def _watch_deprecations(self, metrics: Metrics) -> None:
        """The reporter's clients and the containers that mount a runtime socket, as gauges."""
        reporter = self.reporter
        if reporter is None:
            return
        from ociresolve.deprecations.potential import socket_mounts

        own = self._own_container()
        metrics.watch_deprecations(
            reporter.clients,
            lambda: socket_mounts(self.resolver.containers(), exclude=own),
            self.workloads,
        )

    def _own_container(self) -> tuple[str, ...]:
        """The daemon's own container id, if it runs in one: its mounts of the runtimes'
        sockets make no client."""
        from ociresolve.daemon.feed import own_tgid

        try:
            ref = self.resolver.cgroup_of(own_tgid(self.resolver.paths))
        except OciresolveError:
            return ()
        return () if ref is None else (ref.container_id,)

    def _run_tracer(self) -> None:
        tracer = self.tracer
        if tracer is None:
            return
        feed = (
            ReporterFeed(self.reporter, tracer.wall_ns, self.resolver.paths)
            if self.reporter is not None
            else None
        )

        def trace() -> None:
            try:
                tracer.run(
                    self.resolver,
                    self._tracer_stop,
                    observer=feed.connected if feed is not None else None,
                    lifetime=feed.lifetime if feed is not None else None,
                )
            except Exception:
                log.exception("the connect tracer failed")

        self._start_thread(trace, "ociresolve-tracer")

    def _run_reporter(self, stop: threading.Event) -> None:
        reporter = self.reporter
        if reporter is None:
            return

        def report() -> None:
            try:
                reporter.run(stop)
            except Exception:
                log.exception("the deprecation reporter failed")

        self._start_thread(report, "ociresolve-deprecations")

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name)
        thread.start()
        self._threads.append(thread)

    def _stop(self, http: HttpServer | None) -> None:
        self.ready.clear()
        self._tracer_stop.set()
        if self.api is not None:
            self.api.stop(STOP_GRACE)
        if self.claim is not None:
            self.claim.release()
        for thread in self._threads:
            thread.join(5.0)
        if self.tracer is not None:
            self.tracer.close()
        if self.reporter is not None:
            self.reporter.close()
        self.resolver.close()
        if http is not None:
            http.stop()
