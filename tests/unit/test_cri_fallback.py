"""The CRI fallback against a fake CRI runtime: a real gRPC server on a unix socket.

Deadlines are short (``TIMEOUT``); time bounds are "within the deadline(s), plus ``MARGIN``".
The breaker's recovery runs on a fake clock, so nothing waits for a backoff.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from fakecri import (
    FakeCri,
    container_response,
    cri_cases,
    info_map,
    sandbox_response,
    socket_path,
)
from fakehost import (
    FakeHost,
    Pod,
    containerd_cgroup_file,
    containerd_spec,
    crio_spec,
    host_cgroup_file,
    new_id,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ociresolve import ContainerMeta, Resolver
from ociresolve.cri.breaker import Breaker
from ociresolve.cri.client import GrpcCriClient, StatusReply
from ociresolve.cri.fallback import CriFallback

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

TIMEOUT = 0.2
MARGIN = 1.0
APP_PID = 4242
IMAGE = "localhost/ociresolve-e2e/busybox:1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[FakeCri]:
    server = FakeCri(socket_path(tmp_path)).start()
    yield server
    server.stop()


@pytest.fixture
def empty_root(tmp_path: Path) -> str:
    root = tmp_path / "empty"
    root.mkdir()
    return str(root)


@pytest.fixture
def new_resolver(empty_root: str, cri: FakeCri) -> Iterator[Callable[..., Resolver]]:
    """Resolvers with no bundle anywhere (an empty runtime root) and the fake CRI's socket."""
    made: list[Resolver] = []

    def make(**options: Any) -> Resolver:
        options.setdefault("runtime_roots", [empty_root])
        options.setdefault("cri_socket", cri.socket)
        options.setdefault("cri_timeout", TIMEOUT)
        resolver = Resolver(**options)
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        resolver.close()


@pytest.fixture
def new_fallback(cri: FakeCri) -> Iterator[Callable[..., CriFallback]]:
    made: list[CriFallback] = []

    def make(socket: str | None = None, timeout: float = TIMEOUT, **options: Any) -> CriFallback:
        fallback = CriFallback(GrpcCriClient(socket or cri.socket, timeout=timeout), **options)
        made.append(fallback)
        return fallback

    yield make
    for fallback in made:
        fallback.close()


def serve_container(
    cri: FakeCri,
    container_id: str,
    pod: Pod,
    *,
    shape: str = "info",
    spec: dict[str, Any] | None = None,
    name: str | None = "app",
    labels: dict[str, str] | None = None,
    image: str | None = None,
) -> None:
    document = {
        "pid": APP_PID,
        "sandboxID": pod.sandbox_id,
        "runtimeSpec": containerd_spec(container_id, pod) if spec is None else spec,
    }
    cri.containers[container_id] = container_response(
        container_id, name=name, image=image, labels=labels, info=info_map(document, shape)
    )


def app_meta(container_id: str, pod: Pod, runtime: str = "containerd") -> ContainerMeta:
    return ContainerMeta(
        runtime=runtime,
        container_type="container",
        container_id=container_id,
        sandbox_id=pod.sandbox_id,
        pod_name=pod.name,
        pod_namespace=pod.namespace,
        pod_uid=pod.uid,
        container_name="app",
        image=IMAGE,
    )


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# -- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["info", "flat"])
def test_a_container_from_its_runtime_spec(
    cri: FakeCri, new_resolver: Callable[..., Resolver], shape: str
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod, shape=shape)
    resolver = new_resolver()
    assert resolver.lookup_container(app) == app_meta(app, pod)
    assert cri.calls == {"Version": 1, "ContainerStatus": 1}


@pytest.mark.parametrize(
    ("runtime_name", "runtime"),
    [("containerd", "containerd"), ("cri-o", "cri-o"), ("CRI-O", "cri-o"), ("Kata", "kata")],
)
def test_the_runtime_is_the_one_that_answered(
    cri: FakeCri, new_resolver: Callable[..., Resolver], runtime_name: str, runtime: str
) -> None:
    pod, app = Pod.new(), new_id()
    cri.runtime_name = runtime_name
    serve_container(cri, app, pod, spec=crio_spec(app, pod, name="app"))
    meta = new_resolver().lookup_container(app)
    assert meta == msgspec.structs.replace(
        app_meta(app, pod, runtime), image="k8s.gcr.io/coredns/coredns:v1.8.6"
    )


