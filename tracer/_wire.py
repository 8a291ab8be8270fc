"""The kernel side's layout and constants (mirrors ``bpf/connect.bpf.c``), and event decoding.

Change this file and the C file together: ``struct oci_connect_event`` is read here with ctypes
``from_address``, the filter map keys are built here byte for byte.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable

from .events import ConnectEvent, Family, Kind

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10

F_OTHER_FAMILIES = 1
F_PORTS = 2
F_ALLOW_COMMS = 4

STAT_MATCHED = 0
STAT_LOST = 1

EV_CONNECT = 0
EV_SEND = 4
KINDS: tuple[Kind, ...] = ("connect", "failed", "close", "exit", "send")  # by OCI_EV_* number
KIND_MASK = 0xFF  # kind's low byte; its high byte holds flags (OCI_EVF_*)
EVF_EXCLUDED = 0x100

UNIX_PATH_MAX = 108
COMM_LEN = 16
SOCKADDR_FAMILY_LEN = 2  # the program reads nothing shorter than the family
SOCKADDR_IN_LEN = 8  # family, port, address: shorter inet addrlens are filtered out
SOCKADDR_IN6_LEN = 24  # family, port, flow info, address

FAMILY_NUMBERS: dict[str, int] = {"unix": AF_UNIX, "inet": AF_INET, "inet6": AF_INET6}
_FAMILY_NAMES: dict[int, Family] = {AF_UNIX: "unix", AF_INET: "inet", AF_INET6: "inet6"}

# Decoded strings by their raw bytes: a tracer sees the same few paths and comms again and
# again. Bounded; cleared when full.
_CACHE_MAX = 4096


class RawEvent(ctypes.Structure):
    """``struct oci_connect_event``."""

    _fields_ = (
        ("time_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("addrlen", ctypes.c_uint16),
        ("kind", ctypes.c_uint16),
        ("comm", ctypes.c_char * COMM_LEN),  # c_char arrays read back up to the first NUL
        ("addr", ctypes.c_uint8 * UNIX_PATH_MAX),
        ("fd", ctypes.c_int32),
    )


class Config(ctypes.Structure):
    """``struct oci_config``."""

    _fields_ = (
        ("families", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("wakeup_every", ctypes.c_uint32),
        ("min_addrlen", ctypes.c_uint32),
        ("ignore_tgid", ctypes.c_uint32),
        ("activity_interval_ns", ctypes.c_uint64),
    )


class UnixKey(ctypes.Structure):
    """``struct oci_unix_key``: an LPM trie key, ``prefixlen`` in bits."""

    _fields_ = (("prefixlen", ctypes.c_uint32), ("path", ctypes.c_uint8 * UNIX_PATH_MAX))


class CommKey(ctypes.Structure):
    """``struct oci_comm_key``."""

    _fields_ = (("comm", ctypes.c_char * COMM_LEN),)


assert ctypes.sizeof(RawEvent) == 160
assert ctypes.sizeof(Config) == 32
assert ctypes.sizeof(UnixKey) == 112


def unix_key(pattern: str) -> UnixKey:
    """The LPM trie key of a socket path pattern.

    ``/a/b`` matches that path exactly (stored with its terminating NUL), ``/a/*`` every path
    that starts with ``/a/``, ``*`` every path; ``@name`` is the abstract socket ``\\0name``.
    """
    prefix = pattern.endswith("*")
    body = pattern[:-1] if prefix else pattern
    raw = b"\0" + body[1:].encode() if body.startswith("@") else body.encode()
    if not prefix:
        raw += b"\0"
    if len(raw) > UNIX_PATH_MAX:
        raise ValueError(f"unix socket path longer than {UNIX_PATH_MAX - 1} bytes: {pattern!r}")
    if not prefix and not body:
        raise ValueError("empty unix socket path (use '*' for every path)")
    key = UnixKey()
    key.prefixlen = len(raw) * 8
    ctypes.memmove(key.path, raw, len(raw))
    return key


def unix_min_addrlen(key: UnixKey) -> int:
    """The smallest connect() addrlen whose sun_path can match ``key``.

    The program zero-fills what addrlen does not cover, so the key's trailing NULs (an exact
    path's terminator) need not be in the caller's buffer; every longer addrlen can match too
    (a NUL within it ends the path).
    """
    raw = bytes(key.path[: key.prefixlen // 8])
    return SOCKADDR_FAMILY_LEN + len(raw.rstrip(b"\0"))


def comm_key(comm: str) -> CommKey:
    """The hash key of a thread name: the kernel keeps 15 bytes and a NUL (``TASK_COMM_LEN``)."""
    raw = comm.encode()[: COMM_LEN - 1]
    if not raw:
        raise ValueError("empty comm")
    key = CommKey()
    key.comm = raw
    return key


# Where the IP address sits in ``addr`` (the sockaddr after its family): sockaddr_in has the
# port then the address; sockaddr_in6 the port, 4 bytes of flow info, then the address.
_INET_ADDR = (2, 4)
_INET6_ADDR = (6, 16)


def decoder(sink: Callable[[ConnectEvent], object]) -> Callable[[object, int, int], int]:
    """A BCC buffer callback that decodes each event and hands it to ``sink`` (no I/O).

    Every address and comm string is built once and then found by its raw bytes.
    """
    addresses: dict[tuple[int, bytes], str] = {}
    comms: dict[bytes, str] = {}
    from_address = RawEvent.from_address
    string_at = ctypes.string_at
    base = RawEvent.addr.offset
    new_event = tuple.__new__

    def callback(_ctx: object, data: int, _size: int) -> int:
        raw = from_address(data)
        kind = raw.kind
        if (kind & KIND_MASK) != EV_CONNECT:
            sink(_after(raw.time_ns, raw.tgid, raw.tid, raw.cgroup_id, raw.family, kind, raw.fd))
            return 0
        family = raw.family
        key = (family, string_at(data + base, raw.addrlen))
        address = addresses.get(key)
        if address is None:
            address = _address(family, key[1])
            if len(addresses) >= _CACHE_MAX:
                addresses.clear()
            addresses[key] = address
        comm_raw = raw.comm
        comm = comms.get(comm_raw)
        if comm is None:
            comm = comm_raw.decode(errors="backslashreplace")
            if len(comms) >= _CACHE_MAX:
                comms.clear()
            comms[comm_raw] = comm
        port = raw.port if family in (AF_INET, AF_INET6) else None
        name = _FAMILY_NAMES.get(family, "other")
        sink(
            new_event(
                ConnectEvent,
                (
                    raw.time_ns,
                    raw.tgid,
                    raw.tid,
                    raw.cgroup_id,
                    comm,
                    name,
                    address,
                    port,
                    raw.fd,
                    "connect",
                    bool(kind & EVF_EXCLUDED),
                ),
            )
        )
        return 0

    return callback


# One ring buffer record: the 8-byte header (length, page offset), struct oci_connect_event,
# padding to 8 bytes.
_RECORD = struct.Struct("<I4xQQIIHHHH16s108si")
EVENT_SIZE = 160
assert _RECORD.size == 168


def batch_decoder() -> Callable[[memoryview, list[ConnectEvent]], int]:
    """Decodes runs of ring buffer records (header included) read straight from the ring.

    Same events as ``decoder``; stops at the first record whose header is not a plain
    submitted event (busy or discarded) and returns how many it decoded. The header is read
    before the sample (struct unpacks in order), which with x86-64's load ordering is the
    acquire load the protocol needs.
    """
    # (family, addrlen, addr) -> (family name, address, whether the port is reported)
    addresses: dict[tuple[int, int, bytes], tuple[Family, str, bool]] = {}
    comms: dict[bytes, str] = {}
    iter_unpack = _RECORD.iter_unpack
    new_event = tuple.__new__
    inet_families = (AF_INET, AF_INET6)

    def decode(chunk: memoryview, out: list[ConnectEvent]) -> int:
        append = out.append
        done = 0
        for record in iter_unpack(chunk):
            length, t, cgroup, tgid, tid, family, port, addrlen, kind, comm_raw, addr, fd = record
            if length != EVENT_SIZE:
                break
            done += 1
            if (kind & KIND_MASK) != EV_CONNECT:
                append(_after(t, tgid, tid, cgroup, family, kind, fd))
                continue
            key = (family, addrlen, addr)
            known = addresses.get(key)
            if known is None:
                known = (
                    _FAMILY_NAMES.get(family, "other"),
                    _address(family, addr[:addrlen]),
                    family in inet_families,
                )
                if len(addresses) >= _CACHE_MAX:
                    addresses.clear()
                addresses[key] = known
            comm = comms.get(comm_raw)
            if comm is None:
                comm = comm_raw.split(b"\0", 1)[0].decode(errors="backslashreplace")
                if len(comms) >= _CACHE_MAX:
                    comms.clear()
                comms[comm_raw] = comm
            name, address, inet = known
            append(
                new_event(
                    ConnectEvent,
                    (
                        t,
                        tgid,
                        tid,
                        cgroup,
                        comm,
                        name,
                        address,
                        port if inet else None,
                        fd,
                        "connect",
                        bool(kind & EVF_EXCLUDED),
                    ),
                )
            )
        return done

    return decode


def _after(
    time_ns: int, tgid: int, tid: int, cgroup_id: int, family: int, kind: int, fd: int
) -> ConnectEvent:
    """An event after a connect: a lifetime event (``failed``, ``close``, ``exit``: no address,
    comm or cgroup id) or a ``send`` (the sender's cgroup id, family ``unix``)."""
    number = kind & KIND_MASK
    name = KINDS[number] if number < len(KINDS) else "close"
    return ConnectEvent(
        time_ns, tgid, tid, cgroup_id, "", _FAMILY_NAMES.get(family, "other"), "", None, fd, name
    )


def _address(family: int, addr: bytes) -> str:
    """``addr`` (the sockaddr after its family) as ConnectEvent.address."""
    if family == AF_UNIX:
        return _unix_address(addr)
    if family in (AF_INET, AF_INET6):
        port = int.from_bytes(addr[:2], "big")
        start, size = _INET_ADDR if family == AF_INET else _INET6_ADDR
        ip = socket.inet_ntop(
            socket.AF_INET if family == AF_INET else socket.AF_INET6, addr[start : start + size]
        )
        return f"{ip}:{port}" if family == AF_INET else f"[{ip}]:{port}"
    return ""


def _unix_address(path: bytes) -> str:
    """A sun_path as passed to connect(): up to its NUL, or ``@name`` for an abstract socket.

    An abstract name is all of its bytes (connect's addrlen says how many); trailing NULs, which
    callers that pass ``sizeof(struct sockaddr_un)`` leave, are dropped. Undecodable bytes are
    backslash-escaped.
    """
    if path[:1] == b"\0":
        return "@" + path[1:].rstrip(b"\0").decode(errors="backslashreplace")
    return path.split(b"\0", 1)[0].decode(errors="backslashreplace")
