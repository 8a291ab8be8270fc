"""The addrlen pre-filter (before the sockaddr is read) and the mmap ring buffer reader."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

import pytest
from probe_events import collect
from test_probe import connect_unix, run_storm

from ociresolve.tracer import _ringbuf
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.probe import ConnectProbe

bpf = pytest.mark.bpf

_libc = ctypes.CDLL(None, use_errno=True)


def raw_connect(family: socket.AddressFamily, kind: int, sockaddr: bytes, addrlen: int) -> None:
    """connect() with the caller's own bytes and addrlen (errors ignored: the call is made)."""
    with socket.socket(family, kind) as s:
        buffer = ctypes.create_string_buffer(sockaddr, max(len(sockaddr), 128))
        _libc.connect(s.fileno(), buffer, addrlen)


def unix_sockaddr(path: bytes, padded_to: int = 0) -> bytes:
    raw = struct.pack("<H", socket.AF_UNIX) + path
    return raw.ljust(padded_to, b"\0")


def mine(events: list[ConnectEvent]) -> list[ConnectEvent]:
    return [e for e in events if e.tgid == os.getpid()]


@bpf
def test_unix_addrlen_at_the_pre_filter_bound_and_below(sock_dir: Path) -> None:
    target = str(sock_dir / "exact.sock").encode()
    with ConnectProbe(unix_paths=[target.decode()], exclude_comms=()) as probe:
        assert probe.min_addrlen() == 2 + len(target)
        sockaddr = unix_sockaddr(target, 110)
        raw_connect(socket.AF_UNIX, socket.SOCK_STREAM, sockaddr, 2 + len(target) - 1)  # cut
        raw_connect(socket.AF_UNIX, socket.SOCK_STREAM, sockaddr, 2 + len(target))  # no NUL
        raw_connect(socket.AF_UNIX, socket.SOCK_STREAM, sockaddr, 2 + len(target) + 1)
        raw_connect(socket.AF_UNIX, socket.SOCK_STREAM, sockaddr, 110)  # sizeof(sockaddr_un)
        events = mine(collect(probe, lambda evs: len(mine(evs)) >= 3, timeout=2))
        assert probe.lost == 0
    assert [e.address for e in events] == [target.decode()] * 3


@bpf
def test_inet_connects_below_the_bound_are_not_reported_with_unix_and_inet6_traced(
    sock_dir: Path,
) -> None:
    target = sock_dir / "only-unix.sock"
    with ConnectProbe(families=("unix", "inet6"), unix_paths=[str(target)]) as probe:
        assert probe.min_addrlen() == 24  # inet6's 24 is the lowest: inet's 16 is below
        before = probe.matched
        inet = struct.pack("<H", socket.AF_INET) + struct.pack("!H4s8x", 9, b"\x7f\0\0\x01")
        for _ in range(50):
            raw_connect(socket.AF_INET, socket.SOCK_DGRAM, inet, 16)
        connect_unix(target)
        events = mine(collect(probe, lambda evs: bool(mine(evs)), timeout=2))
        assert [e.family for e in events] == ["unix"]
        assert probe.matched == before + 1


@bpf
def test_a_short_inet_addrlen_is_still_reported_when_inet_is_traced() -> None:
    port = 40000 + os.getpid() % 20000
    sockaddr = struct.pack("<H", socket.AF_INET) + struct.pack("!H4s", port, b"\x7f\0\0\x01")
    with ConnectProbe(families=("inet",), ports=[port]) as probe:
        assert probe.min_addrlen() == 8
        raw_connect(socket.AF_INET, socket.SOCK_DGRAM, sockaddr, 7)  # below: dropped unread
        raw_connect(socket.AF_INET, socket.SOCK_DGRAM, sockaddr, 8)  # the kernel refuses it
        events = mine(collect(probe, lambda evs: bool(mine(evs)), timeout=2))
    assert [(e.address, e.port) for e in events] == [(f"127.0.0.1:{port}", port)]


@bpf
def test_the_ring_is_read_through_mmap_and_wraps_around(sock_dir: Path) -> None:
    """One 4 KiB page holds 24 records of 168 bytes (not a divisor): records wrap around the
    end of the data area, which the double mapping keeps contiguous."""
    if not _ringbuf.supported():
        pytest.skip("the mmap reader is for x86-64")
    target = sock_dir / "w.sock"
    with ConnectProbe(unix_paths=[str(target)], ring_pages=1, exclude_comms=()) as probe:
        assert probe._ring is not None
        seen: list[ConnectEvent] = []
        for _ in range(40):
            for _ in range(7):
                connect_unix(target)
            seen.extend(mine(collect(probe, lambda evs: len(mine(evs)) >= 7, timeout=2)))
        assert probe.lost == 0
    assert len(seen) == 280
    assert {e.address for e in seen} == {str(target)}
    times = [e.time_ns for e in seen]
    assert times == sorted(times)


@bpf
def test_the_callback_fallback_gives_the_same_events(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = sock_dir / "f.sock"

    def capture() -> list[tuple[object, ...]]:
        with ConnectProbe(unix_paths=[str(target), "@" + target.name], exclude_comms=()) as p:
            connect_unix(target)
            connect_unix("@" + target.name)
            events = mine(collect(p, lambda evs: len(mine(evs)) >= 2, timeout=2))
            direct = p._ring is not None
        return [(direct, e.comm, e.family, e.address, e.port, e.cgroup_id) for e in events]

    direct = capture()
    monkeypatch.setattr(ConnectProbe, "_direct_ring", False)
    fallback = capture()
    assert [row[1:] for row in direct] == [row[1:] for row in fallback]
    assert len(direct) == 2
    assert {row[0] for row in fallback} == {False}
    assert {row[0] for row in direct} == {_ringbuf.supported()}


@bpf
def test_a_small_ring_drained_during_a_storm_accounts_for_every_event(
    sock_dir: Path, connect_storm: Path
) -> None:
    """The producer refills a 4 KiB ring while poll() drains it: each poll() returns after at
    most one ring's worth, and every matching connect is delivered or counted as lost."""
    target = str(sock_dir / "small.sock")
    with ConnectProbe(unix_paths=[target], ring_pages=1) as probe:
        result, events, pid = run_storm(probe, connect_storm, "unix", target, target, "20000", "1")
        delivered = len([e for e in events if e.tgid == pid])
        assert "matching=20000 " in result.stdout
        assert delivered + probe.lost == probe.matched == 20_000
        assert delivered > 0