def test_a_sandbox_id_is_asked_of_pod_sandbox_status(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod = Pod.new()
    spec = containerd_spec(pod.sandbox_id, pod, name=None)
    cri.sandboxes[pod.sandbox_id] = sandbox_response(
        pod.sandbox_id, info=info_map({"pid": 99, "runtimeSpec": spec})
    )
    meta = new_resolver().lookup_container(pod.sandbox_id)
    assert meta == ContainerMeta(
        runtime="containerd",
        container_type="sandbox",
        container_id=pod.sandbox_id,
        sandbox_id=pod.sandbox_id,
        pod_name=pod.name,
        pod_namespace=pod.namespace,
        pod_uid=pod.uid,
    )
    assert cri.calls == {"Version": 1, "ContainerStatus": 1, "PodSandboxStatus": 1}


def test_a_container_without_a_spec_from_kubelet_labels(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod, app = Pod.new(), new_id()
    labels = {
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
        "io.kubernetes.container.name": "app",
    }
    cri.containers[app] = container_response(
        app,
        name="from-metadata",
        image=IMAGE,
        labels=labels,
        info=info_map({"pid": APP_PID, "sandboxID": pod.sandbox_id}),
    )
    assert new_resolver().lookup_container(app) == app_meta(app, pod)
    assert cri.count("PodSandboxStatus") == 0  # the pod was complete: its sandbox is not asked


def test_a_container_lacking_pod_fields_gets_them_from_its_sandbox_status(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    """containerd 1.4: a container's spec names its sandbox and itself, not its pod."""
    pod = Pod.new()
    containers = [new_id(), new_id()]
    for container in containers:
        spec = containerd_spec(container, pod)
        spec["annotations"] = {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": pod.sandbox_id,
            "io.kubernetes.cri.container-name": "app",
        }
        spec["linux"]["cgroupsPath"] = f"/k8s.io/{container}"  # no pod UID in it either
        serve_container(cri, container, pod, spec=spec, name=None, image=IMAGE)
    cri.sandboxes[pod.sandbox_id] = sandbox_response(
        pod.sandbox_id, name=pod.name, namespace=pod.namespace, uid=pod.uid
    )
    resolver = new_resolver()
    for container in containers:
        assert resolver.lookup_container(container) == app_meta(container, pod)
    # The sandbox was asked once: the second container's pod came from the cache.
    assert cri.calls == {"Version": 1, "ContainerStatus": 3, "PodSandboxStatus": 1}


def test_a_container_whose_sandbox_is_unknown_keeps_what_it_has(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod, app = Pod.new(), new_id()
    cri.containers[app] = container_response(
        app, name="app", info=info_map({"pid": APP_PID, "sandboxID": pod.sandbox_id})
    )
    assert new_resolver().lookup_container(app) == ContainerMeta(
        runtime="containerd",
        container_type="container",
        container_id=app,
        sandbox_id=pod.sandbox_id,
        container_name="app",
    )


def test_a_container_naming_itself_as_its_sandbox_does_not_wait_on_itself(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    """Garbage: a container without pod fields whose sandbox is itself. Completing its pod asks
    for that id again, while this very lookup is resolving it."""
    app = new_id()
    cri.containers[app] = container_response(
        app, name="app", info=info_map({"pid": APP_PID, "sandboxID": app})
    )
    resolver = new_resolver(cri_timeout=1.0)  # any wait on itself would be 3 s
    meta, elapsed = timed(lambda: resolver.lookup_container(app))
    assert meta is not None and (meta.container_id, meta.sandbox_id) == (app, app)
    assert elapsed < 1.0


def test_a_chain_of_sandboxes_is_followed_one_level_only(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    """Garbage: every container's sandbox is another container lacking pod fields."""
    chain = [new_id() for _ in range(400)]
    for container, sandbox in itertools.pairwise(chain):
        cri.containers[container] = container_response(
            container, name="app", info=info_map({"pid": APP_PID, "sandboxID": sandbox})
        )
    resolver = new_resolver()
    meta = resolver.lookup_container(chain[0])
    assert meta is not None and meta.sandbox_id == chain[1]
    assert cri.count("ContainerStatus") <= 3


CASES = cri_cases()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file.name)
def test_real_payloads_resolve_to_their_bundle_case(
    cri: FakeCri, new_fallback: Callable[..., CriFallback], case: Any
) -> None:
    """Each real verbose payload, served as the runtime's status of the id its bundle case
    names, resolves to that case's record (the ``.pb.txt``: the whole real response)."""
    expected = dict(case.expected["expected"])
    container_id = expected["container_id"]
    cri.runtime_name = expected["runtime"]
    if case.file.name.endswith(".pb.txt"):
        response = case.sandbox_response()
        cri.sandboxes[container_id] = response
        # containerd 1.2's spec has no pod name or namespace: the status's metadata has them.
        assert (expected["pod_name"], expected["pod_namespace"]) == (None, None)
        expected["pod_name"] = response.status.metadata.name
        expected["pod_namespace"] = response.status.metadata.namespace
    elif expected["container_type"] == "sandbox":
        cri.sandboxes[container_id] = sandbox_response(container_id, info=case.info())
    else:
        cri.containers[container_id] = container_response(container_id, info=case.info())
    meta = new_fallback().resolve(container_id)
    assert meta is not None
    assert msgspec.structs.asdict(meta) == expected


# -- errors and garbage --------------------------------------------------------------------------


def test_not_found_is_none_and_cached(cri: FakeCri, new_resolver: Callable[..., Resolver]) -> None:
    resolver = new_resolver()
    unknown = new_id()
    assert resolver.lookup_container(unknown) is None
    assert resolver.lookup_container(unknown) is None
    assert cri.calls == {"ContainerStatus": 1, "PodSandboxStatus": 1}
    assert resolver.cri is not None and resolver.cri.breaker.state == "closed"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
def test_an_error_is_none_and_not_cached(
    cri: FakeCri, new_resolver: Callable[..., Resolver], code: grpc.StatusCode
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    cri.errors["ContainerStatus"] = code
    resolver = new_resolver()
    assert resolver.lookup_container(app) is None
    assert resolver.cri is not None
    assert resolver.cri.calls["ContainerStatus", code.name] == 1
    cri.heal()
    assert resolver.lookup_container(app) == app_meta(app, pod)  # "down" was not an answer


def test_an_error_of_the_sandbox_call_is_not_cached(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod = Pod.new()
    cri.errors["PodSandboxStatus"] = grpc.StatusCode.UNAVAILABLE
    resolver = new_resolver()
    assert resolver.lookup_container(pod.sandbox_id) is None
    cri.heal()
    cri.sandboxes[pod.sandbox_id] = sandbox_response(
        pod.sandbox_id, name=pod.name, namespace=pod.namespace, uid=pod.uid
    )
    meta = resolver.lookup_container(pod.sandbox_id)
    assert meta is not None and meta.pod_uid == pod.uid


def test_a_failing_version_call_does_not_lose_the_container(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    cri.errors["Version"] = grpc.StatusCode.UNIMPLEMENTED
    meta = new_resolver().lookup_container(app)
    assert meta == msgspec.structs.replace(app_meta(app, pod), runtime="unknown")


def test_a_record_without_its_runtime_name_is_asked_again_soon(
    cri: FakeCri, new_fallback: Callable[..., CriFallback]
) -> None:
    clock = Clock()
    fallback = new_fallback(negative_ttl=2.0, clock=clock)
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    cri.errors["Version"] = grpc.StatusCode.UNAVAILABLE
    unnamed = msgspec.structs.replace(app_meta(app, pod), runtime="unknown")
    assert fallback.resolve(app) == unnamed
    cri.heal()
    clock.advance(1.9)
    assert fallback.resolve(app) == unnamed  # cached, for the negative TTL only
    clock.advance(0.2)
    assert fallback.resolve(app) == app_meta(app, pod)
    assert cri.calls == {"ContainerStatus": 2, "Version": 2}


@pytest.mark.parametrize(
    "info",
    [
        {"info": "this is not JSON"},
        {"info": "[1, 2, 3]"},
        {"info": "{" * 50},
        {"info": "[" * 200_000},  # nested too deeply for Python's json
        {"info": '{"pid": true, "sandboxID": 5, "runtimeSpec": {"annotations": {"a": 1}}}'},
        {
            "info": json.dumps(
                {
                    "pid": "4242",
                    "sandboxID": ["x"],
                    "runtimeSpec": {
                        "annotations": {"io.kubernetes.cri.container-type": 1, "x": None},
                        "linux": {"cgroupsPath": {"a": 1}},
                    },
                }
            )
        },
        {"pid": "true", "runtimeSpec": "[]", "sandboxID": "{"},
        {"pid": "\x00", "runtimeSpec": "\ufffd", "sandboxID": "null"},
    ],
    ids=lambda info: repr(info)[:40],
)
def test_garbage_info_falls_back_to_the_status(
    cri: FakeCri, new_resolver: Callable[..., Resolver], info: dict[str, str]
) -> None:
    pod, app = Pod.new(), new_id()
    labels = {
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
    }
    cri.containers[app] = container_response(app, name="app", image=IMAGE, labels=labels, info=info)
    meta = new_resolver().lookup_container(app)
    assert meta == msgspec.structs.replace(app_meta(app, pod), sandbox_id=None)


def test_an_undecodable_response_is_an_error(
    tmp_path: Path, new_resolver: Callable[..., Resolver]
) -> None:
    junk = FakeCri(
        socket_path(tmp_path, "junk.sock"), mangle=lambda _, data: b"\xff\xff\xff" + data
    ).start()
    try:
        pod, app = Pod.new(), new_id()
        serve_container(junk, app, pod)
        resolver = new_resolver(cri_socket=junk.socket)
        assert resolver.lookup_container(app) is None
        assert resolver.cri is not None
        assert resolver.cri.calls["ContainerStatus", "INTERNAL"] == 1
        assert junk.count("ContainerStatus") == 1
    finally:
        junk.stop()


# Field 100 as a varint, field 101 as bytes, field 102 as a fixed64: none in our proto.
UNKNOWN_FIELDS = b"\xa0\x06\x01" + b"\xaa\x06\x05hello" + b"\xb1\x06" + bytes(8)


def test_unknown_fields_pass_through_harmlessly(
    tmp_path: Path, new_resolver: Callable[..., Resolver]
) -> None:
    newer = FakeCri(
        socket_path(tmp_path, "newer.sock"), mangle=lambda _, data: data + UNKNOWN_FIELDS
    ).start()
    try:
        pod, app = Pod.new(), new_id()
        serve_container(newer, app, pod)
        newer.sandboxes[pod.sandbox_id] = sandbox_response(
            pod.sandbox_id, name=pod.name, namespace=pod.namespace, uid=pod.uid
        )
        resolver = new_resolver(cri_socket=newer.socket)
        assert resolver.lookup_container(app) == app_meta(app, pod)
        sandbox = resolver.lookup_container(pod.sandbox_id)
        assert sandbox is not None and sandbox.pod_name == pod.name
    finally:
        newer.stop()


class ScriptedClient:
    """A ``CriClient`` in Python: answers or raises whatever the test says."""

    endpoint = "scripted"
    timeout = TIMEOUT

    def __init__(
        self,
        *,
        container: StatusReply | None = None,
        sandbox: StatusReply | None = None,
        raises: dict[str, BaseException] | None = None,
        runtime: str = "containerd",
    ) -> None:
        self.container, self.sandbox, self.runtime = container, sandbox, runtime
        self.raises = raises or {}

    def _raise(self, method: str) -> None:
        if method in self.raises:
            raise self.raises[method]

    def runtime_name(self) -> str:
        self._raise("runtime_name")
        return self.runtime

    def container_status(self, container_id: str) -> StatusReply | None:
        self._raise("container_status")
        return self.container

    def sandbox_status(self, sandbox_id: str) -> StatusReply | None:
        self._raise("sandbox_status")
        return self.sandbox

    def close(self) -> None:
        pass


@pytest.mark.parametrize("method", ["runtime_name", "container_status", "sandbox_status"])
@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), ValueError("bad"), KeyError("k"), TypeError("t"), RecursionError()],
    ids=repr,
)
def test_no_exception_of_a_client_escapes_the_resolver(
    empty_root: str, method: str, error: Exception
) -> None:
    reply = StatusReply(kind="container", id="a" * 64, name="app")
    client = ScriptedClient(container=reply, raises={method: error})
    with Resolver(runtime_roots=[empty_root], cri_client=client) as resolver:
        for container_id in ("a" * 64, "b" * 64):
            meta = resolver.lookup_container(container_id)
            assert meta is None or isinstance(meta, ContainerMeta)
        resolver.pod_labels("c" * 64)


reply_text = st.text(max_size=8) | st.sampled_from(["", "sandbox", "container", "{", "[]", "0"])
info_values = st.one_of(
    st.text(max_size=30),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["pid", "runtimeSpec", "annotations", "linux", "sandboxID"]),
                children,
                max_size=4,
            )
        ),
        max_leaves=15,
    ).map(json.dumps),
)
replies = st.builds(
    StatusReply,
    kind=st.sampled_from(["container", "sandbox"]),
    id=st.text(min_size=1, max_size=8),
    name=st.none() | reply_text,
    namespace=st.none() | reply_text,
    uid=st.none() | reply_text,
    image=st.none() | reply_text,
    labels=st.dictionaries(
        st.sampled_from(["io.kubernetes.pod.name", "io.kubernetes.pod.uid", "x"]), reply_text
    ),
    info=st.dictionaries(st.sampled_from(["info", "pid", "runtimeSpec", "sandboxID"]), info_values),
)


@given(st.none() | replies, st.none() | replies, reply_text)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_replies_never_raise(
    container: StatusReply | None, sandbox: StatusReply | None, runtime: str
) -> None:
    fallback = CriFallback(ScriptedClient(container=container, sandbox=sandbox, runtime=runtime))
    meta = fallback.resolve("a" * 64)
    assert meta is None or isinstance(meta, ContainerMeta)


# -- deadlines and the breaker -------------------------------------------------------------------


@pytest.mark.parametrize(
    "hang",
    [
        {"Version", "ContainerStatus", "PodSandboxStatus"},
        {"Version"},
        {"PodSandboxStatus"},
    ],
    ids=lambda hang: "+".join(sorted(hang)),
)
def test_a_hanging_runtime_never_holds_a_lookup_past_its_deadline(
    cri: FakeCri, new_resolver: Callable[..., Resolver], hang: set[str]
) -> None:
    """Each lookup here makes at most one call that hangs (then the breaker is open): it
    returns within one deadline, plus the margin."""
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    cri.hang = hang
    resolver = new_resolver()
    for container_id in (app, new_id(), new_id(), new_id(), new_id()):
        _, elapsed = timed(
            lambda container_id=container_id: resolver.lookup_container(container_id)
        )
        assert elapsed < TIMEOUT + MARGIN


def test_a_dead_socket_is_a_prompt_miss(tmp_path: Path, empty_root: str) -> None:
    with Resolver(
        runtime_roots=[empty_root], cri_socket=str(tmp_path / "dead.sock"), cri_timeout=TIMEOUT
    ) as resolver:
        meta, elapsed = timed(lambda: resolver.lookup_container(new_id()))
        assert meta is None
        assert elapsed < TIMEOUT + MARGIN
        assert resolver.cri is not None
        assert resolver.cri.calls["ContainerStatus", "UNAVAILABLE"] == 1


@pytest.mark.parametrize("fault", ["UNAVAILABLE", "INTERNAL", "hang"])
def test_the_breaker_opens_then_lookups_return_at_once_without_a_call(
    cri: FakeCri, new_resolver: Callable[..., Resolver], fault: str
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    if fault == "hang":
        cri.hang = {"ContainerStatus"}
    else:
        cri.errors["ContainerStatus"] = grpc.StatusCode[fault]
    resolver = new_resolver()
    for _ in range(3):  # failures_to_open
        _, elapsed = timed(lambda: resolver.lookup_container(app))
        assert elapsed < TIMEOUT + MARGIN
    assert resolver.cri is not None and resolver.cri.breaker.state == "open"
    assert cri.total() == 3
    for container_id in [app] * 50 + [new_id() for _ in range(50)]:
        meta, elapsed = timed(
            lambda container_id=container_id: resolver.lookup_container(container_id)
        )
        assert meta is None
        assert elapsed < TIMEOUT  # no call was waited for
    assert cri.total() == 3
    assert resolver.cri.calls["ContainerStatus", "breaker_open"] == 100


def test_the_half_open_probe_closes_the_breaker_once_the_runtime_recovers(
    cri: FakeCri, new_fallback: Callable[..., CriFallback]
) -> None:
    clock = Clock()
    fallback = new_fallback(breaker=Breaker(backoff=1.0, clock=clock), clock=clock)
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    cri.errors["ContainerStatus"] = grpc.StatusCode.UNAVAILABLE
    for _ in range(3):
        assert fallback.resolve(app) is None
    assert fallback.breaker.state == "open" and cri.total() == 3
    # Still down when the probe goes: the backoff doubles.
    clock.advance(1.0)
    assert fallback.resolve(app) is None
    assert cri.total() == 4 and fallback.breaker.state == "open"
    cri.heal()
    clock.advance(1.0)
    assert fallback.resolve(app) is None  # refused: 2 s have not passed yet
    assert cri.total() == 4
    clock.advance(1.0)
    assert fallback.resolve(app) == app_meta(app, pod)  # the probe
    assert fallback.breaker.state == "closed"
    assert cri.calls == {"ContainerStatus": 5, "Version": 1}
    other = new_id()
    serve_container(cri, other, pod)
    meta = fallback.resolve(other)
    assert meta is not None and meta.container_id == other


def test_a_resolver_recovers_when_the_runtime_restarts(
    tmp_path: Path, empty_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime goes away (its socket too) and comes back on the same path: the same
    resolver resolves again once the breaker's probe succeeds."""
    clock = Clock()
    monkeypatch.setattr(
        "ociresolve.cri.fallback.Breaker", lambda **_: Breaker(backoff=1.0, clock=clock)
    )
    socket = socket_path(tmp_path, "restart.sock")
    pod, app = Pod.new(), new_id()
    first = FakeCri(socket).start()
    serve_container(first, app, pod)
    resolver = Resolver(runtime_roots=[empty_root], cri_socket=socket, cri_timeout=TIMEOUT)
    try:
        assert resolver.lookup_container(app) == app_meta(app, pod)
        first.stop()
        others = [new_id() for _ in range(4)]
        for other in others:
            _, elapsed = timed(lambda other=other: resolver.lookup_container(other))
            assert elapsed < TIMEOUT + MARGIN
        assert resolver.cri is not None and resolver.cri.breaker.state == "open"
        second = FakeCri(socket).start()
        try:
            serve_container(second, others[0], pod)
            assert resolver.lookup_container(others[0]) is None  # the breaker is still open
            assert second.total() == 0
            # The probe may hit the channel still backing off from the old socket: probe again
            # (each failure doubles the fake backoff; a real reconnect takes < 1 s).
            deadline = time.monotonic() + 10
            while (meta := resolver.lookup_container(others[0])) is None:
                assert time.monotonic() < deadline, "never reconnected"
                clock.advance(64.0)
                time.sleep(0.02)
            assert meta == app_meta(others[0], pod)
            assert resolver.cri.breaker.state == "closed"
        finally:
            second.stop()
    finally:
        resolver.close()


def test_concurrent_lookups_of_a_hanging_runtime_stay_within_the_deadline(
    cri: FakeCri, new_resolver: Callable[..., Resolver], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()  # frozen: once open, the breaker stays open
    monkeypatch.setattr(
        "ociresolve.cri.fallback.Breaker", lambda **_: Breaker(backoff=1.0, clock=clock)
    )
    cri.hang = {"ContainerStatus"}
    resolver = new_resolver()
    unknown = new_id()
    start = threading.Barrier(8)
    slowest: list[float] = []
    errors: list[BaseException] = []

    def storm() -> None:
        start.wait()
        worst = 0.0
        try:
            for _ in range(20):
                meta, elapsed = timed(lambda: resolver.lookup_container(unknown))
                assert meta is None
                worst = max(worst, elapsed)
        except BaseException as exc:
            errors.append(exc)
        slowest.append(worst)

    threads = [threading.Thread(target=storm) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # A follower waits for the leader's call at most 3 deadlines.
    assert max(slowest) < 3 * TIMEOUT + MARGIN
    assert cri.count("ContainerStatus") == 3  # single flight, then the breaker


# -- caches and single flight --------------------------------------------------------------------


def test_a_storm_of_lookups_of_one_unknown_id_costs_one_resolution(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    resolver = new_resolver()
    unknown = new_id()
    for _ in range(1000):
        assert resolver.lookup_container(unknown) is None
    # One resolution: the container call, then the sandbox call (it might be a sandbox's id).
    assert cri.calls == {"ContainerStatus": 1, "PodSandboxStatus": 1}


def test_a_storm_of_lookups_of_one_known_id_costs_one_call(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    resolver = new_resolver()
    for _ in range(1000):
        assert resolver.lookup_container(app) == app_meta(app, pod)
    assert cri.calls == {"Version": 1, "ContainerStatus": 1}


def test_the_negative_cache_expires(cri: FakeCri, new_fallback: Callable[..., CriFallback]) -> None:
    clock = Clock()
    fallback = new_fallback(negative_ttl=2.0, clock=clock)
    pod, app = Pod.new(), new_id()
    assert fallback.resolve(app) is None
    serve_container(cri, app, pod)  # created meanwhile
    clock.advance(1.9)
    assert fallback.resolve(app) is None  # still the cached answer
    assert cri.count("ContainerStatus") == 1
    clock.advance(0.2)
    assert fallback.resolve(app) == app_meta(app, pod)
    assert cri.count("ContainerStatus") == 2


@pytest.mark.parametrize("known", [True, False], ids=["known", "unknown"])
def test_concurrent_misses_of_one_id_share_one_call(
    cri: FakeCri, new_resolver: Callable[..., Resolver], known: bool
) -> None:
    pod, app = Pod.new(), new_id()
    if known:
        serve_container(cri, app, pod)
    cri.delay = 0.2  # long enough for the 8 lookups to overlap
    resolver = new_resolver(cri_timeout=5.0)
    start = threading.Barrier(8)
    results: list[ContainerMeta | None] = []

    def look() -> None:
        start.wait()
        results.append(resolver.lookup_container(app))

    threads = [threading.Thread(target=look) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [app_meta(app, pod) if known else None] * 8
    assert cri.count("ContainerStatus") == 1
    assert cri.count("PodSandboxStatus") == (0 if known else 1)


def test_pod_labels_are_fetched_lazily_once_per_sandbox(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    labels = {"app": "web", "io.kubernetes.pod.name": pod.name}
    cri.sandboxes[pod.sandbox_id] = sandbox_response(pod.sandbox_id, name=pod.name, labels=labels)
    other = Pod.new("empty")
    cri.sandboxes[other.sandbox_id] = sandbox_response(other.sandbox_id, name=other.name)
    resolver = new_resolver()
    meta = resolver.lookup_container(app)
    assert meta is not None and meta.sandbox_id == pod.sandbox_id
    assert cri.count("PodSandboxStatus") == 0  # not until someone asks
    for _ in range(5):
        assert resolver.pod_labels(pod.sandbox_id) == labels
        assert resolver.pod_labels(other.sandbox_id) == {}
    assert cri.count("PodSandboxStatus") == 2
    assert resolver.pod_labels(new_id()) is None  # an unknown sandbox


# -- without CRI ---------------------------------------------------------------------------------


def test_cri_off_never_calls_the_runtime(
    cri: FakeCri, new_resolver: Callable[..., Resolver]
) -> None:
    pod, app = Pod.new(), new_id()
    serve_container(cri, app, pod)
    for resolver in (
        new_resolver(cri=False),
        new_resolver(cri=False, cri_client=GrpcCriClient(cri.socket, timeout=TIMEOUT)),
    ):
        assert resolver.lookup_container(app) is None
        assert resolver.pod_labels(pod.sandbox_id) is None
        assert resolver.cri is None
    assert cri.total() == 0


# -- the fake host: lookup_pid, resolve_pid, explain_pid -----------------------------------------


@dataclass
class Node:
    """A host whose runtime roots hold no bundle, a process in a container only the fake CRI
    knows, and that CRI's socket on the host (``socket``, a host path)."""

    host: FakeHost
    pod: Pod
    app: str
    cri: FakeCri
    socket: str = "/run/fake-cri/cri.sock"

    def resolver(self, **options: Any) -> Resolver:
        options.setdefault("runtime_roots", ["/empty"])
        options.setdefault("cri_timeout", TIMEOUT)
        return Resolver(host_root=str(self.host.root), **options)


@pytest.fixture
def node(host: FakeHost) -> Iterator[Node]:
    pod, app = Pod.new(), new_id()
    host.make_roots()
    host.path("/empty").mkdir()
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    host.set_proc_cgroup(1, host_cgroup_file())
    socket = host.path(Node.socket)
    socket.parent.mkdir(parents=True)
    cri = FakeCri(str(socket)).start()
    serve_container(cri, app, pod)
    try:
        yield Node(host=host, pod=pod, app=app, cri=cri)
    finally:
        cri.stop()


def test_lookup_pid_over_cri(node: Node) -> None:
    with node.resolver(cri_socket=node.socket) as resolver:
        assert resolver.lookup_pid(APP_PID) == app_meta(node.app, node.pod)
        resolution = resolver.resolve_pid(APP_PID)
        assert resolution is not None and resolution.source == "cri"
        assert resolution.meta == app_meta(node.app, node.pod)
        assert resolver.lookup_pid(1) is None  # a host process: no call
    assert node.cri.count("ContainerStatus") == 1


def test_the_default_cri_socket_is_found_on_the_host(node: Node) -> None:
    """Without ``cri_socket``, containerd's default socket below the host root is used."""
    socket = node.host.path("/run/containerd/containerd.sock")
    containerd = FakeCri(str(socket)).start()
    try:
        serve_container(containerd, node.app, node.pod)
        with node.resolver() as resolver:
            assert resolver.lookup_pid(APP_PID) == app_meta(node.app, node.pod)
            assert resolver.cri is not None and resolver.cri.endpoint == str(socket)
        assert containerd.count("ContainerStatus") == 1
        assert node.cri.total() == 0
    finally:
        containerd.stop()


def test_explain_pid_names_every_step(node: Node) -> None:
    with node.resolver(cri_socket=node.socket) as resolver:
        explanation = resolver.explain_pid(APP_PID)
    assert explanation.container_id == node.app
    assert explanation.resolution is not None
    assert explanation.resolution.source == "cri"
    assert explanation.resolution.meta == app_meta(node.app, node.pod)
    assert [(s.step, s.result) for s in explanation.steps] == [
        ("cgroup", node.app),
        ("index", "miss"),
        ("bundle", "none under the runtime roots"),
        ("cri", f"{node.cri.socket}: found"),
    ]
    assert all(step.seconds >= 0 for step in explanation.steps)


def test_explain_pid_of_a_host_process(node: Node) -> None:
    with node.resolver(cri_socket=node.socket) as resolver:
        explanation = resolver.explain_pid(1)
    assert explanation.resolution is None
    assert [(s.step, s.result) for s in explanation.steps] == [
        ("cgroup", "host (no container in its cgroup)")
    ]
    assert node.cri.total() == 0


def test_explain_pid_says_why_the_cri_did_not_resolve(node: Node) -> None:
    dead = str(node.host.path("/dead.sock"))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cri": False}, "off"),
        ({"cri": False, "cri_socket": node.socket}, "off"),
        ({}, "no CRI socket found"),
        ({"cri_socket": "/dead.sock"}, f"{dead}: no answer (ContainerStatus UNAVAILABLE;"),
    ]
    for options, result in cases:
        with node.resolver(**options) as resolver:
            explanation = resolver.explain_pid(APP_PID)
            assert explanation.resolution is None
            assert explanation.steps[-1].step == "cri"
            assert explanation.steps[-1].result.startswith(result)
            assert resolver.lookup_pid(APP_PID) is None
    assert node.cri.total() == 0
    del node.cri.containers[node.app]
    with node.resolver(cri_socket=node.socket) as resolver:
        first = resolver.explain_pid(APP_PID).steps[-1].result
        second = resolver.explain_pid(APP_PID).steps[-1].result  # from the negative cache
    assert first == second == f"{node.cri.socket}: not found (breaker closed)"
    assert node.cri.total() == 2


def test_without_any_cri_socket_a_miss_is_none(node: Node) -> None:
    with node.resolver() as resolver:
        assert resolver.lookup_pid(APP_PID) is None
        assert resolver.resolve_pid(APP_PID) is None
        assert resolver.pod_labels(new_id()) is None
        assert resolver.cri is None
    assert node.cri.total() == 0
