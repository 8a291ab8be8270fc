"""A tenant's bundle that is hostile in shape, not in content: JSON nested thousands deep in any
field (or in a JSON blob inside an annotation), numbers with a hundred thousand digits. Each is
one bad bundle: a ``BundleError`` (or a record without the blob's facts), never an exception that
escapes a read, a watcher batch, the start-up scan, ``list``, ``inspect`` or ``serve``."""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from daemonfakes import Node, free_port
from fakehost import CONTAINERD_ROOT, CRIO_ROOT, FakeHost, Pod, containerd_spec, crio_spec, new_id
from inotify_simple import INotify

from ociresolve import BundleError, ContainerMeta, load_bundle, read_bundle
from ociresolve.cli import main
from ociresolve.hostpaths import HostPaths
from ociresolve.index import Index
from ociresolve.watcher import Watcher

_DEEP: Final = '"@@deep@@"'  # a placeholder value, replaced by raw JSON once encoded
READY_WITHIN: Final = 15.0  # only guards against a hang


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + "0" + "}" * depth


def huge_integer(digits: int) -> str:
    return "9" * digits


def with_raw(spec: dict[str, Any], raw: str) -> bytes:
    """``spec`` encoded, its placeholder value replaced by ``raw`` JSON."""
    data = json.dumps(spec)
    assert data.count(_DEEP) == 1
    return data.replace(_DEEP, raw).encode()


@dataclass(frozen=True)
class Hostile:
    """One hostile ``config.json``: where it goes (``layout``), how it is made, and whether it
    is rejected (a ``BundleError``) or read as a record without what its blob would say."""

    name: str
    layout: str  # "containerd" or "cri-o"
    build: Callable[[str, Pod], bytes]
    rejected: bool


def _in_process(depth: int) -> Callable[[str, Pod], bytes]:
    def build(container_id: str, pod: Pod) -> bytes:
        spec = containerd_spec(container_id, pod)
        spec["process"]["env"] = "@@deep@@"
        return with_raw(spec, arrays(depth))

    return build


def _in_linux(container_id: str, pod: Pod) -> bytes:
    spec = containerd_spec(container_id, pod)
    spec["linux"]["resources"] = "@@deep@@"
    return with_raw(spec, arrays(100_000))


def _in_mount_options(container_id: str, pod: Pod) -> bytes:
    spec = containerd_spec(container_id, pod)
    spec["mounts"][0]["options"] = "@@deep@@"
    return with_raw(spec, objects(100_000))


def _in_annotation(container_id: str, pod: Pod) -> bytes:
    spec = containerd_spec(container_id, pod)
    spec["annotations"]["io.kubernetes.cri.sandbox-name"] = "@@deep@@"
    return with_raw(spec, arrays(100_000))


def _unclosed(container_id: str, pod: Pod) -> bytes:
    return b'{"ociVersion": "1.0.2", "process": ' + b"[" * 100_000


def _huge_numbers(container_id: str, pod: Pod) -> bytes:
    spec = containerd_spec(container_id, pod)
    spec["process"]["user"]["uid"] = "@@deep@@"
    spec["linux"]["resources"] = {"memory": {"limit": 1e308}}
    return with_raw(spec, huge_integer(100_000)).replace(b"1e+308", b"1e999999")


def _crio_blob(key: str, blob: str) -> Callable[[str, Pod], bytes]:
    """A cri-o container without its name key, so that the JSON blobs are decoded."""

    def build(container_id: str, pod: Pod) -> bytes:
        spec = crio_spec(container_id, pod)
        del spec["annotations"]["io.kubernetes.container.name"]
        spec["annotations"][key] = blob
        return json.dumps(spec).encode()

    return build


