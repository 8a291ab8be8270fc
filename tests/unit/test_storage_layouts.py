"""containers-storage as cri-o and podman really lay it out: the live captures of cri-o 1.33 and
podman 4.3 (``fixtures/bundles/*/*-capture``) rebuilt on a fake host in BOTH roots, entry for
entry as their ``bundle_files.txt`` listings show, at start-up and as the runtimes write them.

cri-o writes one ``config.json`` into the run root and one into the graph root, its pid file into
the run root; podman writes its ``config.json`` into the graph root only, its pid file into the run
root only. The run root says what runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from daemonfakes import serving, socket_dir
from fakehost import (
    CRIO_CAPTURES,
    CRIO_ROOT,
    GRAPH_ROOT,
    PODMAN_CAPTURES,
    STORAGE,
    Capture,
    FakeHost,
    captures,
    live_ids,
    new_id,
    wait_until,
    write_in_place,
)

from ociresolve import Bundle, BundleError, ContainerMeta, IndexedContainer, Node, Resolver, entries
from ociresolve.cli import main
from ociresolve.hostpaths import LAYOUTS, HostPaths
from ociresolve.model import StandaloneContainer
from ociresolve.watcher import Watcher

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CRIO = captures(CRIO_CAPTURES)
PODMAN = captures(PODMAN_CAPTURES)
ROOTS = [CRIO_ROOT, GRAPH_ROOT]

StartResolver = Callable[..., Resolver]


def test_the_captures_are_there() -> None:
    assert len(CRIO) == 6 and all(c.kubernetes for c in CRIO)
    assert len(PODMAN) == 5 and not any(c.kubernetes for c in PODMAN)
    dropped = [c for c in CRIO if c.pid is None]
    assert len(dropped) == 2  # kubelet-like and bare-cri: cri-o dropped their infra container


@pytest.fixture
def node(host: FakeHost) -> FakeHost:
    """A fake node with both containers-storage roots and a cgroup v2 mount."""
    host.enable_cgroup2()
    (host.crio / STORAGE).mkdir(parents=True)
    host.make_graph_root()
    return host


@pytest.fixture
def start(node: FakeHost) -> Iterator[StartResolver]:
    started: list[Resolver] = []

    def start(*, roots: list[str] = ROOTS, watch: bool = True) -> Resolver:
        resolver = Resolver(host_root=str(node.root), runtime_roots=roots, cri=False)
        started.append(resolver)
        return resolver.start() if watch else resolver

    yield start
    for resolver in started:
        resolver.close()


def watched(resolver: Resolver) -> set[str]:
    watcher = resolver.watcher
    assert watcher is not None
    return {watch.path for watch in watcher._watches.values()}


def per_container_watches(resolver: Resolver, node: FakeHost) -> set[str]:
    """Watches below a containers-storage ``overlay-containers/`` directory: one per container."""
    prefixes = (f"{node.crio}/{STORAGE}/", f"{node.graph}/{STORAGE}/")
    return {path for path in watched(resolver) if path.startswith(prefixes)}


def record_of(resolver: Resolver, capture: Capture) -> IndexedContainer:
    record = resolver.container(capture.container_id)
    assert record is not None, f"{capture.case.name} is not indexed"
    return record


# -- cri-o ---------------------------------------------------------------------------------------


def test_crio_at_start_up_indexed_from_the_run_root_with_its_pid(
    node: FakeHost, start: StartResolver
) -> None:
    for capture in CRIO:
        node.lay_out(capture)
        node.run_capture(capture)
    resolver = start()
    assert {r.meta.container_id: r.meta for r in resolver.containers()} == {
        c.container_id: ContainerMeta(**c.expected) for c in CRIO if c.expected
    }
    for capture in CRIO:
        record = record_of(resolver, capture)
        assert record.bundle == str(node.crio_bundle(capture.container_id))  # never the graph's
        assert record.pid == capture.pid  # the run root's pidfile; None for a dropped infra
        assert record.cgroup_id is not None
    # No watch per container: every bundle is final (its pid known, or no process will run).
    assert per_container_watches(resolver, node) == set()
    assert f"{node.graph}/{STORAGE}" not in watched(resolver)  # a graph root is not descended


def test_crio_as_it_writes_them(node: FakeHost, start: StartResolver) -> None:
    resolver = start()
    for capture in CRIO:
        node.run_capture(capture)
        node.lay_out(capture)
    for capture in CRIO:
        wait_until(
            lambda c=capture: (
                (r := resolver.container(c.container_id)) is not None and r.pid == c.pid
            ),
            what=f"{capture.case.name} indexed with its pid",
        )
        record = record_of(resolver, capture)
        assert record.bundle == str(node.crio_bundle(capture.container_id))
        assert record.meta == ContainerMeta(**(capture.expected or {}))
    # Every watch that waited for a container is gone once the container was final.
    wait_until(lambda: per_container_watches(resolver, node) == set(), what="no watch left")
    watcher = resolver.watcher
    assert watcher is not None and watcher.bundle_errors == 0


def test_the_graph_root_copy_never_replaces_the_run_root_record(
    node: FakeHost, start: StartResolver
) -> None:
    """Rewriting the graph copy (it survives reboots) changes nothing: the record keeps its
    bundle and PID, and nothing is published."""
    capture = next(c for c in CRIO if c.pid is not None)
    node.lay_out(capture)
    node.run_capture(capture)
    resolver = start()
    before = record_of(resolver, capture)
    changes: list[str | None] = []
    resolver.subscribe(lambda record, change: changes.append(record.meta.container_id))
    spec = capture.spec
    spec["annotations"]["io.kubernetes.cri-o.Name"] = "rewritten"
    write_in_place(
        node.graph_bundle(capture.container_id) / "config.json", json.dumps(spec).encode()
    )
    marker = next(c for c in CRIO if c is not capture)
    node.lay_out(marker)  # an event after the rewrite: once it is seen, the rewrite was too
    wait_until(lambda: marker.container_id in changes)
    assert record_of(resolver, capture) == before
    assert capture.container_id not in changes


def test_a_dropped_infra_sandbox_is_indexed_by_id_and_never_waited_for(
    node: FakeHost, start: StartResolver
) -> None:
    sandbox = next(c for c in CRIO if c.pid is None)
    assert sandbox.expected is not None
    resolver = start()
    node.run_capture(sandbox)
    node.lay_out(sandbox)
    wait_until(lambda: resolver.container(sandbox.container_id) is not None)
    record = record_of(resolver, sandbox)
    assert record.pid is None
    assert record.meta.container_type == "sandbox"
    assert record.meta.sandbox_id == sandbox.container_id
    assert resolver.lookup_container(sandbox.container_id) == record.meta
    # No watch waits for a pidfile that will never come.
    wait_until(lambda: per_container_watches(resolver, node) == set(), what="no watch left")


def test_a_stale_graph_root_copy_is_not_a_live_container(
    node: FakeHost, start: StartResolver
) -> None:
    """After a reboot the run root (a tmpfs) is empty and the graph root still has every copy."""
    for capture in CRIO:
        node.lay_out(capture, roots=(GRAPH_ROOT,))
    resolver = start()
    assert resolver.containers() == []
    assert resolver.index.standalone == {}
    capture = CRIO[0]
    assert resolver.lookup_container(capture.container_id) is None
    # Nor is one looked up on disk (one-shot use, no watcher).
    once = start(watch=False)
    assert once.lookup_container(capture.container_id) is None
    assert once.containers() == []


@pytest.mark.parametrize("graph_first", [True, False])
def test_the_run_root_is_the_truth_whatever_the_roots_are_called(
    node: FakeHost, start: StartResolver, graph_first: bool
) -> None:
    """The graph root is the one holding the image store, not the one at a default path, and
    whichever root is scanned last."""
    capture = next(c for c in CRIO if c.pid is not None)
    run, graph = "/srv/crio/run", "/srv/crio/root"
    (node.path(run) / STORAGE).mkdir(parents=True)
    (node.path(graph) / "overlay-images").mkdir(parents=True)
    for root in (run, graph):
        bundle = node.path(root) / STORAGE / capture.container_id / "userdata"
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_bytes((capture.case / "config.json").read_bytes())
    (node.path(run) / STORAGE / capture.container_id / "userdata" / "pidfile").write_text(
        str(capture.pid)
    )
    resolver = start(roots=[graph, run] if graph_first else [run, graph])
    record = record_of(resolver, capture)
    assert record.bundle.startswith(str(node.path(run)))
    assert record.pid == capture.pid


def test_a_tenants_manager_claim_does_not_hide_a_crio_pod(
    node: FakeHost, start: StartResolver
) -> None:
    """cri-o copies pod annotations into the sandbox's config.json: io.container.manager and
    cri-o's own ContainerID/SandboxID included. Where the bundle is, and the pod keys cri-o
    overwrites, decide; the id is the bundle directory's."""
    sandbox = next(c for c in CRIO if c.pid is None and "kubelet" in c.case.name)
    victim = new_id()
    spec = sandbox.spec
    spec["annotations"].update(
        {
            "io.container.manager": "libpod",
            "io.kubernetes.cri-o.ContainerID": victim,
            "io.kubernetes.cri-o.SandboxID": victim,
        }
    )
    for root in (node.crio, node.graph):
        bundle = root / STORAGE / sandbox.container_id / "userdata"
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(spec))
    resolver = start()
    record = record_of(resolver, sandbox)
    assert record.meta == ContainerMeta(**(sandbox.expected or {}))
    assert resolver.container(victim) is None
    assert resolver.index.standalone == {}


