"""The deprecation-warnings client and ``ociresolve deprecations``, against a fake containerd
speaking the real protocol on a unix socket: listed, too old, hanging, absent."""

from __future__ import annotations

import json
import os
import shutil
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakecri import socket_path
from fakeintrospection import V1ALPHA2, V1ALPHA2_MESSAGE, FakeIntrospection, warning
from hypothesis import given
from hypothesis import strategies as st

from ociresolve.cli import main
from ociresolve.deprecations import (
    Deprecation,
    IntrospectionClient,
    RuntimeUnreachable,
    ServiceMissing,
    containerd_socket,
)
from ociresolve.deprecations.client import CONTAINERD_SOCKETS, parse_version
from ociresolve.hostpaths import DEFAULT_CRI_SOCKETS, HostPaths
from ociresolve.render import rfc3339_milli, rfc3339_nano

T1 = 1_750_098_090_959_558_222  # 2025-06-16T18:21:30.959558222Z
T2 = 1_750_098_100_000_000_000  # 2025-06-16T18:21:40Z
PULL = "io.containerd.deprecation/pull-schema-1-image"
PULL_MESSAGE = "Schema 1 images are deprecated since containerd v1.7 and removed in v2.0."


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeIntrospection]:
    server = FakeIntrospection(socket_path(tmp_path, "containerd.sock")).start()
    try:
        yield server
    finally:
        server.stop()


def listed(fake: FakeIntrospection) -> None:
    fake.set_warnings([warning(V1ALPHA2, T1, V1ALPHA2_MESSAGE), warning(PULL, T2, PULL_MESSAGE)])


# -- the client --------------------------------------------------------------------------------


def test_lists_the_warnings_with_their_times(fake: FakeIntrospection) -> None:
    listed(fake)
    with IntrospectionClient(fake.socket) as client:
        found = client.deprecations()
    assert found == [
        Deprecation(id=V1ALPHA2, message=V1ALPHA2_MESSAGE, last_occurrence_ns=T1),
        Deprecation(id=PULL, message=PULL_MESSAGE, last_occurrence_ns=T2),
    ]
    assert found[0].last_occurrence == datetime(2025, 6, 16, 18, 21, 30, 959558, tzinfo=UTC)
    assert fake.count("Version") == 0  # a list needs no version


def test_a_warning_without_a_time(fake: FakeIntrospection) -> None:
    fake.set_warnings([warning(V1ALPHA2, None, V1ALPHA2_MESSAGE)])
    with IntrospectionClient(fake.socket) as client:
        (found,) = client.deprecations()
    assert found.last_occurrence_ns is None
    assert found.last_occurrence is None


def test_no_warnings_on_a_new_containerd_is_an_empty_list(fake: FakeIntrospection) -> None:
    with IntrospectionClient(fake.socket) as client:
        assert client.deprecations() == []
    assert fake.count("Version") == 1


def test_containerd_1_6_answers_server_without_warnings(fake: FakeIntrospection) -> None:
    fake.mode, fake.version = "old", "1.6.20~ds1"
    with IntrospectionClient(fake.socket) as client:
        with pytest.raises(ServiceMissing) as raised:
            client.deprecations()
        with pytest.raises(ServiceMissing):
            client.deprecations()
    assert raised.value.version == "1.6.20~ds1"
    assert str(raised.value).startswith(
        "containerd 1.6.20~ds1 has no deprecation warnings; they need containerd >= 1.7"
    )
    assert fake.socket in str(raised.value)
    assert fake.count("Version") == 1  # asked once


@pytest.mark.parametrize(
    ("version", "who"), [("1.4.13", "containerd 1.4.13"), (None, "the runtime")]
)
def test_no_server_method_at_all(fake: FakeIntrospection, version: str | None, who: str) -> None:
    fake.mode, fake.version = "unimplemented", version
    with IntrospectionClient(fake.socket) as client, pytest.raises(ServiceMissing) as raised:
        client.deprecations()
    assert raised.value.code == "UNIMPLEMENTED"
    assert raised.value.reason == f"{who} has no deprecation warnings; they need containerd >= 1.7"


