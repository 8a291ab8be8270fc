"""``ociresolve enrich`` as a filter: who a line's keys name (the cgroup id first, the pid only
when it agrees), how lines cut across reads come out whole and in order, and the command run as
a user runs it, on a fake node's own index or through a daemon serving one."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemonfakes import APP_PID, FOREIGN_PID, HOST_PID, MISSING_PID, Node

from ociresolve import ProcessNotFound
from ociresolve.daemon.server import ApiServer
from ociresolve.enrich.formats import LINE_MAX, JsonFormat, TextFormat
from ociresolve.enrich.lookup import Lookup
from ociresolve.enrich.stream import Enricher
from ociresolve.model import CgroupRef, ContainerMeta, IndexedContainer, Resolution

ROOT = Path(__file__).resolve().parents[2]
APP_ID, OTHER_ID = "a" * 64, "b" * 64
APP_CGROUP, OTHER_CGROUP, HOST_CGROUP = 1001, 1002, 1
APP = ContainerMeta(
    runtime="containerd",
    container_type="container",
    container_id=APP_ID,
    sandbox_id="c" * 64,
    pod_name="web-5d9f7",
    pod_namespace="shop",
    container_name="app",
)
OTHER = ContainerMeta(
    runtime="containerd",
    container_type="sandbox",
    container_id=OTHER_ID,
    sandbox_id=OTHER_ID,
    pod_name="db-0",
    pod_namespace="data",
)


class FakeResolver:
    """Two containers, by cgroup id and by id; ``pids`` says which container a pid is in now
    (``None``: the host), a pid not in it has exited; ``records`` the cgroup id each container's
    record holds (``None``: not known, as on a cgroup v1 node)."""

    def __init__(self) -> None:
        self.pids: dict[int, str | None] = {}
        self.records: dict[str, int | None] = {APP_ID: APP_CGROUP, OTHER_ID: OTHER_CGROUP}
        self.cgroup_reads = 0

    def lookup_cgroup_id(self, cgroup_id: int) -> ContainerMeta | None:
        return {APP_CGROUP: APP, OTHER_CGROUP: OTHER}.get(cgroup_id)

    def cgroup_of(self, pid: int) -> CgroupRef | None:
        self.cgroup_reads += 1
        if pid not in self.pids:
            raise ProcessNotFound(pid)
        container = self.pids[pid]
        return None if container is None else CgroupRef(container_id=container)

    def resolve_container(self, container_id: str) -> Resolution | None:
        meta = {APP_ID: APP, OTHER_ID: OTHER}.get(container_id)
        return None if meta is None else Resolution(meta=meta, source="index")

    def container(self, container_id: str) -> IndexedContainer | None:
        meta = {APP_ID: APP, OTHER_ID: OTHER}.get(container_id)
        if meta is None:
            return None
        return IndexedContainer(meta=meta, bundle="/b", cgroup_id=self.records[container_id])


APP_FIELDS = [
    ("k8s_namespace", "shop"),
    ("k8s_pod", "web-5d9f7"),
    ("k8s_container", "app"),
    ("k8s_container_id", APP_ID[:12]),
]


# -- who a line names --------------------------------------------------------------------------


def test_the_cgroup_id_comes_first_and_names_an_exited_process() -> None:
    resolver = FakeResolver()
    lookup = Lookup(resolver)
    assert list(lookup.fields(None, APP_CGROUP)) == APP_FIELDS
    assert list(lookup.fields(99, APP_CGROUP)) == APP_FIELDS  # pid 99 has exited
    assert resolver.cgroup_reads == 0


def test_the_pid_answers_when_the_cgroup_id_names_nothing() -> None:
    resolver = FakeResolver()
    resolver.pids = {10: APP_ID, 11: None}
    lookup = Lookup(resolver, prefix="")
    assert list(lookup.fields(10, None)) == [(n.removeprefix("k8s_"), v) for n, v in APP_FIELDS]
    assert lookup.fields(11, None) == ()  # a host process
    assert lookup.fields(12, None) == ()  # exited, no cgroup id on the line
    assert lookup.fields(None, HOST_CGROUP) == ()
    resolver.records[APP_ID] = None  # a cgroup v1 node: no container has a cgroup v2 id
    lookup.new_batch()
    assert lookup.fields(10, 555) == lookup.fields(10, None) != ()
    assert lookup.mismatches == 0


def test_a_reused_pid_is_not_taken_for_the_lines_cgroup() -> None:
    """The event came from cgroup 555, which no container has; its pid is now the app's (the
    event's process exited, the pid was reused): the app's pod is not put on the line."""
    resolver = FakeResolver()
    resolver.pids = {10: APP_ID}
    lookup = Lookup(resolver)
    assert lookup.fields(10, 555) == ()
    assert lookup.mismatches == 1


def test_a_sandbox_has_no_container_field() -> None:
    assert list(Lookup(FakeResolver()).fields(None, OTHER_CGROUP)) == [
        ("k8s_namespace", "data"),
        ("k8s_pod", "db-0"),
        ("k8s_container_id", OTHER_ID[:12]),
    ]


def test_a_pid_is_read_once_per_batch() -> None:
    resolver = FakeResolver()
    resolver.pids = {10: APP_ID}
    enricher = Enricher(JsonFormat(), Lookup(resolver))
    out = enricher.batch([b'{"pid": 10, "n": %d}' % n for n in range(50)])
    assert out.count(b"web-5d9f7") == 50 and resolver.cgroup_reads == 1
    enricher.batch([b'{"pid": 10}'])
    assert resolver.cgroup_reads == 2  # a new batch reads it again: the pid may be reused


# -- the stream --------------------------------------------------------------------------------


def run(enricher: Enricher, chunks: list[bytes]) -> bytes:
    pending = list(chunks)
    written: list[bytes] = []

    def read(size: int) -> bytes:
        assert size > 0
        return pending.pop(0) if pending else b""

    enricher.run(read, written.append)
    return b"".join(written)


def enricher() -> Enricher:
    resolver = FakeResolver()
    resolver.pids = {10: APP_ID, 11: None}
    return Enricher(TextFormat(r"^(?P<pid>\d+) (?P<cgroup_id>\d+) "), Lookup(resolver))


def test_lines_cut_across_reads_come_out_whole_and_in_order() -> None:
    text = b"Attaching 1 probe...\n10 0 curl\n11 1 sh\n12 1001 gone\r\n\xff\xfe junk\n10 0 last"
    expected = (
        b"Attaching 1 probe...\n"
        b"10 0 curl k8s_namespace=shop k8s_pod=web-5d9f7 k8s_container=app "
        b"k8s_container_id=aaaaaaaaaaaa\n"
        b"11 1 sh\n"
        b"12 1001 gone k8s_namespace=shop k8s_pod=web-5d9f7 k8s_container=app "
        b"k8s_container_id=aaaaaaaaaaaa\r\n"
        b"\xff\xfe junk\n"
        b"10 0 last k8s_namespace=shop k8s_pod=web-5d9f7 k8s_container=app "
        b"k8s_container_id=aaaaaaaaaaaa"  # the last line had no newline: it gets none
    )
    for cut in range(1, 12):
        chunks = [text[i : i + cut] for i in range(0, len(text), cut)]
        one = enricher()
        assert run(one, chunks) == expected, cut
    counts = one.counts
    assert (counts.lines, counts.enriched, counts.unresolved) == (6, 3, 1)
    assert dict(counts.passed) == {"no_key": 2}


def test_a_line_longer_than_the_limit_passes_through_as_it_comes() -> None:
    long = b"10 1001 " + b"x" * (LINE_MAX * 2)
    chunks = [b"10 0 a\n" + long[:1000], long[1000 : LINE_MAX + 5], long[LINE_MAX + 5 :]]
    chunks += [b"\n10 0 b\n"]
    one = enricher()
    out = run(one, chunks).split(b"\n")
    assert out[1] == long  # unchanged
    assert out[0].endswith(b"k8s_container_id=aaaaaaaaaaaa")
    assert out[2].endswith(b"k8s_container_id=aaaaaaaaaaaa") and out[3] == b""
    assert one.counts.passed["too_long"] == 1 and one.counts.lines == 3


# -- the command -------------------------------------------------------------------------------


def enrich(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ociresolve", "enrich", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def lines_for(node: Node) -> bytes:
    rows = [
        {"pid": APP_PID, "comm": "curl"},
        {"pid": HOST_PID, "comm": "systemd"},
        {"pid": MISSING_PID, "cgroup_id": node.app_cgroup_id, "comm": "exited"},
        {"pid": FOREIGN_PID},
    ]
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows) + b"not json\n"


def check_node_lines(out: bytes) -> None:
    rows = out.splitlines()
    assert len(rows) == 5
    app, host, exited, foreign = (json.loads(row) for row in rows[:4])
    assert (app["k8s_namespace"], app["k8s_pod"], app["k8s_container"]) == (
        "shop",
        "web-5d9f7",
        "app",
    )
    assert "k8s_pod" not in host and "k8s_pod" not in foreign
    assert exited["k8s_pod"] == "web-5d9f7" and exited["comm"] == "exited"
    assert rows[4] == b"not json"


def test_the_command_on_its_own_index(node: Node) -> None:
    process = enrich("--no-cri", *node.node_args())
    out, err = process.communicate(lines_for(node), timeout=30)
    assert process.returncode == 0, err
    check_node_lines(out)
    said = err.decode().splitlines()
    assert said[0] == "ociresolve enrich: indexed the node here (3 containers)"
    assert said[-1] == (
        "ociresolve enrich: lines=5 enriched=2 unresolved=2 not_parsed=1 pid_mismatches=0"
    )


def test_the_command_through_the_daemon(node: Node, server: ApiServer) -> None:
    process = enrich("--daemon-socket", server.socket_path, "--host-root", str(node.host.root))
    out, err = process.communicate(lines_for(node), timeout=30)
    assert process.returncode == 0, err
    check_node_lines(out)
    assert err.decode().startswith("ociresolve enrich: resolving through the daemon at ")


def test_no_daemon_answering_means_an_index_of_its_own(node: Node, sockets: Path) -> None:
    process = enrich("--daemon-socket", str(sockets / "none.sock"), "--no-cri", *node.node_args())
    out, err = process.communicate(lines_for(node), timeout=30)
    assert process.returncode == 0, err
    check_node_lines(out)
    first, second = err.decode().splitlines()[:2]
    assert first.endswith("none.sock: no such socket; indexing the node here instead")
    assert second.startswith("ociresolve enrich: indexed the node here")


def test_each_line_comes_out_before_the_next_goes_in(node: Node) -> None:
    process = enrich("--no-cri", *node.node_args())
    assert process.stdin is not None and process.stdout is not None
    try:
        for n in range(20):
            process.stdin.write(b'{"pid": %d, "n": %d}\n' % (APP_PID, n))
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 10.0)
            assert ready, f"line {n} not written within 10 s"
            assert json.loads(process.stdout.readline())["n"] == n
    finally:
        process.kill()
        process.wait()


def test_sigterm_ends_it_with_the_counts(node: Node) -> None:
    process = enrich("--no-cri", *node.node_args())
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b'{"pid": %d}\n' % APP_PID)
    process.stdin.flush()
    assert b"web-5d9f7" in process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert err.decode().splitlines()[-1].startswith("ociresolve enrich: lines=1 enriched=1")


def test_a_closed_output_ends_it_quietly(node: Node) -> None:
    process = enrich("--no-cri", *node.node_args())
    assert process.stdin is not None and process.stdout is not None
    process.stdout.close()
    time.sleep(0.2)
    with open(os.devnull, "rb"):
        _, err = process.communicate(lines_for(node) * 100, timeout=30)
    assert process.returncode == 0
    assert b"Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regex", "(?P<pid>"], "missing ), unterminated subpattern"),
        (["--regex", r"^(\d+)"], "names no group pid or cgroup_id"),
        (["--logfmt", "--regex", "x"], "not allowed with argument"),
    ],
)
def test_bad_options_exit_2(node: Node, args: list[str], message: str) -> None:
    process = enrich(*args, "--no-cri", *node.node_args())
    _, err = process.communicate(b"", timeout=30)
    assert process.returncode == 2
    assert message in err.decode()