# -- podman --------------------------------------------------------------------------------------


def standalone_of(resolver: Resolver, capture: Capture) -> StandaloneContainer:
    other = resolver.index.standalone.get(capture.container_id)
    assert other is not None, f"{capture.case.name} is not known"
    return other


def expected_standalone(node: FakeHost, capture: Capture) -> StandaloneContainer:
    return StandaloneContainer(
        runtime="podman",
        container_id=capture.container_id,
        bundle=str(node.crio_bundle(capture.container_id)),
        config=str(node.graph_bundle(capture.container_id) / "config.json"),
        pid=capture.pid,
    )


def test_podman_at_start_up_is_never_kubernetes_and_its_pid_is_joined(
    node: FakeHost, start: StartResolver
) -> None:
    for capture in PODMAN:
        node.lay_out(capture)
        node.run_capture(capture)
    resolver = start()
    assert resolver.containers() == []
    for capture in PODMAN:
        assert standalone_of(resolver, capture) == expected_standalone(node, capture)
        assert capture.pid is not None
        assert resolver.lookup_pid(capture.pid) is None
        assert resolver.resolve_pid(capture.pid) is None
        explanation = resolver.explain_pid(capture.pid)
        assert explanation.resolution is None
        assert explanation.standalone == expected_standalone(node, capture)
        assert [s.step for s in explanation.steps] == ["cgroup", "index"]
        assert explanation.steps[-1].result == (
            f"podman container {capture.container_id[:12]} (not Kubernetes): "
            f"{node.graph_bundle(capture.container_id)}/config.json"
        )
    assert per_container_watches(resolver, node) == set()


