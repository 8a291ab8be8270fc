"""The API's unix socket: its mode and owner, a stale socket replaced, a live one or another
kind of file refused, and the socket removed on stop."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import APP_PID, Node, api_server, serving, socket_dir

from ociresolve import OciresolveError, Resolver
from ociresolve.api.client import DaemonClient

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def resolver(node: Node) -> Iterator[Resolver]:
    resolver = node.resolver().start()
    yield resolver
    resolver.close()


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    with socket_dir(tmp_path) as directory:
        yield directory


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def answers(path: Path) -> bool:
    with DaemonClient(str(path)) as client:
        return client.lookup_pid(APP_PID).status == "found"


def test_the_socket_is_private_by_default(resolver: Resolver, directory: Path) -> None:
    path = directory / "api.sock"
    with serving(resolver, path):
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode(path) == 0o600
        assert answers(path)


def test_the_umask_does_not_widen_the_socket(resolver: Resolver, directory: Path) -> None:
    previous = os.umask(0)
    try:
        with serving(resolver, directory / "api.sock"):
            assert mode(directory / "api.sock") == 0o600
    finally:
        os.umask(previous)


@pytest.mark.parametrize("wanted", [0o660, 0o666, 0o400])
def test_socket_mode(resolver: Resolver, directory: Path, wanted: int) -> None:
    path = directory / "api.sock"
    with serving(resolver, path, mode=wanted):
        assert mode(path) == wanted


def test_socket_owner(resolver: Resolver, directory: Path) -> None:
    path = directory / "api.sock"
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (65534, 65534)  # root may give it away
    with serving(resolver, path, owner=owner):
        info = os.lstat(path)
        assert (info.st_uid, info.st_gid) == owner


def test_a_missing_directory_is_created(resolver: Resolver, directory: Path) -> None:
    path = directory / "run" / "ociresolve" / "api.sock"
    with serving(resolver, path):
        assert answers(path)


def test_a_stale_socket_is_replaced(resolver: Resolver, directory: Path) -> None:
    """Left by a daemon that was killed: a socket file nobody listens on."""
    path = directory / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with serving(resolver, path):
        assert answers(path)


def test_a_live_socket_is_refused(resolver: Resolver, directory: Path) -> None:
    path = directory / "api.sock"
    with serving(resolver, path):
        second = api_server(resolver, path)
        with pytest.raises(OciresolveError, match="another daemon is serving on"):
            second.start()
        assert answers(path)  # the first one is untouched
    assert not path.exists()


def test_a_socket_of_another_program_is_refused(resolver: Resolver, directory: Path) -> None:
    """Something listens there, even if it is not an ociresolve daemon: never steal it."""
    path = directory / "api.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen()
    try:
        with pytest.raises(OciresolveError, match="another daemon"):
            api_server(resolver, path).start()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_a_path_that_is_not_a_socket_is_refused(
    resolver: Resolver, directory: Path, kind: str
) -> None:
    path = directory / "api.sock"
    if kind == "file":
        path.write_text("precious\n")
    elif kind == "directory":
        path.mkdir()
    else:
        (directory / "target").write_text("precious\n")
        path.symlink_to(directory / "target")
    with pytest.raises(OciresolveError, match="is not a socket"):
        api_server(resolver, path).start()
    assert os.path.lexists(path)
    if kind != "directory":
        assert (directory / ("target" if kind == "symlink" else "api.sock")).read_text() == (
            "precious\n"
        )


def test_the_socket_is_removed_on_stop(resolver: Resolver, directory: Path) -> None:
    path = directory / "api.sock"
    server = api_server(resolver, path).start()
    assert answers(path)
    server.stop(0.2)
    assert not path.exists()
    assert not server.serving
    server.stop(0.2)  # twice is harmless


def test_a_restart_on_the_same_socket(resolver: Resolver, directory: Path) -> None:
    path = directory / "api.sock"
    for _ in range(2):
        with serving(resolver, path):
            assert answers(path)
        assert not path.exists()


def test_the_path_is_absolute(
    resolver: Resolver, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(directory)
    server = api_server(resolver, "api.sock")
    assert server.socket_path == str(directory / "api.sock")


def test_an_unusable_directory_is_an_error_not_a_hang(resolver: Resolver, directory: Path) -> None:
    (directory / "file").write_text("")
    with pytest.raises(OciresolveError, match="cannot serve on"):
        api_server(resolver, directory / "file" / "api.sock").start()
