"""``ociresolve lookup`` and ``list`` with and without the daemon: the daemon is asked when its
socket answers, the node is scanned once when it does not, ``--explain`` says which, and both
give the same answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import (
    APP_PID,
    FOREIGN_PID,
    HOST_PID,
    MISSING_PID,
    Node,
    resolver_service,
    serving,
)

from ociresolve import Resolver
from ociresolve.cli import main
from ociresolve.daemon.server import ApiServer


@pytest.fixture
def api(node: Node, sockets: Path) -> Iterator[ApiServer]:
    with (
        Resolver(host_root=str(node.host.root), runtime_roots=node.roots, cri=False) as resolver,
        serving(resolver, sockets / "api.sock") as api,
    ):
        yield api


def lookup_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["lookup", *args, "--json", "--explain"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


def steps_of(record: dict[str, object]) -> list[dict[str, object]]:
    steps = record["explain"]
    assert isinstance(steps, list)
    return steps


def test_lookup_without_a_daemon_scans_once_and_says_so(
    node: Node, sockets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = sockets / "absent.sock"
    code, record = lookup_json(
        capsys, str(APP_PID), "--daemon-socket", str(absent), *node.node_args()
    )
    assert code == 0
    steps = steps_of(record)
    assert steps[0]["step"] == "daemon"
    assert "scanning the node once instead" in str(steps[0]["result"])
    assert [s["step"] for s in steps[1:]] == ["cgroup", "index", "bundle"]
    assert record["source"] == "bundle"


def test_lookup_through_the_daemon_says_so(
    node: Node, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, record = lookup_json(
        capsys, str(APP_PID), "--daemon-socket", api.socket_path, *node.node_args()
    )
    assert code == 0
    steps = steps_of(record)
    assert steps[0] == {
        "step": "daemon",
        "result": f"{api.socket_path}: answered",
        "ms": steps[0]["ms"],
    }
    assert [s["step"] for s in steps[1:]] == ["cgroup", "index"]
    assert record["source"] == "index"
    assert record["container_id"] == node.app


META_KEYS = (
    "runtime",
    "container_type",
    "container_id",
    "sandbox_id",
    "pod_name",
    "pod_namespace",
    "pod_uid",
    "container_name",
    "image",
)


@pytest.mark.parametrize("pid", [APP_PID, HOST_PID, FOREIGN_PID, MISSING_PID])
def test_both_paths_give_the_same_answer(
    node: Node, sockets: Path, api: ApiServer, capsys: pytest.CaptureFixture[str], pid: int
) -> None:
    absent = str(sockets / "absent.sock")
    scan_args = ["--daemon-socket", absent, *node.node_args(), "--no-cri"]
    scanned = main(["lookup", str(pid), "--json", *scan_args])
    scan_out, scan_err = capsys.readouterr()
    asked = main(["lookup", str(pid), "--json", "--daemon-socket", api.socket_path])
    daemon_out, daemon_err = capsys.readouterr()
    assert scanned == asked
    # The same message; the reason in parentheses is the last step tried, which differs.
    assert scan_err.split(" (")[0] == daemon_err.split(" (")[0]
    if scanned == 0:
        from_scan, from_daemon = json.loads(scan_out), json.loads(daemon_out)
        assert {k: from_scan[k] for k in META_KEYS} == {k: from_daemon[k] for k in META_KEYS}


def test_a_container_nobody_knows_is_explained_through_the_daemon(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reason given is what the daemon tried, not that the daemon answered."""
    assert main(["lookup", str(FOREIGN_PID), "--daemon-socket", api.socket_path]) == 1
    err = capsys.readouterr().err
    assert "no runtime root knows" in err
    assert "answered)" not in err


def test_list_falls_back_to_a_scan(
    node: Node, sockets: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = str(sockets / "absent.sock")
    assert main(["list", "--json", "--daemon-socket", absent, *node.node_args()]) == 0
    scanned = sorted(capsys.readouterr().out.splitlines())
    assert main(["list", "--json", "--daemon-socket", api.socket_path]) == 0
    asked = sorted(capsys.readouterr().out.splitlines())
    assert scanned == asked
    assert len(asked) == 3


def test_the_socket_from_the_environment(
    api: ApiServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCIRESOLVE_SOCKET", api.socket_path)
    code, record = lookup_json(capsys, str(APP_PID))
    assert code == 0
    assert steps_of(record)[0]["result"] == f"{api.socket_path}: answered"


def test_a_host_root_without_a_socket_scans(
    node: Node, api: ApiServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--host-root or --runtime-root without --daemon-socket: this node, not the daemon's."""
    monkeypatch.setenv("OCIRESOLVE_SOCKET", api.socket_path)
    code, record = lookup_json(capsys, str(APP_PID), *node.node_args())
    assert code == 0
    assert steps_of(record)[0]["step"] == "cgroup"
    assert resolver_service(api).lookups.total() == 0


def test_no_daemon_never_asks(
    node: Node, api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--daemon-socket", api.socket_path, "--no-daemon", *node.node_args()]
    code, record = lookup_json(capsys, str(APP_PID), *args)
    assert code == 0
    assert steps_of(record)[0]["step"] == "cgroup"
    assert resolver_service(api).lookups.total() == 0


def test_a_daemon_error_is_exit_2(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lookup", str(MISSING_PID), "--daemon-socket", api.socket_path]) == 2
    assert f"no such process: pid {MISSING_PID}" in capsys.readouterr().err