HOSTILE: Final = (
    Hostile("arrays-1000-in-process", "containerd", _in_process(1_000), rejected=True),
    Hostile("arrays-100000-in-process", "containerd", _in_process(100_000), rejected=True),
    Hostile("arrays-100000-in-linux", "containerd", _in_linux, rejected=True),
    Hostile("objects-100000-in-mount-options", "containerd", _in_mount_options, rejected=True),
    Hostile("arrays-100000-as-annotation", "containerd", _in_annotation, rejected=True),
    Hostile("unclosed-arrays-100000", "containerd", _unclosed, rejected=True),
    Hostile("huge-numbers", "containerd", _huge_numbers, rejected=False),
    Hostile(
        "crio-labels-blob-arrays-100000",
        "cri-o",
        _crio_blob("io.kubernetes.cri-o.Labels", arrays(100_000)),
        rejected=False,
    ),
    Hostile(
        "crio-labels-blob-objects-1000",
        "cri-o",
        _crio_blob("io.kubernetes.cri-o.Labels", '{"x": ' + objects(1_000) + "}"),
        rejected=False,
    ),
    Hostile(
        "crio-metadata-blob-objects-100000",
        "cri-o",
        _crio_blob("io.kubernetes.cri-o.Metadata", objects(100_000)),
        rejected=False,
    ),
    Hostile(
        "crio-labels-blob-huge-numbers",
        "cri-o",
        _crio_blob(
            "io.kubernetes.cri-o.Labels",
            '{"a": ' + huge_integer(100_000) + ', "b": 1e999999, "c": -1e-999999}',
        ),
        rejected=False,
    ),
)
_IDS: Final = [hostile.name for hostile in HOSTILE]


def place(host: FakeHost, hostile: Hostile) -> str:
    """Write ``hostile`` where its runtime keeps bundles; its container id."""
    container_id = new_id()
    bundle = (
        host.containerd_bundle(container_id)
        if hostile.layout == "containerd"
        else host.crio_bundle(container_id)
    )
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_bytes(hostile.build(container_id, Pod.new("evil", "tenant")))
    return container_id


def good_ids(node: Node) -> set[str]:
    return {node.pod.sandbox_id, node.app, node.crio}


# -- one read --------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE, ids=_IDS)
def test_reading_a_hostile_bundle(tmp_path: Path, hostile: Hostile) -> None:
    container_id = new_id()
    bundle = tmp_path / container_id
    bundle.mkdir()
    (bundle / "config.json").write_bytes(hostile.build(container_id, Pod.new()))
    if hostile.rejected:
        with pytest.raises(BundleError) as raised:
            read_bundle(bundle)
        assert raised.value.path == str(bundle / "config.json")
        assert not raised.value.retryable  # no rewrite will make it readable
        with pytest.raises(BundleError):
            load_bundle(bundle / "config.json")
        return
    meta = read_bundle(bundle)
    assert isinstance(meta, ContainerMeta)
    assert meta.container_id == container_id


def test_a_deep_value_in_a_blob_costs_only_the_blob(tmp_path: Path) -> None:
    """The plain keys still make the record; the blob's facts are simply not there."""
    container_id, pod = new_id(), Pod.new("evil", "tenant")
    bundle = tmp_path / container_id
    bundle.mkdir()
    build = _crio_blob("io.kubernetes.cri-o.Labels", '{"x": ' + objects(100_000) + "}")
    (bundle / "config.json").write_bytes(build(container_id, pod))
    meta = read_bundle(bundle)
    assert meta is not None
    assert (meta.pod_name, meta.pod_namespace, meta.pod_uid) == ("evil", "tenant", pod.uid)
    assert meta.container_name is None


# -- the start-up scan and the watcher ---------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE, ids=_IDS)
def test_start_up_indexes_the_good_bundles_beside_a_hostile_one(
    node: Node, hostile: Hostile
) -> None:
    bad = place(node.host, hostile)
    with node.resolver() as resolver:
        indexed = {r.meta.container_id for r in resolver.containers()}
        assert good_ids(node) <= indexed
        assert (bad in indexed) is not hostile.rejected
        watcher = resolver.watcher
        assert watcher is not None and watcher.alive
        assert watcher.bundle_errors == (1 if hostile.rejected else 0)


def test_start_up_with_every_hostile_bundle_at_once(node: Node) -> None:
    placed = {place(node.host, hostile): hostile for hostile in HOSTILE}
    with node.resolver() as resolver:
        indexed = {r.meta.container_id for r in resolver.containers()}
        readable = {cid for cid, hostile in placed.items() if not hostile.rejected}
        assert indexed == good_ids(node) | readable
        assert resolver.lookup_pid(4242) is not None  # the app's pid still resolves


