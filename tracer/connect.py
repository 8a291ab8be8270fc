"""``ociresolve trace connect``: the containerd socket tracer, end to end.

Loads the probe (and BCC) only when run; starts an ``ociresolve.Resolver`` on the node; writes
a start-up line, then one line per connection until SIGINT or SIGTERM, then a last summary.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Final, Protocol, TextIO

import ociresolve
from ociresolve.tracer.attribution import Attributor
from ociresolve.tracer.counts import Counts
from ociresolve.tracer.dedup import Dedup
from ociresolve.tracer.errors import TracerUnavailable
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.loop import LifetimeObserver, Observer, TraceLoop
from ociresolve.tracer.options import FAMILIES
from ociresolve.tracer.output import JsonOutput, LogfmtOutput, Output, Setting

EXIT_OK: Final = 0
EXIT_ERROR: Final = 2


class StartableProbe(Protocol):
    def start(self) -> object: ...

    def poll(self, timeout_ms: int) -> list[ConnectEvent]: ...

    @property
    def lost(self) -> int: ...

    def close(self) -> None: ...


class ProbeFactory(Protocol):
    def __call__(
        self,
        *,
        families: Sequence[str],
        unix_paths: Sequence[str],
        ports: Sequence[int],
        exclude_comms: Sequence[str],
        include_comms: Sequence[str],
        lifetimes: bool,
        activity: bool,
        ignore_tgid: int | None,
    ) -> StartableProbe: ...


class ProbeKind(Protocol):
    """What ``tracer.probe`` provides: the probe class and its defaults."""

    @property
    def ConnectProbe(self) -> ProbeFactory: ...

    @property
    def DEFAULT_SOCKETS(self) -> Sequence[str]: ...

    @property
    def DEFAULT_EXCLUDED_COMMS(self) -> Sequence[str]: ...


def node_name() -> str:
    """``NODE_NAME`` (the downward API's ``spec.nodeName``), else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


def load_probe() -> ProbeKind:
    """``tracer.probe``, imported only now (BCC itself is imported when a probe starts)."""
    from ociresolve.tracer import probe

    return probe


class ConnectTracer:
    """The probe, its output and its loop, over a resolver the caller owns and starts.

    ``ociresolve trace connect`` runs one with a resolver of its own; ``ociresolve serve
    --trace-connect`` with the daemon's. The constructor checks the options and builds the
    probe (raising ``ValueError`` or ``TracerUnavailable``); ``start()`` loads it into the
    kernel (``TracerUnavailable``); ``run(stop)`` traces until ``stop`` is set.

    ``lifetimes`` (the deprecation reporter) follows each connection until it ends;
    ``activity`` (default: as ``lifetimes``) also reports when a followed connection sends
    (where the kernel cannot, the probe logs a warning and goes on without). ``ignore_tgid``:
    a process (the daemon itself, its tgid in the host's PID namespace) whose connects the
    kernel neither reports nor follows.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        probe_kind: ProbeKind | None = None,
        stream: TextIO | None = None,
        lifetimes: bool = False,
        activity: bool | None = None,
        ignore_tgid: int | None = None,
    ) -> None:
        if args.ports and args.family == "unix":
            raise ValueError("--port needs --family inet, inet6 or all")
        kind = load_probe() if probe_kind is None else probe_kind
        sockets = list(args.sockets or kind.DEFAULT_SOCKETS)
        excluded = [] if args.no_default_excludes else list(kind.DEFAULT_EXCLUDED_COMMS)
        excluded += [c for c in args.exclude_comms if c not in excluded]
        families = FAMILIES[args.family]
        self.probe = kind.ConnectProbe(
            families=families,
            unix_paths=sockets,
            ports=list(args.ports or ()),
            exclude_comms=excluded,
            include_comms=list(args.include_comms),
            lifetimes=lifetimes,
            activity=lifetimes if activity is None else activity,
            ignore_tgid=ignore_tgid,
        )
        daemon_socket = getattr(args, "daemon_socket", None)
        cri = "off" if args.no_cri else (args.cri_socket or "auto")
        output_type = JsonOutput if args.output == "json" else LogfmtOutput
        self.output: Output = output_type(sys.stdout if stream is None else stream, node_name())
        self.settings: list[Setting] = [
            ("family", args.family),
            ("sockets", sockets if "unix" in families else None),
            ("ports", list(args.ports) if args.ports else None),
            ("exclude_comms", excluded or None),
            ("include_comms", list(args.include_comms) or None),
            ("runtime_roots", args.runtime_roots),
            ("daemon_socket", daemon_socket),
            ("cri", "daemon" if daemon_socket else cri),
            ("dedup", args.dedup),
            ("summary_interval", args.summary_interval),
        ]
        self._dedup = args.dedup
        self._summary_interval = args.summary_interval
        self.loop: TraceLoop | None = None

    def start(self) -> None:
        """Compile and attach the probe (``TracerUnavailable`` when BPF cannot run here)."""
        try:
            self.probe.start()
        except TracerUnavailable:
            self.probe.close()
            raise

    def run(
        self,
        resolver: ociresolve.Resolving,
        stop: threading.Event,
        *,
        observer: Observer | None = None,
        lifetime: LifetimeObserver | None = None,
    ) -> Counts:
        """Write the start-up line, then trace until ``stop`` is set; the last summary.

        ``observer(event, attribution)`` sees every connect event that is reported,
        ``lifetime(event)`` every other event (``failed``, ``close``, ``exit`` with
        ``lifetimes``; ``send`` with activity); ``wall_ns`` converts their times.
        """
        self.output.started(self.settings)
        self.loop = TraceLoop(
            self.probe,
            Attributor(resolver),
            self.output,
            dedup=Dedup(self._dedup) if self._dedup > 0 else None,
            summary_interval=self._summary_interval,
            observer=observer,
            lifetime=lifetime,
        )
        return self.loop.run(stop)

    def wall_ns(self, monotonic_ns: int) -> int:
        """An event's time (CLOCK_MONOTONIC) as ns since the epoch."""
        return monotonic_ns + self.output.clock.offset_ns

    def counts(self) -> Counts | None:
        """The totals so far (``lost`` read from the kernel now), or ``None`` before ``run``."""
        if self.loop is None:
            return None
        counts = self.loop.counts
        counts.lost = self.probe.lost
        return counts

    def close(self) -> None:
        self.probe.close()


def run(
    args: argparse.Namespace,
    *,
    probe_kind: ProbeKind | None = None,
    stream: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the tracer until ``stop`` is set (by SIGINT or SIGTERM when on the main thread)."""
    stop = threading.Event() if stop is None else stop
    try:
        tracer = ConnectTracer(args, probe_kind=probe_kind, stream=stream)
        resolver: ociresolve.Resolver | ociresolve.RemoteResolver
        if getattr(args, "daemon_socket", None):
            resolver = ociresolve.RemoteResolver(args.daemon_socket, host_root=args.host_root)
        else:
            resolver = ociresolve.Resolver(
                host_root=args.host_root,
                runtime_roots=args.runtime_roots,
                cri=not args.no_cri,
                cri_socket=args.cri_socket,
            )
        tracer.start()
    except (TracerUnavailable, ValueError) as exc:
        return _error(str(exc))
    try:
        with resolver, stop_on_signals(stop):  # the resolver indexes the node first
            tracer.run(resolver, stop)
    except ociresolve.OciresolveError as exc:
        return _error(str(exc))
    finally:
        tracer.close()
    return EXIT_OK


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the loop then drains, summarizes and returns)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread: its owner sets ``stop``
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _error(message: str) -> int:
    print(f"ociresolve trace connect: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR
