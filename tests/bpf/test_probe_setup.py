"""ConnectProbe's arguments, filter keys and environment checks: no BPF, no root needed."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

import ociresolve
from ociresolve.tracer import _environment, _wire
from ociresolve.tracer.errors import TracerUnavailable
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.probe import BPF_DIR_ENV, ConnectProbe


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"families": ("unix", "tcp")}, "families"),
        ({"families": ()}, "families"),
        ({"ring_pages": 3}, "power of two"),
        ({"ports": [70000]}, "out of range"),
        ({"unix_paths": ["/" + "x" * 107]}, "longer than"),
        ({"unix_paths": [""]}, "empty"),
        ({"exclude_comms": [""]}, "empty comm"),
        ({"unix_paths": [f"/p{i}" for i in range(65)]}, "at most 64"),
        ({"activity": True}, "activity needs lifetimes"),
        ({"lifetimes": True, "activity_interval_ns": -1}, "activity_interval_ns"),
        ({"lifetimes": True, "activity_interval_ns": 61 * 10**9}, "activity_interval_ns"),
        ({"ignore_tgid": 0}, "ignore_tgid"),
        ({"ignore_tgid": 1 << 32}, "ignore_tgid"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectProbe(**kwargs)  # type: ignore[arg-type]


def test_activity_is_compiled_in_only_with_lifetimes_once_started() -> None:
    probe = ConnectProbe(lifetimes=True, activity=True)
    assert probe.activity is False  # decided by start(), where the tracepoint is checked
    assert "-DOCI_ACTIVITY" not in probe.cflags()
    assert probe.cflags(activity=True)[-2:] == ["-DOCI_LIFETIMES", "-DOCI_ACTIVITY"]
    assert "-DOCI_ACTIVITY" not in ConnectProbe().cflags(activity=True)


def test_the_config_carries_the_interval_and_the_ignored_process() -> None:
    config = ConnectProbe(lifetimes=True, activity_interval_ns=7, ignore_tgid=4242)._config()
    assert (config.activity_interval_ns, config.ignore_tgid) == (7, 4242)
    config = ConnectProbe()._config()
    assert (config.activity_interval_ns, config.ignore_tgid) == (5_000_000, 0)


def test_unix_keys() -> None:
    exact = _wire.unix_key("/run/a.sock")
    assert exact.prefixlen == (len("/run/a.sock") + 1) * 8  # with its NUL: exact
    assert bytes(exact.path)[:12] == b"/run/a.sock\0"
    prefix = _wire.unix_key("/run/*")
    assert prefix.prefixlen == len("/run/") * 8
    assert _wire.unix_key("*").prefixlen == 0
    abstract = _wire.unix_key("@name")
    assert bytes(abstract.path)[:6] == b"\0name\0"
    assert _wire.unix_key("/" + "x" * 106).prefixlen == 108 * 8


def test_comm_keys_are_truncated_like_the_kernel() -> None:
    assert _wire.comm_key("containerd-shim-runc-v2").comm == b"containerd-shim"


def test_unix_address_decoding() -> None:
    assert _wire._unix_address(b"/run/x.sock\0garbage") == "/run/x.sock"
    assert _wire._unix_address(b"\0abs\0\0\0") == "@abs"
    assert _wire._unix_address(b"/bad\xff") == "/bad\\xff"


def _raw(**fields: object) -> _wire.RawEvent:
    comm = fields.pop("comm", b"")
    addr = fields.pop("addr", b"")
    raw = _wire.RawEvent(**fields)
    raw.comm = comm
    ctypes.memmove(raw.addr, addr, len(addr))  # type: ignore[arg-type]
    return raw


# Every kind of event, as the C side fills them.
_RAWS = [
    _raw(
        time_ns=5,
        cgroup_id=7,
        tgid=10,
        tid=11,
        family=2,
        port=443,
        addrlen=6,
        fd=3,
        comm=b"curl",
        addr=bytes([1, 187, 10, 0, 0, 1]),
    ),
    _raw(
        time_ns=6,
        cgroup_id=8,
        tgid=20,
        tid=21,
        family=1,
        addrlen=8,
        fd=4,
        comm=b"crictl",
        addr=b"/run/c.s",
        kind=_wire.EV_CONNECT | _wire.EVF_EXCLUDED,
    ),
    _raw(time_ns=9, tgid=10, tid=12, kind=2, fd=3),
    _raw(time_ns=10, cgroup_id=9, tgid=20, tid=22, family=1, kind=_wire.EV_SEND, fd=4),
]
_EXPECTED = [
    (5, 10, 11, 7, "curl", "inet", "10.0.0.1:443", 443, 3, "connect", False),
    (6, 20, 21, 8, "crictl", "unix", "/run/c.s", None, 4, "connect", True),
    (9, 10, 12, 0, "", "other", "", None, 3, "close", False),
    (10, 20, 22, 9, "", "unix", "", None, 4, "send", False),
]


def test_decoder_reads_the_c_layout() -> None:
    seen: list[object] = []
    decode = _wire.decoder(seen.append)
    for raw in _RAWS:
        decode(None, ctypes.addressof(raw), ctypes.sizeof(raw))
    assert seen == _EXPECTED


def test_both_decoders_give_the_same_events() -> None:
    """The ring reader's batch decoder reads records (an 8-byte header, the event, padding)."""
    ring = b"".join(
        struct.pack("<II", _wire.EVENT_SIZE, 0) + bytes(raw) + bytes(-_wire.EVENT_SIZE % 8)
        for raw in _RAWS
    )
    out: list[object] = []
    assert _wire.batch_decoder()(memoryview(ring), out) == len(_RAWS)
    assert out == _EXPECTED
    assert [type(e) for e in out] == [ConnectEvent] * len(_RAWS)


def test_source_path_default_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BPF_DIR_ENV, raising=False)
    default = ConnectProbe().source_path
    # The package's own copy (package data in a wheel), which in a checkout is the repository's.
    assert default == Path(ociresolve.__file__).parent / "bpf" / "connect.bpf.c"
    assert default.resolve() == Path(__file__).resolve().parents[2] / "bpf" / "connect.bpf.c"
    monkeypatch.setenv(BPF_DIR_ENV, str(tmp_path))
    assert ConnectProbe().source_path == tmp_path / "connect.bpf.c"


def test_privileges_need_sys_admin_or_bpf_and_perfmon(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    with pytest.raises(TracerUnavailable, match="CAP_BPF and CAP_PERFMON"):
        _environment.check_privileges(status)
    status.write_text(f"CapEff:\t{(1 << 38) | (1 << 39):016x}\n")
    _environment.check_privileges(status)
    status.write_text(f"CapEff:\t{1 << 21:016x}\n")
    _environment.check_privileges(status)


def test_missing_kernel_headers_say_what_to_do() -> None:
    with pytest.raises(
        TracerUnavailable, match=r"no kernel headers at /lib/modules/0\.0-none/build"
    ):
        _environment.check_kernel_headers("0.0-none")


def test_ringbuf_needs_5_8() -> None:
    assert _environment.ringbuf_supported("5.8.0-1-amd64")
    assert _environment.ringbuf_supported("6.18.44-fc")
    assert not _environment.ringbuf_supported("5.4.0-150-generic")