def test_a_watcher_batch_with_a_hostile_bundle_indexes_the_rest(host: FakeHost) -> None:
    """The hostile bundle comes first in the batch: every bundle after it is indexed too."""
    host.make_roots()
    index = Index(grace_period=30.0)
    watcher = Watcher(HostPaths(str(host.root), [CONTAINERD_ROOT, CRIO_ROOT]), index)
    watcher._inotify = INotify(nonblocking=True)  # watches, but no thread: the test reads them
    try:
        watcher.scan()
        bad = [place(host, hostile) for hostile in HOSTILE if hostile.rejected]
        pod = Pod.new()
        good = [new_id() for _ in range(3)]
        for container_id in good:
            host.write(host.containerd_bundle(container_id), containerd_spec(container_id, pod))
        events = watcher._inotify.read(timeout=0)
        assert len(events) >= len(bad) + len(good)
        watcher.handle(events)
        indexed = {r.meta.container_id for r in index.records()}
        assert indexed == set(good)
        assert watcher.bundle_errors == len(bad)
        assert watcher.rescans == 0
    finally:
        watcher.close()


# -- the commands --------------------------------------------------------------------------------


def test_list_shows_the_others_and_reports_the_hostile_ones(
    node: Node, sockets: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    placed = {place(node.host, hostile): hostile for hostile in HOSTILE}
    absent = str(sockets / "absent.sock")
    with caplog.at_level(logging.WARNING, logger="ociresolve"):
        code = main(["list", "--json", "--daemon-socket", absent, *node.node_args()])
    assert code == 0
    listed = {json.loads(line)["container_id"] for line in capsys.readouterr().out.splitlines()}
    readable = {cid for cid, hostile in placed.items() if not hostile.rejected}
    assert listed == good_ids(node) | readable
    reported = "\n".join(record.getMessage() for record in caplog.records)
    for container_id, hostile in placed.items():
        assert (container_id in reported) is hostile.rejected


def test_list_reports_a_hostile_bundle_on_stderr(node: Node, sockets: Path) -> None:
    """As a person runs it: one line naming the bundle, and the others listed."""
    bad = place(node.host, HOSTILE[1])
    absent = str(sockets / "absent.sock")
    command = ["list", "--json", "--daemon-socket", absent, *node.node_args()]
    done = subprocess.run(
        [sys.executable, "-m", "ociresolve.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(good_ids(node))
    assert bad in done.stderr
    assert "Traceback" not in done.stderr


def test_inspect_lists_the_others_and_reports_the_hostile_ones(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    placed = {place(node.host, hostile): hostile for hostile in HOSTILE}
    code = main(["inspect", "--json", str(node.host.root)])
    assert code == 2
    out, err = capsys.readouterr()
    shown = {json.loads(line)["container_id"] for line in out.splitlines()}
    readable = {cid for cid, hostile in placed.items() if not hostile.rejected}
    assert shown == good_ids(node) | readable
    errors = err.splitlines()
    assert len(errors) == sum(hostile.rejected for hostile in placed.values())
    for container_id, hostile in placed.items():
        assert any(container_id in line for line in errors) is hostile.rejected


# -- the daemon ----------------------------------------------------------------------------------


@pytest.fixture
def daemon(node: Node, sockets: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    for hostile in HOSTILE:
        place(node.host, hostile)
    port, socket = free_port(), sockets / "api.sock"
    options = [*node.node_args(), "--no-cri", "--metrics-address", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "ociresolve.cli", "serve", "--socket", str(socket), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NODE_NAME": "node-7"},
    )
    try:
        yield process, socket, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def test_serve_starts_over_every_hostile_bundle(
    node: Node,
    daemon: tuple[subprocess.Popen[str], Path, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ready after its start-up scan, listing the good bundles: no crash loop."""
    process, socket, port = daemon
    deadline = time.monotonic() + READY_WITHIN
    while not ready(port):
        if process.poll() is not None:
            pytest.fail(f"serve exited {process.returncode}: {process.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("serve never became ready")
        time.sleep(0.02)
    assert main(["list", "--json", "--daemon-socket", str(socket)]) == 0
    listed = {json.loads(line)["container_id"] for line in capsys.readouterr().out.splitlines()}
    assert good_ids(node) <= listed
    assert process.poll() is None