def test_podman_as_it_writes_them(node: FakeHost, start: StartResolver) -> None:
    resolver = start()
    for capture in PODMAN:
        node.run_capture(capture)
        node.lay_out(capture)
    for capture in PODMAN:
        wait_until(lambda c=capture: c.container_id in resolver.index.standalone)
        assert standalone_of(resolver, capture) == expected_standalone(node, capture)
    assert live_ids(resolver.containers()) == set()
    wait_until(lambda: per_container_watches(resolver, node) == set(), what="no watch left")


def test_podman_looked_up_without_the_watcher(node: FakeHost, start: StartResolver) -> None:
    """One-shot use: the bundle read on the miss joins the graph root's config.json and the run
    root's pid file, and ends the walk (no CRI asked)."""
    capture = PODMAN[0]
    node.lay_out(capture)
    node.run_capture(capture)
    assert capture.pid is not None
    resolver = start(watch=False)
    explanation = resolver.explain_pid(capture.pid)
    assert explanation.resolution is None
    assert explanation.standalone == expected_standalone(node, capture)
    assert [s.step for s in explanation.steps] == ["cgroup", "index", "bundle"]
    assert explanation.steps[-1].result.startswith(
        f"podman container {capture.container_id[:12]} (not Kubernetes): "
    )


def test_a_removed_podman_container_is_forgotten(node: FakeHost, start: StartResolver) -> None:
    capture = PODMAN[0]
    node.lay_out(capture)
    node.run_capture(capture)
    resolver = start()
    standalone_of(resolver, capture)
    for root in (node.crio, node.graph):
        (root / STORAGE / capture.container_id / "userdata" / "pidfile").unlink(missing_ok=True)
        for path in sorted((root / STORAGE / capture.container_id).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (root / STORAGE / capture.container_id).rmdir()
    wait_until(lambda: capture.container_id not in resolver.index.standalone)


def test_a_scan_after_a_rescan_keeps_podman_and_crio_apart(
    node: FakeHost, start: StartResolver
) -> None:
    for capture in (*CRIO, *PODMAN):
        node.lay_out(capture)
        node.run_capture(capture)
    resolver = start()
    watcher = resolver.watcher
    assert isinstance(watcher, Watcher)
    watcher.scan()  # what an overflow does
    assert live_ids(resolver.containers()) == {c.container_id for c in CRIO}
    assert set(resolver.index.standalone) == {c.container_id for c in PODMAN}


def test_node_says_podman_from_a_scan_and_from_the_daemons_not_found(node: FakeHost) -> None:
    capture = PODMAN[0]
    node.lay_out(capture)
    node.run_capture(capture)
    assert capture.pid is not None
    scan = Node(host_root=str(node.root), runtime_roots=ROOTS, cri=False, daemon=False)
    answer = scan.lookup_pid(capture.pid)
    assert (answer.meta, answer.container_id) == (None, capture.container_id)
    assert (answer.runtime, answer.init_pid) == ("podman", capture.pid)
    assert Node(host_root=str(node.root), runtime_roots=ROOTS)._standalone(
        capture.container_id
    ) == expected_standalone(node, capture)


# -- the command line: what the podman e2e test asserts ------------------------------------------


def node_args(node: FakeHost) -> list[str]:
    return [
        "--host-root",
        str(node.root),
        "--runtime-root",
        CRIO_ROOT,
        "--runtime-root",
        GRAPH_ROOT,
    ]


def podman_message(capture: Capture) -> str:
    return (
        f"ociresolve: pid {capture.pid} is in podman container {capture.container_id[:12]}, "
        "not a Kubernetes container\n"
    )


def test_lookup_of_a_podman_process_without_the_daemon(
    node: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = PODMAN[0]
    node.lay_out(capture)
    node.run_capture(capture)
    args = ["lookup", str(capture.pid), "--no-daemon", "--no-cri", *node_args(node)]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", podman_message(capture))

    assert main([*args, "--explain"]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == podman_message(capture).rstrip("\n")
    assert lines[1] == "resolution:"
    assert [line.split()[0] for line in lines[2:]] == ["cgroup", "index", "bundle"]
    assert lines[-1].endswith(
        f"podman container {capture.container_id[:12]} (not Kubernetes): "
        f"{node.graph_bundle(capture.container_id)}/config.json"
    )


def test_lookup_of_a_podman_process_through_the_daemon(
    node: FakeHost, capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    capture = PODMAN[0]
    node.lay_out(capture)
    node.run_capture(capture)
    resolver = Resolver(host_root=str(node.root), runtime_roots=ROOTS, cri=False)
    with (
        socket_dir(tmp_path_factory.mktemp("sockets")) as sockets,
        resolver,
        serving(resolver, sockets / "api.sock") as api,
    ):
        args = ["lookup", str(capture.pid), "--daemon-socket", api.socket_path, *node_args(node)]
        assert main(args) == 1
        assert capsys.readouterr() == ("", podman_message(capture))

        assert main([*args, "--explain"]) == 1
        lines = capsys.readouterr().err.splitlines()
        assert lines[0] == podman_message(capture).rstrip("\n")
        assert [line.split()[0] for line in lines[2:]] == ["daemon", "cgroup", "index"]
        assert "(not Kubernetes)" in lines[-1]


def test_a_pid_file_seen_before_a_config_written_meanwhile_is_not_podmans(
    node: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cri-o writes config.json before it starts the process whose pid file follows: a reader
    that missed config.json and then found the pid file looks again before it says podman."""
    capture = next(c for c in CRIO if c.pid is not None)
    node.lay_out(capture)
    real = entries.load_bundle
    calls: list[str] = []

    def late_config(path: str) -> Bundle:
        calls.append(path)
        if len(calls) == 1:  # as if read just before cri-o wrote it
            raise BundleError(path, "no such file", retryable=True) from FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(entries, "load_bundle", late_config)
    layout = next(lay for lay in LAYOUTS if lay.graph_runtime)
    entry = entries.read_entry(
        HostPaths(str(node.root), ROOTS), str(node.crio_bundle(capture.container_id)), layout
    )
    assert len(calls) == 2
    assert isinstance(entry.record, IndexedContainer) and entry.final
    assert entry.record.meta == ContainerMeta(**(capture.expected or {}))
