"""``ociresolve serve`` over its life as a process: a SIGHUP is logged and the daemon serves
on; of two daemons started at once on one socket exactly one serves and the other exits 2 with
the reason, leaving the winner's socket in place; a stale socket of a dead daemon is replaced;
and the claim on a socket path is an flock on a lock file next to it, held while serving."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import APP_PID, Node, api_server, free_port

from ociresolve import OciresolveError, Resolver
from ociresolve.api.client import DaemonClient
from ociresolve.daemon.server import ApiServer

START_WITHIN = 20.0
RACE_ROUNDS = 6
CONTENDERS = 3


def serve(node: Node, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ociresolve.cli",
            "serve",
            "--socket",
            str(path),
            *node.node_args(),
            "--no-cri",
            "--metrics-address",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NODE_NAME": "node-7"},
    )


def answers(path: Path) -> bool:
    try:
        with DaemonClient(str(path), timeout=2.0) as client:
            return client.lookup_pid(APP_PID).status == "found"
    except (OSError, OciresolveError):
        return False


def wait_answering(process: subprocess.Popen[str], path: Path) -> None:
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited {process.returncode}: {process.communicate()[1]}")
        if path.exists() and answers(path):
            return
        time.sleep(0.05)
    pytest.fail("serve never answered")


def end(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=10.0)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err


# -- SIGHUP ----------------------------------------------------------------------------------


def test_sighup_is_logged_and_the_daemon_serves_on(node: Node, sockets: Path) -> None:
    path = sockets / "api.sock"
    process = serve(node, path)
    try:
        wait_answering(process, path)
        for _ in range(3):
            process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert process.poll() is None, process.communicate()[1]
        assert answers(path)
    finally:
        code, err = end(process)
    assert code == 0, err
    assert "SIGHUP" in err
    assert "Traceback" not in err
    assert not path.exists()


# -- two daemons on one socket ---------------------------------------------------------------


def test_of_daemons_started_at_once_exactly_one_serves(node: Node, sockets: Path) -> None:
    path = sockets / "api.sock"
    for round_ in range(RACE_ROUNDS):
        if round_ % 2:  # every other round, over a stale socket of a killed daemon
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(str(path))
            stale.close()
        processes = [serve(node, path) for _ in range(CONTENDERS)]
        try:
            deadline = time.monotonic() + START_WITHIN
            while sum(p.poll() is None for p in processes) > 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)  # a second one that would still be starting has had its chance
            winners = [p for p in processes if p.poll() is None]
            assert len(winners) == 1, f"round {round_}: {len(winners)} daemons serve"
            (winner,) = winners
            for loser in processes:
                if loser is not winner:
                    code, err = end(loser)
                    assert code == 2, f"round {round_}: {err}"
                    assert f"another daemon is serving on {path}" in err
                    assert "Traceback" not in err
            wait_answering(winner, path)
            time.sleep(0.1)
            assert winner.poll() is None
            assert answers(path), f"round {round_}: the winner's socket is gone"
        finally:
            results = [end(p) for p in processes]
        assert not path.exists()
        assert sum(code == 0 for code, _ in results) == 1, results


# -- the claim on the socket path ------------------------------------------------------------


@pytest.fixture
def resolver(node: Node) -> Iterator[Resolver]:
    resolver = node.resolver().start()
    yield resolver
    resolver.close()


def test_a_held_lock_refuses_and_leaves_the_socket(resolver: Resolver, sockets: Path) -> None:
    """Another daemon, mid start-up, holds the lock: its socket (or none yet) is left as is."""
    path = sockets / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OciresolveError, match="another daemon is serving on"):
            api_server(resolver, path).start()
        assert path.exists()  # not the refused one's to remove
    finally:
        os.close(fd)
    server = api_server(resolver, path).start()  # the lock is free: the stale one is replaced
    try:
        assert answers(path)
    finally:
        server.stop(0.2)
    assert not path.exists()


def test_the_lock_is_held_while_serving_and_freed_on_stop(
    resolver: Resolver, sockets: Path
) -> None:
    path = sockets / "api.sock"
    server = api_server(resolver, path).start()
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        server.stop(0.2)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        server.stop(0.2)


def test_a_symlink_at_the_lock_path_is_refused(resolver: Resolver, sockets: Path) -> None:
    path = sockets / "api.sock"
    target = sockets / "precious"
    target.write_text("precious\n")
    Path(f"{path}.lock").symlink_to(target)
    with pytest.raises(OciresolveError, match="cannot serve on"):
        api_server(resolver, path).start()
    assert target.read_text() == "precious\n"
    assert not path.exists()


def test_servers_started_at_once_in_one_process_exactly_one_serves(
    resolver: Resolver, sockets: Path
) -> None:
    """The same race without process start-up to spread the contenders: a barrier releases
    them together, round after round."""
    path = sockets / "api.sock"
    for round_ in range(RACE_ROUNDS * 3):
        servers = [api_server(resolver, path) for _ in range(CONTENDERS)]
        barrier = threading.Barrier(len(servers))
        errors: list[OciresolveError] = []

        def start(
            server: ApiServer,
            barrier: threading.Barrier = barrier,
            errors: list[OciresolveError] = errors,
        ) -> None:
            barrier.wait()
            try:
                server.start()
            except OciresolveError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(START_WITHIN)
        try:
            assert len(errors) == len(servers) - 1, f"round {round_}: {errors}"
            assert all("another daemon is serving on" in str(e) for e in errors)
            for server in servers:  # the losers' stop() must not take the winner's socket
                if not server.serving:
                    server.stop(0.2)
            assert answers(path), f"round {round_}: the winner's socket is gone"
        finally:
            for server in servers:
                server.stop(0.2)
        assert not path.exists()
