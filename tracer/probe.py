"""The kernel side: load ``bpf/connect.bpf.c`` with BCC, set its filters, drain its events.

::

    with ConnectProbe(unix_paths=["/run/containerd/containerd.sock"]) as probe:
        while True:
            for event in probe.poll(5):
                ...
            if probe.lost: ...

Filtering happens in the kernel (family, socket path or port, comm allow list; an ``addrlen``
too short for any traced address is dropped before the address is read; excluded comms are
marked, not dropped: see ``ConnectEvent.excluded``), so a
host hammering connect() costs little and does not crowd the buffer. Events arrive through a
BPF ring buffer submitted without wakeups and drained by ``poll`` every few milliseconds (the
kernel forces a wakeup only when a backlog builds up), read through mmap and decoded in batches
(``_ringbuf.py``; BCC's per-event callback is the fallback); on kernels before 5.8, a perf
buffer.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from . import _environment, _ringbuf, _wire
from .errors import TracerUnavailable
from .events import ConnectEvent

__all__ = [
    "BPF_DIR_ENV",
    "DEFAULT_ACTIVITY_INTERVAL_NS",
    "DEFAULT_EXCLUDED_COMMS",
    "DEFAULT_RING_PAGES",
    "DEFAULT_SOCKETS",
    "FAMILIES",
    "ConnectProbe",
    "Delivery",
]

#: containerd's socket where kubelet and clients look for it (``/var/run`` is a symlink to
#: ``/run`` on most nodes, but connect() sees the path as the caller wrote it), and k3s'.
DEFAULT_SOCKETS: tuple[str, ...] = (
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
)

#: The node's own components, excluded only when they run outside containers: the kernel marks
#: their connects (``ConnectEvent.excluded``) and the tracer drops those of host processes. The
#: original tracer (GoogleCloudPlatform/k8s-node-tools,
#: containerd/socket-tracer/containerd-socket-tracer.yaml) skips comm kubelet, containerd, ctr
#: and crictl for every process; we add the shims, whose 15-byte comm is ``containerd-shim`` for
#: every ``containerd-shim-*`` binary.
DEFAULT_EXCLUDED_COMMS: tuple[str, ...] = (
    "kubelet",
    "containerd",
    "containerd-shim",
    "ctr",
    "crictl",
)

#: ``families`` values: ``other`` is every family but these three, ``all`` every family.
FAMILIES = frozenset({"unix", "inet", "inet6", "other", "all"})

DEFAULT_RING_PAGES = 1024  # 4 MiB: about 25,000 events, 25 ms of a 1M events/s storm
#: At most one ``send`` event per followed connection per this (the correlator's flat window).
DEFAULT_ACTIVITY_INTERVAL_NS = 5_000_000
MAX_ACTIVITY_INTERVAL_NS = 60_000_000_000
#: Where sends are seen (``sock_sendmsg``): every socket send, no file write.
SEND_TRACEPOINT = ("sock", "sock_send_length")
DEFAULT_POLL_MS = 5
BPF_DIR_ENV = "OCIRESOLVE_BPF_DIR"
SOURCE_NAME = "connect.bpf.c"

# Map sizes in the C file.
MAX_UNIX_PATHS = 64
MAX_PORTS = 64
MAX_COMMS = 64

Delivery = Literal["auto", "ringbuf", "perf"]

log = logging.getLogger(__name__)

_ALL_FAMILIES_MASK = (1 << 64) - 1
_KNOWN_FAMILIES_MASK = sum(1 << n for n in _wire.FAMILY_NUMBERS.values())


class ConnectProbe:
    """connect() calls that pass the in-kernel filters, as ``ConnectEvent``s.

    ``unix_paths``: exact socket paths, ``prefix*`` patterns, ``*`` for all, ``@name`` for
    abstract sockets (empty: all). ``ports``: TCP/UDP destination ports of inet/inet6 connects
    (empty: all). ``exclude_comms`` / ``include_comms``: thread names (compared on their first
    15 bytes, as the kernel keeps them); an excluded name's connects are still reported, marked
    ``excluded`` (the caller decides: the tracer drops only host processes'); only the names
    in a non-empty ``include_comms`` are reported.
    ``ring_pages``: ring buffer size in 4 KiB pages, a power of two. ``delivery``: ``auto``
    picks the ring buffer on Linux 5.8+, else the perf buffer. ``dump_bpf``: BCC prints the
    preprocessed C and the BPF instructions with their source lines to stderr while loading.
    ``lifetimes``: also report what becomes of each reported connect's socket (``failed``,
    ``close``, ``exit`` events); every close() on the host then costs a map lookup.
    ``activity`` (with ``lifetimes``): also a ``send`` event when a followed unix connection
    sends, at most one per connection per ``activity_interval_ns``; every socket send on the
    host then runs a program (for a unix one, two array lookups). Where the kernel lacks the
    tracepoint, ``start()`` logs a warning and goes on without: ``activity`` then stays False
    and ``activity_unavailable`` says why. ``ignore_tgid``: a process (in the host's PID
    namespace) whose connects are neither reported nor followed, e.g. the daemon itself.
    """

    def __init__(
        self,
        *,
        families: Collection[str] = ("unix",),
        unix_paths: Sequence[str] = DEFAULT_SOCKETS,
        ports: Sequence[int] = (),
        exclude_comms: Sequence[str] = DEFAULT_EXCLUDED_COMMS,
        include_comms: Sequence[str] = (),
        ring_pages: int = DEFAULT_RING_PAGES,
        delivery: Delivery = "auto",
        bpf_dir: str | os.PathLike[str] | None = None,
        dump_bpf: bool = False,
        lifetimes: bool = False,
        activity: bool = False,
        activity_interval_ns: int = DEFAULT_ACTIVITY_INTERVAL_NS,
        ignore_tgid: int | None = None,
    ) -> None:
        unknown = set(families) - FAMILIES
        if unknown or not families:
            raise ValueError(f"families must be among {sorted(FAMILIES)}, got {sorted(families)}")
        if ring_pages < 1 or ring_pages & (ring_pages - 1):
            raise ValueError(f"ring_pages must be a power of two, got {ring_pages}")
        if delivery not in ("auto", "ringbuf", "perf"):
            raise ValueError(f"delivery must be auto, ringbuf or perf, got {delivery!r}")
        bad_ports = [p for p in ports if not 0 <= p <= 0xFFFF]
        if bad_ports:
            raise ValueError(f"ports out of range: {bad_ports}")
        if activity and not lifetimes:
            raise ValueError("activity needs lifetimes (sends are reported on followed sockets)")
        if not 0 <= activity_interval_ns <= MAX_ACTIVITY_INTERVAL_NS:
            raise ValueError(
                f"activity_interval_ns must be 0 to {MAX_ACTIVITY_INTERVAL_NS}, "
                f"got {activity_interval_ns}"
            )
        if ignore_tgid is not None and not 0 < ignore_tgid < 1 << 32:
            raise ValueError(f"ignore_tgid out of range: {ignore_tgid}")
        self.families = frozenset(families)
        self.unix_paths = tuple(unix_paths) or ("*",)
        self.ports = tuple(sorted(set(ports)))
        self.exclude_comms = tuple(exclude_comms)
        self.include_comms = tuple(include_comms)
        self.ring_pages = ring_pages
        self.dump_bpf = dump_bpf
        self.lifetimes = lifetimes
        self.activity_requested = activity
        self.activity_interval_ns = activity_interval_ns
        self.ignore_tgid = ignore_tgid
        #: Whether ``send`` events are on: decided by ``start()``.
        self.activity = False
        #: Why activity was asked for but is off (``None``: it is on, or was not asked for).
        self.activity_unavailable: str | None = None
        self._unix_keys = [_wire.unix_key(p) for p in self.unix_paths]
        self._deny_keys = {bytes(_wire.comm_key(c).comm): _wire.comm_key(c) for c in exclude_comms}
        self._allow_keys = {bytes(_wire.comm_key(c).comm): _wire.comm_key(c) for c in include_comms}
        for what, count, limit in (
            ("unix_paths", len(self._unix_keys), MAX_UNIX_PATHS),
            ("ports", len(self.ports), MAX_PORTS),
            ("exclude_comms", len(self._deny_keys), MAX_COMMS),
            ("include_comms", len(self._allow_keys), MAX_COMMS),
        ):
            if count > limit:
                raise ValueError(f"at most {limit} {what}, got {count}")
        self._requested_delivery = delivery
        self.delivery: Literal["ringbuf", "perf"] | None = None
        self.source_path = _source_path(bpf_dir)
        self._bpf: Any = None
        self._ring: _ringbuf.RingReader | None = None
        self._pending: list[ConnectEvent] = []

    #: Read the ring buffer through mmap (``tracer/_ringbuf.py``) rather than through BCC's
    #: per-event ctypes callback, which stays the fallback; False forces the fallback (tests).
    _direct_ring = True

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Compile, load and attach; raises TracerUnavailable saying what to do."""
        if self._bpf is not None:
            return
        bcc = _environment.check_all()
        if not self.source_path.is_file():
            raise TracerUnavailable(
                f"BPF source {self.source_path} not found (set {BPF_DIR_ENV} to the directory "
                f"holding {SOURCE_NAME})"
            )
        delivery = self._requested_delivery
        if delivery == "auto":
            delivery = "ringbuf" if _environment.ringbuf_supported() else "perf"
        self.activity, self.activity_unavailable = False, None
        if self.activity_requested:
            self.activity_unavailable = _activity_unavailable(bcc)
            self.activity = self.activity_unavailable is None
            if not self.activity:
                log.warning(
                    "per-request activity is off: %s; connections are followed by their "
                    "lifetimes only",
                    self.activity_unavailable,
                )
        debug = (bcc.DEBUG_PREPROCESSOR | bcc.DEBUG_SOURCE) if self.dump_bpf else 0
        try:
            # The tracepoint is attached as soon as BPF() loads it; its config map is still all
            # zero then, which lets nothing through until _configure() below fills it.
            bpf = bcc.BPF(
                src_file=os.fsencode(self.source_path), cflags=self.cflags(delivery), debug=debug
            )
        except Exception as exc:
            raise TracerUnavailable(
                f"cannot compile or load {self.source_path}: {exc} (the compiler's or verifier's "
                "messages are on stderr; ConnectProbe(dump_bpf=True) shows the generated BPF)"
            ) from exc
        self._bpf = bpf
        self.delivery = delivery
        try:
            self._configure(bpf)
            self._open_buffer(bpf, delivery)
        except Exception as exc:
            self.close()
            raise TracerUnavailable(f"cannot set up {self.source_path}: {exc}") from exc

    def close(self) -> None:
        """Detach and free the program; idempotent."""
        bpf, self._bpf = self._bpf, None
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- events -------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = DEFAULT_POLL_MS) -> list[ConnectEvent]:
        """The events waiting now; if none, waits up to ``timeout_ms`` and drains again."""
        bpf = self._started()
        ring = self._ring
        if ring is not None:
            events: list[ConnectEvent] = []
            ring.drain(events)
            if not events and timeout_ms > 0 and ring.wait(timeout_ms):
                ring.drain(events)
            return events
        if self.delivery == "ringbuf":
            bpf.ring_buffer_consume()
            if not self._pending and timeout_ms > 0:
                bpf.ring_buffer_poll(timeout_ms)  # returns early on a forced wakeup
                bpf.ring_buffer_consume()
        else:
            bpf.perf_buffer_consume()
            if not self._pending and timeout_ms > 0:
                bpf.perf_buffer_poll(timeout_ms)
                bpf.perf_buffer_consume()
        pending, self._pending = self._pending, []
        return pending

    @property
    def lost(self) -> int:
        """Events that passed the filters but were dropped because the buffer was full."""
        return self._stat(_wire.STAT_LOST)

    @property
    def matched(self) -> int:
        """Events that passed the filters (delivered or lost)."""
        return self._stat(_wire.STAT_MATCHED)

    def min_addrlen(self) -> int:
        """The kernel-side pre-filter: connects with a shorter addrlen are dropped unread.

        Each traced family matches every addrlen from a minimum up (unix: 2 + the shortest
        pattern's bytes without its terminating NUL; inet 8, inet6 24, other families 2), so
        the union is everything from the smallest of them; addrlen is compared unsigned, as the
        program reads it (a negative addrlen is read, capped, as before).
        """
        lows: list[int] = []
        for family in self.families:
            if family == "unix":
                lows.extend(_wire.unix_min_addrlen(key) for key in self._unix_keys)
            elif family == "inet":
                lows.append(_wire.SOCKADDR_IN_LEN)
            elif family == "inet6":
                lows.append(_wire.SOCKADDR_IN6_LEN)
            else:  # other, all
                lows.append(_wire.SOCKADDR_FAMILY_LEN)
        return max(_wire.SOCKADDR_FAMILY_LEN, min(lows))

    def cflags(
        self, delivery: Literal["ringbuf", "perf"] = "ringbuf", *, activity: bool | None = None
    ) -> list[str]:
        """The compiler flags of the C file for this configuration (``activity``: default,
        whether ``start()`` turned it on)."""
        flags = [f"-DOCI_RING_PAGES={self.ring_pages}"]
        if delivery == "perf":
            flags.append("-DOCI_PERF_BUFFER")
        if self.lifetimes:
            flags.append("-DOCI_LIFETIMES")
            if self.activity if activity is None else activity:
                flags.append("-DOCI_ACTIVITY")
        return flags

    # -- internals ----------------------------------------------------------------------------

    def _collect(self, event: ConnectEvent) -> None:
        self._pending.append(event)

    def _started(self) -> Any:
        if self._bpf is None:
            raise RuntimeError("ConnectProbe is not started (call start() or use `with`)")
        return self._bpf

    def _stat(self, index: int) -> int:
        return int(self._started()[b"stats"].sum(ctypes.c_int(index)).value)

    def _configure(self, bpf: Any) -> None:
        one = ctypes.c_uint8(1)
        for key in self._unix_keys:
            bpf[b"unix_paths"][key] = one
        for port in self.ports:
            bpf[b"ports"][ctypes.c_uint16(port)] = one
        for comm in self._deny_keys.values():
            bpf[b"deny_comms"][comm] = one
        for comm in self._allow_keys.values():
            bpf[b"allow_comms"][comm] = one
        bpf[b"config"][ctypes.c_int(0)] = self._config()

    def _config(self) -> _wire.Config:
        config = _wire.Config()
        mask, flags = 0, 0
        for family in self.families:
            if family == "all":
                mask, flags = _ALL_FAMILIES_MASK, flags | _wire.F_OTHER_FAMILIES
            elif family == "other":
                mask |= _ALL_FAMILIES_MASK & ~_KNOWN_FAMILIES_MASK
                flags |= _wire.F_OTHER_FAMILIES
            else:
                mask |= 1 << _wire.FAMILY_NUMBERS[family]
        if self.ports:
            flags |= _wire.F_PORTS
        if self._allow_keys:
            flags |= _wire.F_ALLOW_COMMS
        config.families = mask
        config.flags = flags
        config.min_addrlen = self.min_addrlen()
        config.ignore_tgid = self.ignore_tgid or 0
        config.activity_interval_ns = self.activity_interval_ns
        # Wake the consumer when a quarter of the ring could be waiting, whichever CPU fills it.
        capacity = self.ring_pages * 4096 // (ctypes.sizeof(_wire.RawEvent) + 8)
        config.wakeup_every = max(1, capacity // (4 * (os.cpu_count() or 1)))
        return config

    def _open_buffer(self, bpf: Any, delivery: str) -> None:
        if delivery == "ringbuf" and self._direct_ring and _ringbuf.supported():
            table = bpf[b"events"]
            try:
                self._ring = _ringbuf.RingReader(
                    table.map_fd,
                    int(table.max_entries),
                    _wire.EVENT_SIZE,
                    _wire.batch_decoder(),
                )
                return
            except (OSError, ValueError):
                pass  # BCC's callback per event below: slower, same events
        callback = _wire.decoder(self._collect)
        if delivery == "ringbuf":
            bpf[b"events"].open_ring_buffer(callback)
            return
        # Perf buffers are per CPU; batch wakeups too. Losses are counted by the kernel side
        # (a failed perf_submit), so BCC's own lost callback only keeps it from printing.
        pages = max(8, 1 << ((self.ring_pages // (os.cpu_count() or 1)).bit_length() - 1))
        bpf[b"events"].open_perf_buffer(
            lambda cpu, data, size: callback(cpu, data, size),
            page_cnt=pages,
            lost_cb=lambda _lost: None,
            wakeup_events=64,
        )


def _activity_unavailable(bcc: Any) -> str | None:
    """Why ``send`` events cannot be had here, or ``None``: the tracepoint, where BCC reads
    tracepoint formats (kernels newer than 6.1 have it: Debian 12's own 6.1 has not)."""
    category, event = SEND_TRACEPOINT
    if bcc.BPF.tracepoint_exists(category, event):
        return None
    return f"the kernel has no tracepoint {category}:{event} (sends cannot be seen)"


def _source_path(bpf_dir: str | os.PathLike[str] | None) -> Path:
    """``connect.bpf.c`` in ``bpf_dir`` / ``$OCIRESOLVE_BPF_DIR``, else the package's own
    (``ociresolve/bpf``: package data in a wheel, the repository's ``bpf/`` in a checkout)."""
    directory = bpf_dir or os.environ.get(BPF_DIR_ENV)
    if directory:
        return Path(directory) / SOURCE_NAME
    return Path(__file__).parent.parent / "bpf" / SOURCE_NAME