def test_an_unparsable_version_trusts_the_empty_list(fake: FakeIntrospection) -> None:
    fake.mode, fake.version = "old", "dev"
    with IntrospectionClient(fake.socket) as client:
        assert client.deprecations() == []


def test_a_hanging_runtime_meets_the_deadline(fake: FakeIntrospection) -> None:
    fake.mode = "hang"
    started = time.monotonic()
    with (
        IntrospectionClient(fake.socket, timeout=0.2) as client,
        pytest.raises(RuntimeUnreachable) as raised,
    ):
        client.deprecations()
    assert time.monotonic() - started < 2.0
    assert raised.value.code == "DEADLINE_EXCEEDED"


def test_no_socket(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnreachable) as raised:
        IntrospectionClient(str(tmp_path / "missing.sock")).deprecations()
    assert "No such file or directory" in str(raised.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(RuntimeUnreachable, match="not a socket"):
        IntrospectionClient(str(tmp_path / "file")).deprecations()


def test_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    path = socket_path(tmp_path, "dead.sock")
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as bound:
        bound.bind(path)  # bound, never listening: connect() is refused
        with pytest.raises(RuntimeUnreachable) as raised:
            IntrospectionClient(path, timeout=1.0).deprecations()
    assert raised.value.code == "UNAVAILABLE"


def test_the_runtime_coming_back(fake: FakeIntrospection) -> None:
    listed(fake)
    client = IntrospectionClient(fake.socket, timeout=1.0)
    assert len(client.deprecations()) == 2
    fake.stop()
    with pytest.raises(RuntimeUnreachable):
        client.deprecations()
    fake.start()
    assert len(client.deprecations()) == 2
    client.close()


def test_importing_it_imports_no_grpc() -> None:
    code = "import sys, ociresolve.deprecations; assert 'grpc' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1.7.13", (1, 7)),
        ("v2.0.0", (2, 0)),
        ("1.6.20~ds1", (1, 6)),
        ("v1.7.11-k3s2", (1, 7)),
        ("v1.10.0", (1, 10)),
        ("dev", None),
        ("", None),
    ],
)
def test_parse_version(text: str, number: tuple[int, int] | None) -> None:
    assert parse_version(text) == number


def test_the_default_sockets_are_containerds() -> None:
    assert DEFAULT_CRI_SOCKETS[:2] == CONTAINERD_SOCKETS


