"""The CRI fallback on a real containerd + runc, every generation.

What the bundle index does not know, the runtime's CRI API answers (``source == "cri"``), with
the same record the bundle would have given; what the index knows never costs a CRI call; a
runtime that hangs (SIGSTOP) or is down (stopped, then restarted on the same socket) never
holds a lookup longer than its deadline, opens the breaker so that misses return at once, and
is used again by the same ``Resolver`` once it is back.

"The index off" is a ``Resolver`` whose only runtime root is an empty directory: every
container is then a miss that only the CRI can answer.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness import (
    PAUSE_IMAGE,
    WORKLOAD_IMAGE,
    Containerd,
    ContainerSpec,
    ImageSet,
    Pod,
    PodFactory,
    is_alive,
)
from harness.generations import Generation
from real_pods import cli, init_pid, members

from ociresolve import Change, ContainerMeta, IndexedContainer, Resolver, read_bundle
from ociresolve.cri.client import DEFAULT_TIMEOUT, GrpcCriClient, StatusReply
from ociresolve.cri.fallback import CriFallback

pytestmark = pytest.mark.e2e

SLEEP = ["sleep", "3600"]
TIMEOUT = 10.0  # seconds any one expected state may take to show; never reached when all is well
DEADLINE = DEFAULT_TIMEOUT  # of every CRI call made here: the resolver's default
# How late after its deadline a failed call may return, on a loaded VM. Generous on purpose:
# what it catches is a call that waits for the runtime (seconds, or for ever).
LATE = 0.75
POD_LABELS = ("io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid")
AT_ONCE = 0.05  # a lookup the open breaker refuses does no I/O but /proc and a listdir


# -- helpers -----------------------------------------------------------------------------------


class CountingCriClient:
    """A ``CriClient`` that counts every call, by CRI method, before making it for real."""

    def __init__(self, inner: GrpcCriClient) -> None:
        self.inner = inner
        self.endpoint = inner.endpoint
        self.timeout = inner.timeout  # the fallback's single flight waits on it
        self.calls: Counter[str] = Counter()
        # CRI method -> what to do just before the next call of it (once).
        self.before: dict[str, Callable[[], object]] = {}
        self._lock = threading.Lock()

    def runtime_name(self) -> str:
        self._count("Version")
        return self.inner.runtime_name()

    def container_status(self, container_id: str) -> StatusReply | None:
        self._count("ContainerStatus")
        return self.inner.container_status(container_id)

    def sandbox_status(self, sandbox_id: str) -> StatusReply | None:
        self._count("PodSandboxStatus")
        return self.inner.sandbox_status(sandbox_id)

    def close(self) -> None:
        self.inner.close()

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
            hook = self.before.pop(method, None)
        if hook is not None:
            hook()


def counting_client(containerd: Containerd) -> CountingCriClient:
    return CountingCriClient(GrpcCriClient(str(containerd.socket), timeout=DEADLINE))


@pytest.fixture
def resolvers() -> Iterator[Callable[..., Resolver]]:
    """Starts ``Resolver(**kwargs)``; closes every one it started at the end of the test."""
    started: list[Resolver] = []

    def start(**kwargs: Any) -> Resolver:
        resolver = Resolver(**kwargs)
        started.append(resolver)
        return resolver.start()

    yield start
    for resolver in started:
        resolver.close()


@pytest.fixture
def empty_root(tmp_path: Path) -> str:
    """A runtime root with no runtime in it: a resolver watching only this indexes nothing."""
    root = tmp_path / "no-runtime-here"
    root.mkdir()
    return str(root)


def poll(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def expected(
    generation: Generation, pod: Pod, container_id: str, name: str | None
) -> ContainerMeta:
    """The whole record. A sandbox's image is named from 2.x on (``sandbox_image_annotation``),
    in its bundle and over the CRI; before, in neither."""
    sandbox_image = PAUSE_IMAGE if generation.sandbox_image_annotation else None
    return ContainerMeta(
        runtime="containerd",
        container_type="sandbox" if name is None else "container",
        container_id=container_id,
        sandbox_id=pod.sandbox_id,
        pod_name=pod.name,
        pod_namespace=pod.namespace,
        pod_uid=pod.uid,
        container_name=name,
        image=sandbox_image if name is None else WORKLOAD_IMAGE,
    )


def timed(call: Callable[[], Any], limit: float = DEADLINE + LATE + 5.0) -> tuple[Any, float]:
    """``call()``'s result and how long it took, made in a thread: a call that waits for a hung
    runtime fails the test after ``limit`` seconds instead of hanging it (and the runtime is
    then resumed by ``frozen``'s exit)."""
    outcome: list[tuple[Any, float]] = []
    errors: list[BaseException] = []

    def run() -> None:
        started = time.monotonic()
        try:
            result = call()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            return
        outcome.append((result, time.monotonic() - started))

    worker = threading.Thread(target=run, name="timed-lookup", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        pytest.fail(f"a lookup was still waiting after {limit:.1f}s")
    if errors:
        raise errors[0]
    return outcome[0]


def fallback_of(resolver: Resolver) -> CriFallback:
    fallback = resolver.cri
    assert fallback is not None, "the resolver has no CRI fallback"
    return fallback


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state ("T")."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # a thread that exited
        if stat.rsplit(")", 1)[1].split()[0] != "T":
            return False
    return True


@contextmanager
def frozen(containerd: Containerd) -> Iterator[None]:
    """containerd (ours, by the PID we started it with) stopped with SIGSTOP, every thread of
    it: its socket still accepts, but no call is answered until SIGCONT."""
    pid = containerd.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        poll(lambda: all_threads_stopped(pid), "containerd to stop on SIGSTOP")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def stopped(containerd: Containerd) -> Iterator[None]:
    """containerd stopped for real (its pods keep running), then started again on the same
    config, root, state and socket."""
    containerd.stop_daemon()
    try:
        yield
    finally:
        containerd.start()


def open_the_breaker(resolver: Resolver, miss: Callable[[], object]) -> float:
    """Make failing misses until the breaker opens; each may wait for its deadline, no longer.

    Returns ``time.monotonic()`` from just before the last failure: the breaker cannot let a
    probe through before that plus its backoff.
    """
    fallback = fallback_of(resolver)
    breaker = fallback.breaker
    last_started = time.monotonic()
    for n in range(breaker.failures_to_open):
        assert breaker.state == "closed", f"open after {n} failures"
        last_started = time.monotonic()
        answer, seconds = timed(miss)
        assert answer is None
        assert seconds <= DEADLINE + LATE, f"a miss took {seconds:.3f}s, deadline {DEADLINE}s"
    assert breaker.state == "open"
    return last_started


def assert_refused_at_once(resolver: Resolver, miss: Callable[[], object], until: float) -> None:
    """While the breaker is open, a miss is refused without a call, in well under a deadline.

    ``until``: when the backoff may end (a probe would then go through); checks stop before.
    """
    fallback = fallback_of(resolver)
    refused = fallback.calls["ContainerStatus", "breaker_open"]
    made = sum(fallback.calls.values()) - refused
    checked = 0
    while checked < 5 and time.monotonic() < until - 0.1:
        answer, seconds = timed(miss)
        assert answer is None
        assert seconds < AT_ONCE, f"a miss with the breaker open took {seconds * 1e3:.1f} ms"
        checked += 1
    assert checked, "the breaker's backoff ended before a miss could be checked"
    assert fallback.breaker.state == "open"
    assert fallback.calls["ContainerStatus", "breaker_open"] == refused + checked
    assert sum(fallback.calls.values()) - fallback.calls["ContainerStatus", "breaker_open"] == made


def failures(fallback: CriFallback) -> int:
    ok = {"ok", "not_found", "breaker_open"}
    return sum(n for (_, outcome), n in fallback.calls.items() if outcome not in ok)


# -- tests -------------------------------------------------------------------------------------


def test_every_container_and_sandbox_resolves_over_cri_with_the_index_off(
    containerd: Containerd,
    pod_factory: PodFactory,
    resolvers: Callable[..., Resolver],
    empty_root: str,
) -> None:
    """By PID and by id, each over its own resolver (so both really ask the CRI); the record
    is exactly what the container's bundle says. A sandbox is not a container to the CRI:
    ``ContainerStatus`` says NOT_FOUND, then ``PodSandboxStatus`` answers."""
    pods = [
        pod_factory(
            "web-6f2a1",
            [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", SLEEP)],
            namespace="shop",
        ),
        pod_factory("db-0c9e4", [ContainerSpec("main", SLEEP)], namespace="data"),
    ]
    socket = str(containerd.socket)
    by_pid = resolvers(runtime_roots=[empty_root], cri_socket=socket)
    by_id = resolvers(runtime_roots=[empty_root], cri_socket=socket)
    for pod in pods:
        for container_id, name in members(pod):
            want = expected(containerd.generation, pod, container_id, name)
            assert read_bundle(containerd.bundle_dir(container_id)) == want
            resolution = by_pid.resolve_pid(init_pid(containerd, container_id))
            assert resolution is not None, f"{name or 'sandbox'} of {pod.name} did not resolve"
            assert resolution.source == "cri"
            assert resolution.meta == want
            assert by_id.lookup_container(container_id) == want

    sandboxes = len(pods)
    containers = sum(len(pod.containers) for pod in pods)
    for resolver in (by_pid, by_id):
        fallback = fallback_of(resolver)
        assert fallback.endpoint == socket
        assert fallback.breaker.state == "closed"
        assert fallback.calls == Counter(
            {
                ("Version", "ok"): 1,
                ("ContainerStatus", "ok"): containers,
                ("ContainerStatus", "not_found"): sandboxes,
                ("PodSandboxStatus", "ok"): sandboxes,
            }
        )
        assert resolver.containers() == []  # CRI answers are cached, never indexed

    # The pod's labels (kubelet's, here) are asked of the CRI only when wanted, once per pod.
    for pod in pods:
        labels = by_id.pod_labels(pod.sandbox_id)
        assert labels is not None
        assert {key: labels.get(key) for key in POD_LABELS} == dict(
            zip(POD_LABELS, (pod.name, pod.namespace, pod.uid), strict=True)
        )
        assert by_id.pod_labels(pod.sandbox_id) is labels
    assert fallback_of(by_id).calls["PodSandboxStatus", "ok"] == 2 * sandboxes

    # Asked again: the positive cache answers, still from the CRI, with no call.
    calls = Counter(fallback_of(by_pid).calls)
    for pod in pods:
        for container_id, name in members(pod):
            resolution = by_pid.resolve_pid(init_pid(containerd, container_id))
            assert resolution is not None and resolution.source == "cri"
            assert resolution.meta == expected(containerd.generation, pod, container_id, name)
    assert fallback_of(by_pid).calls == calls

    # A host process is not a miss: no container id, nothing to ask.
    assert by_pid.resolve_pid(os.getpid()) is None
    assert by_pid.lookup_container("0" * 64) is None  # unknown to the runtime: NOT_FOUND twice
    assert fallback_of(by_pid).calls - calls == Counter(
        {("ContainerStatus", "not_found"): 1, ("PodSandboxStatus", "not_found"): 1}
    )


def test_twenty_indexed_containers_cost_no_cri_call(
    containerd: Containerd,
    pod_factory: PodFactory,
    resolvers: Callable[..., Resolver],
) -> None:
    """10 pods of 2 containers made after the resolver started: each member resolves by PID
    at once (from the index, or from its bundle if the watcher is a moment behind), then by
    PID, id and cgroup id from the index; the CRI client is never called."""
    client = counting_client(containerd)
    resolver = resolvers(runtime_roots=[str(containerd.state_dir)], cri_client=client)
    pods: list[Pod] = []
    for n in range(10):
        pod = pod_factory(
            f"fleet-{n}-4d8e",
            [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", SLEEP)],
            namespace="fleet",
        )
        pods.append(pod)
        for container_id, name in members(pod):
            resolution = resolver.resolve_pid(init_pid(containerd, container_id))
            assert resolution is not None and resolution.source in ("index", "bundle")
            assert resolution.meta == expected(containerd.generation, pod, container_id, name)
    assert sum(len(pod.containers) for pod in pods) == 20

    for pod in pods:
        for container_id, name in members(pod):
            poll(
                lambda cid=container_id: (r := resolver.container(cid)) and r.cgroup_id,
                f"{pod.name} {name or 'sandbox'} indexed with its cgroup id",
            )
            record = resolver.container(container_id)
            assert record is not None and record.cgroup_id is not None
            want = expected(containerd.generation, pod, container_id, name)
            resolution = resolver.resolve_pid(init_pid(containerd, container_id))
            assert resolution is not None and resolution.source == "index"
            assert resolution.meta == want
            assert resolver.lookup_container(container_id) == want
            assert resolver.lookup_cgroup_id(record.cgroup_id) == want
    assert resolver.lookup_pid(os.getpid()) is None  # a host process asks nothing either

    assert client.calls == Counter()
    assert fallback_of(resolver).calls == Counter()


def test_a_hung_containerd_never_stalls_a_lookup(
    containerd: Containerd,
    pod_factory: PodFactory,
    resolvers: Callable[..., Resolver],
    empty_root: str,
) -> None:
    """containerd SIGSTOPped: its socket accepts, nothing answers (the worst case: a call can
    only end at its deadline).

    Indexed containers still resolve from the index. Misses (a container the resolver has no
    bundle of, an id nobody knows) fail at their deadline, no later; after the breaker's
    ``failures_to_open`` of them it opens and misses return at once; the probe it lets through
    after its backoff fails at its deadline too, and reopens it. After SIGCONT the same
    resolver uses the CRI again, once the (doubled) backoff has passed. The production breaker
    settings, in real time.
    """
    pod = pod_factory(
        "hung-2b7f0",
        [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", SLEEP)],
        namespace="outage",
    )
    app, sidecar = pod.container_id("app"), pod.container_id("sidecar")
    pids = {container_id: init_pid(containerd, container_id) for container_id, _ in members(pod)}
    indexed_client = counting_client(containerd)
    indexed = resolvers(runtime_roots=[str(containerd.state_dir)], cri_client=indexed_client)
    for container_id, _ in members(pod):
        poll(lambda cid=container_id: indexed.container(cid), f"{container_id[:12]} indexed")
    blind = resolvers(runtime_roots=[empty_root], cri_client=counting_client(containerd))
    fallback = fallback_of(blind)
    breaker = fallback.breaker
    # Before the outage: the app is asked once (and cached); the sidecar never is.
    assert blind.lookup_container(app) == expected(containerd.generation, pod, app, "app")

    unknown = "0123456789abcdef" * 4
    with frozen(containerd):
        for container_id, name in members(pod):
            resolution = indexed.resolve_pid(pids[container_id])
            assert resolution is not None and resolution.source == "index"
            assert resolution.meta == expected(containerd.generation, pod, container_id, name)
        assert indexed_client.calls == Counter()
        # The indexed resolver's own miss: an id nobody knows waits for its deadline, no more.
        answer, seconds = timed(lambda: indexed.lookup_container(unknown))
        assert answer is None and seconds <= DEADLINE + LATE, seconds
        assert indexed_client.calls == Counter({"ContainerStatus": 1})

        # The positive cache needs no runtime.
        calls = Counter(fallback.calls)
        resolution = blind.resolve_pid(pids[app])
        assert resolution is not None and resolution.source == "cri"
        assert resolution.meta == expected(containerd.generation, pod, app, "app")
        assert fallback.calls == calls

        misses = iter(
            [
                lambda: blind.resolve_pid(pids[sidecar]),
                lambda: blind.lookup_container(unknown),
                lambda: blind.lookup_container(pod.sandbox_id),
            ]
        )
        last_failure_started = open_the_breaker(blind, lambda: next(misses)())
        assert fallback.calls - calls == Counter(
            {("ContainerStatus", "DEADLINE_EXCEEDED"): breaker.failures_to_open}
        )
        opened_at = time.monotonic()
        assert_refused_at_once(
            blind,
            lambda: blind.resolve_pid(pids[sidecar]),
            until=last_failure_started + breaker.base_backoff,
        )
        assert_refused_at_once(
            blind,
            lambda: blind.lookup_container(unknown),
            until=last_failure_started + breaker.base_backoff,
        )

        # The backoff passes while containerd still hangs: the one probe fails at its deadline.
        time.sleep(max(0.0, opened_at + breaker.base_backoff - time.monotonic()) + 0.05)
        before = failures(fallback)
        answer, seconds = timed(lambda: blind.resolve_pid(pids[sidecar]))
        assert answer is None and seconds <= DEADLINE + LATE, seconds
        assert failures(fallback) == before + 1
        assert breaker.state == "open"
        for container_id, _ in members(pod):  # the index never noticed
            resolution = indexed.resolve_pid(pids[container_id])
            assert resolution is not None and resolution.source == "index"

    # containerd answers again: the same resolver and fallback recover after the backoff.
    poll(
        lambda: blind.resolve_pid(pids[sidecar]),
        "the sidecar resolved over CRI after SIGCONT",
        timeout=TIMEOUT + 2 * breaker.base_backoff,
    )
    assert blind.cri is fallback and breaker.state == "closed"
    resolution = blind.resolve_pid(pids[sidecar])
    assert resolution is not None and resolution.source == "cri"
    assert resolution.meta == expected(containerd.generation, pod, sidecar, "sidecar")
    assert blind.lookup_container(pod.sandbox_id) == expected(
        containerd.generation, pod, pod.sandbox_id, None
    )
    assert blind.lookup_container(unknown) is None  # an answer now: NOT_FOUND
    assert fallback.calls["ContainerStatus", "not_found"] >= 2
    # Every failure was a deadline: the misses that opened the breaker, and the one probe.
    assert fallback.calls["ContainerStatus", "DEADLINE_EXCEEDED"] == breaker.failures_to_open + 1
    assert failures(fallback) == breaker.failures_to_open + 1


def test_a_record_cut_short_by_a_hang_is_not_kept(
    containerd: Containerd,
    pod_factory: PodFactory,
    resolvers: Callable[..., Resolver],
    empty_root: str,
) -> None:
    """A fallback's first answer takes two calls: ``ContainerStatus``, then ``Version`` (the
    runtime's name, asked once). containerd hangs between the two: the lookup still returns
    within its deadlines, with the pod and a runtime of "unknown", and that incomplete record
    is kept like a miss (``negative_ttl``), not like an answer (``positive_ttl``, minutes):
    once containerd answers again, the same resolver gives the whole record."""
    pod = pod_factory("cut-short-93c6d", [ContainerSpec("app", SLEEP)], namespace="outage")
    app = pod.container_id("app")
    client = counting_client(containerd)
    blind = resolvers(runtime_roots=[empty_root], cri_client=client)
    fallback = fallback_of(blind)
    with ExitStack() as thaw:
        client.before["Version"] = lambda: thaw.enter_context(frozen(containerd))
        meta, seconds = timed(lambda: blind.lookup_container(app))
    assert seconds <= 2 * DEADLINE + LATE, seconds
    assert meta == msgspec.structs.replace(
        expected(containerd.generation, pod, app, "app"), runtime="unknown"
    )
    assert fallback.calls == Counter(
        {("ContainerStatus", "ok"): 1, ("Version", "DEADLINE_EXCEEDED"): 1}
    )
    poll(
        lambda: blind.lookup_container(app) == expected(containerd.generation, pod, app, "app"),
        "the whole record, once containerd answers",
        timeout=fallback.negative_ttl + TIMEOUT,
    )
    assert fallback.calls["Version", "ok"] == 1
    assert fallback.breaker.state == "closed"


def test_a_restarted_containerd_is_used_again(
    tmp_path: Path,
    test_images: ImageSet,
    generation: Generation,
    resolvers: Callable[..., Resolver],
    empty_root: str,
) -> None:
    """containerd stopped for real (SIGTERM; its shims and containers keep running), then
    started again on the same root, state and socket, as on a node where it is restarted.

    A private daemon, so the session's is never at risk. While it is down, its socket is gone:
    misses fail fast (connection refused), the breaker opens, the index answers as ever.
    Once it is back the same resolver, built the production way (``cri_socket``), resolves
    over CRI again, and the restarted daemon still knows the pod it never stopped.
    """
    with Containerd(tmp_path / "restarted", generation=generation) as daemon:
        daemon.import_images(test_images)
        indexed = resolvers(runtime_roots=[str(daemon.state_dir)])
        changes: list[tuple[Change, str | None]] = []

        def record(entry: IndexedContainer, change: Change) -> None:
            changes.append((change, entry.meta.container_id))

        indexed.subscribe(record)
        blind = resolvers(
            runtime_roots=[empty_root], cri_socket=str(daemon.socket), cri_timeout=DEADLINE
        )
        cri = daemon.cri()
        specs = [ContainerSpec("app", SLEEP), ContainerSpec("sidecar", SLEEP)]
        with cri.pod("restarted-5e1c8", specs, namespace="outage") as pod:
            app, sidecar = pod.container_id("app"), pod.container_id("sidecar")
            pids = {cid: init_pid(daemon, cid) for cid, _ in members(pod)}
            for container_id, _ in members(pod):
                poll(
                    lambda cid=container_id: indexed.container(cid), f"{container_id[:12]} indexed"
                )
            assert blind.lookup_container(app) == expected(generation, pod, app, "app")
            fallback = fallback_of(blind)
            shims = daemon.shim_pids()
            assert shims
            added = list(changes)

            with stopped(daemon):
                assert daemon.pid is None
                assert all(is_alive(pid) for pid in [*pids.values(), *shims])
                for container_id, name in members(pod):
                    resolution = indexed.resolve_pid(pids[container_id])
                    assert resolution is not None and resolution.source == "index"
                    assert resolution.meta == expected(generation, pod, container_id, name)
                last_failure_started = open_the_breaker(
                    blind, lambda: blind.resolve_pid(pids[sidecar])
                )
                assert fallback.calls["ContainerStatus", "UNAVAILABLE"] == (
                    fallback.breaker.failures_to_open
                )
                assert_refused_at_once(
                    blind,
                    lambda: blind.resolve_pid(pids[sidecar]),
                    until=last_failure_started + fallback.breaker.base_backoff,
                )

            poll(
                lambda: blind.resolve_pid(pids[sidecar]),
                "the sidecar resolved over CRI after the restart",
                timeout=TIMEOUT + 2 * fallback.breaker.base_backoff,
            )
            assert blind.cri is fallback and fallback.breaker.state == "closed"
            resolution = blind.resolve_pid(pids[sidecar])
            assert resolution is not None and resolution.source == "cri"
            assert resolution.meta == expected(generation, pod, sidecar, "sidecar")
            assert blind.lookup_container(pod.sandbox_id) == expected(
                generation, pod, pod.sandbox_id, None
            )

            # The restart touched no container: same shims, same processes, no index change.
            assert daemon.shim_pids() == shims
            assert all(is_alive(pid) for pid in pids.values())
            assert {c.id for c in cri.list_containers()} == {app, sidecar}
            assert changes == added
        # Teardown through the restarted daemon; stop() raises if anything had to be forced.


def test_cli_lookup_in_cri_mode(
    containerd: Containerd, pod_factory: PodFactory, empty_root: str
) -> None:
    """``lookup --runtime-root <empty> --cri-socket <socket> --json --explain``: the record from
    the CRI, and each step tried (cgroup, index, bundle, cri) with its timing."""
    pod = pod_factory("cli-cri-8a3d5", [ContainerSpec("app", SLEEP)], namespace="shop")
    socket = str(containerd.socket)
    options = ("--runtime-root", empty_root, "--cri-socket", socket)
    for container_id, name in members(pod):
        pid = init_pid(containerd, container_id)
        result = cli(containerd, "lookup", str(pid), *options, "--json", "--explain")
        assert result.returncode == 0, result.stderr
        row = json.loads(result.stdout)
        steps = row.pop("explain")
        want = msgspec.structs.asdict(expected(containerd.generation, pod, container_id, name))
        assert row == {**want, "pid": pid, "source": "cri"}
        assert [(s["step"], s["result"]) for s in steps] == [
            ("cgroup", container_id),
            ("index", "miss"),
            ("bundle", "none under the runtime roots"),
            ("cri", f"{socket}: found"),
        ]
        assert all(isinstance(s["ms"], int | float) and s["ms"] >= 0 for s in steps)

    # A host process: not in a container, so nothing is asked (exit 1, one step).
    result = cli(containerd, "lookup", str(os.getpid()), *options, "--json", "--explain")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "not in a container" in result.stderr
    steps = json.loads(result.stderr.splitlines()[-1])["explain"]
    assert [s["step"] for s in steps] == ["cgroup"]
