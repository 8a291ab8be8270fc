"""``ociresolve.Node``: one-shot answers from the node daemon when it answers, else from one scan
of the node; which one is said (``via``, the ``daemon`` step), and both agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import (
    APP_PID,
    FOREIGN_PID,
    HOST_PID,
    MISSING_PID,
    make_node,
    serving,
)
from daemonfakes import Node as FakeNode
from fakehost import FakeHost

import ociresolve
from ociresolve import Resolver
from ociresolve.daemon.server import ApiServer


@pytest.fixture
def fake(host: FakeHost) -> FakeNode:
    return make_node(host)


@pytest.fixture
def api(fake: FakeNode, sockets: Path) -> Iterator[ApiServer]:
    with (
        Resolver(host_root=str(fake.host.root), runtime_roots=fake.roots, cri=False) as resolver,
        serving(resolver, sockets / "api.sock") as api,
    ):
        yield api


def node(fake: FakeNode, **options: object) -> ociresolve.Node:
    """The fake node, scanned with the CRI off, and the daemon per ``options``."""
    return ociresolve.Node(
        host_root=str(fake.host.root),
        runtime_roots=fake.roots,
        cri=False,
        **options,  # type: ignore[arg-type]
    )


def test_constructing_opens_nothing(sockets: Path) -> None:
    ociresolve.Node(daemon_socket=str(sockets / "nothing-here.sock"))
    assert not (sockets / "nothing-here.sock").exists()


def test_the_daemon_answers(fake: FakeNode, api: ApiServer) -> None:
    answer = node(fake, daemon_socket=api.socket_path).lookup_pid(APP_PID, explain=True)
    assert answer.via == "daemon"
    assert answer.pid == APP_PID
    assert answer.meta is not None and answer.meta.container_id == fake.app
    assert answer.container_id == fake.app
    assert answer.source == "index"
    assert answer.init_pid == APP_PID
    assert [s.step for s in answer.steps] == ["daemon", "cgroup", "index"]
    assert answer.steps[0].result == f"{api.socket_path}: answered"


def test_the_daemons_steps_only_with_explain(fake: FakeNode, api: ApiServer) -> None:
    answer = node(fake, daemon_socket=api.socket_path).lookup_pid(APP_PID)
    assert [s.step for s in answer.steps] == ["daemon"]


def test_a_daemon_that_does_not_answer_means_a_scan(fake: FakeNode, sockets: Path) -> None:
    answer = node(fake, daemon_socket=str(sockets / "absent.sock")).lookup_pid(APP_PID)
    assert answer.via == "scan"
    assert answer.source == "bundle"
    assert answer.meta is not None and answer.meta.container_id == fake.app
    assert answer.init_pid == APP_PID
    first, *rest = answer.steps
    assert first.step == "daemon"
    assert "scanning the node once instead" in first.result
    assert [s.step for s in rest] == ["cgroup", "index", "bundle"]


def test_daemon_false_never_asks(fake: FakeNode, api: ApiServer) -> None:
    """The daemon answers, but is not asked: no ``daemon`` step, the scan's steps only."""
    answer = node(fake, daemon=False, daemon_socket=api.socket_path).lookup_pid(APP_PID)
    assert answer.via == "scan"
    assert [s.step for s in answer.steps] == ["cgroup", "index", "bundle"]


def test_daemon_true_asks_for_another_root_too(fake: FakeNode, api: ApiServer) -> None:
    answer = node(fake, daemon=True, daemon_socket=api.socket_path).lookup_pid(APP_PID)
    assert answer.via == "daemon"


def test_who_is_asked_by_default() -> None:
    """The daemon answers for the node as it is: not for another host root or runtime roots,
    unless its socket is named."""
    assert ociresolve.Node().asks_daemon
    assert not ociresolve.Node(host_root="/host").asks_daemon
    assert not ociresolve.Node(runtime_roots=["/run/x"]).asks_daemon
    assert ociresolve.Node(host_root="/host", daemon_socket="/run/d.sock").asks_daemon
    assert not ociresolve.Node(daemon=False, daemon_socket="/run/d.sock").asks_daemon


def test_the_socket_from_the_environment(
    fake: FakeNode, api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCIRESOLVE_SOCKET", api.socket_path)
    answer = node(fake, daemon=True).lookup_pid(APP_PID)
    assert (answer.via, answer.steps[0].result) == ("daemon", f"{api.socket_path}: answered")


@pytest.mark.parametrize("pid", [APP_PID, HOST_PID, FOREIGN_PID])
def test_both_ways_agree(fake: FakeNode, api: ApiServer, pid: int) -> None:
    asked = node(fake, daemon_socket=api.socket_path).lookup_pid(pid)
    scanned = node(fake, daemon=False).lookup_pid(pid)
    assert (asked.via, scanned.via) == ("daemon", "scan")
    assert asked.meta == scanned.meta
    assert asked.container_id == scanned.container_id
    if pid == HOST_PID:
        assert asked.container_id is None
    if pid == FOREIGN_PID:
        assert asked.container_id == fake.foreign and asked.meta is None


@pytest.mark.parametrize("daemon", [True, False])
def test_no_such_process(fake: FakeNode, api: ApiServer, daemon: bool) -> None:
    with pytest.raises(ociresolve.ProcessNotFound):
        node(fake, daemon=daemon, daemon_socket=api.socket_path).lookup_pid(MISSING_PID)


def test_containers_from_the_daemon_and_from_a_scan(
    fake: FakeNode, api: ApiServer, sockets: Path
) -> None:
    asked = node(fake, daemon_socket=api.socket_path).containers()
    fallen_back = node(fake, daemon_socket=str(sockets / "absent.sock")).containers()
    scanned = node(fake, daemon=False).containers()
    assert (asked.via, fallen_back.via, scanned.via) == ("daemon", "scan", "scan")
    assert asked.containers == scanned.containers == fallen_back.containers
    # One order whoever answers: namespace, pod, the sandbox first, then containers by name.
    keys = [
        (r.meta.pod_namespace, r.meta.pod_name, r.meta.container_type != "sandbox")
        for r in asked.containers
    ]
    assert keys == sorted(keys)
    assert {r.meta.container_id for r in asked.containers} == {
        fake.pod.sandbox_id,
        fake.app,
        fake.crio,
    }