@given(st.integers(min_value=-62_135_596_800 * 10**9, max_value=253_402_300_799 * 10**9))
def test_rfc3339_nano_round_trips(time_ns: int) -> None:
    text = rfc3339_nano(time_ns)
    assert text.endswith("Z")
    whole, _, fraction = text[:-1].partition(".")
    assert not fraction.endswith("0")
    stamp = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    seconds = int((stamp - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    assert seconds * 10**9 + int(fraction.ljust(9, "0") or "0") == time_ns
    assert rfc3339_milli(time_ns).startswith(whole + ".")


def test_rfc3339_like_go() -> None:
    assert rfc3339_nano(T1) == "2025-06-16T18:21:30.959558222Z"
    assert rfc3339_nano(T2) == "2025-06-16T18:21:40Z"
    assert rfc3339_nano(T2 + 500_000_000) == "2025-06-16T18:21:40.5Z"
    assert rfc3339_milli(T1) == "2025-06-16T18:21:30.959Z"


# -- ociresolve deprecations -------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["deprecations", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table(fake: FakeIntrospection, capsys: pytest.CaptureFixture[str]) -> None:
    listed(fake)
    code, out, err = run(capsys, "--containerd-socket", fake.socket)
    assert (code, err) == (0, "")
    width = len(PULL)  # the longest id
    assert out.splitlines() == [
        f"{'ID':<{width}}  LAST OCCURRENCE                 MESSAGE",
        f"{V1ALPHA2:<{width}}  2025-06-16T18:21:30.959558222Z  {V1ALPHA2_MESSAGE}",
        f"{PULL}  2025-06-16T18:21:40Z            {PULL_MESSAGE}",
    ]


def test_cli_json(fake: FakeIntrospection, capsys: pytest.CaptureFixture[str]) -> None:
    listed(fake)
    fake.occur("io.containerd.deprecation/go-plugins", 0, "no\ntime")
    fake.warnings[-1].ClearField("last_occurrence")
    code, out, _ = run(capsys, "--containerd-socket", fake.socket, "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "id": V1ALPHA2,
            "message": V1ALPHA2_MESSAGE,
            "last_occurrence": "2025-06-16T18:21:30.959558222Z",
        },
        {"id": PULL, "message": PULL_MESSAGE, "last_occurrence": "2025-06-16T18:21:40Z"},
        {
            "id": "io.containerd.deprecation/go-plugins",
            "message": "no\ntime",
            "last_occurrence": None,
        },
    ]


def test_cli_escapes_what_it_prints(
    fake: FakeIntrospection, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.set_warnings([warning("x\x1b[31m", T1, "line\nbreak")])
    code, out, _ = run(capsys, "--containerd-socket", fake.socket)
    assert code == 0
    assert len(out.splitlines()) == 2
    assert "\x1b" not in out


def test_cli_none(fake: FakeIntrospection, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--containerd-socket", fake.socket) == (
        0,
        "ID  LAST OCCURRENCE  MESSAGE\n",
        "",
    )
    assert run(capsys, "--containerd-socket", fake.socket, "--json") == (0, "", "")


def test_cli_old_containerd(fake: FakeIntrospection, capsys: pytest.CaptureFixture[str]) -> None:
    fake.mode, fake.version = "old", "1.6.20"
    code, out, err = run(capsys, "--containerd-socket", fake.socket)
    assert (code, out) == (1, "")
    assert err == (
        "ociresolve: containerd 1.6.20 has no deprecation warnings; they need containerd >= 1.7 "
        f"(at {fake.socket})\n"
    )


def test_cli_unreachable(fake: FakeIntrospection, capsys: pytest.CaptureFixture[str]) -> None:
    fake.mode = "hang"
    code, out, err = run(capsys, "--containerd-socket", fake.socket, "--timeout", "0.2")
    assert (code, out) == (2, "")
    assert "DEADLINE_EXCEEDED" in err
    fake.stop()
    code, out, err = run(capsys, "--containerd-socket", fake.socket)
    assert (code, out) == (2, "")
    assert err == f"ociresolve: containerd {fake.socket}: No such file or directory\n"


@pytest.fixture
def host_root() -> Iterator[Path]:
    """A short host root: the sockets below it must fit in sun_path."""
    root = Path(tempfile.mkdtemp(prefix="h-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("default", CONTAINERD_SOCKETS)
def test_cli_finds_containerd_below_the_host_root(
    host_root: Path, default: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = host_root / default.lstrip("/")
    path.parent.mkdir(parents=True)
    (host_root / "run/crio").mkdir(parents=True)
    (host_root / "run/crio/crio.sock").write_text("")  # not containerd's: never asked
    server = FakeIntrospection(str(path)).start()
    try:
        listed(server)
        code, out, _ = run(capsys, "--host-root", str(host_root), "--json")
        assert code == 0
        assert len(out.splitlines()) == 2
        assert containerd_socket(HostPaths(str(host_root))) == str(path)
        # An explicit socket is a host path too.
        code, out, _ = run(capsys, "--host-root", str(host_root), "--containerd-socket", default)
        assert code == 0
    finally:
        server.stop()


def test_cli_no_containerd_on_the_host(host_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--host-root", str(host_root))
    assert (code, out) == (2, "")
    first, k3s = (os.path.join(str(host_root), s.lstrip("/")) for s in CONTAINERD_SOCKETS)
    assert err == (
        f"ociresolve: containerd {first}: no socket there, nor at {k3s} (see --containerd-socket)\n"
    )
