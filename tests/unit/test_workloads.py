"""A pod's workload from its name and labels (``deprecations.workloads``), and where the labels
come from, once per pod (``deprecations.labels.Workloads``): cri-o's sandbox bundle, or CRI
``PodSandboxStatus`` (a fake CRI server on a real socket), cached, bounded, forgotten with the
sandbox. Labels are the tenant's: a label never names a workload the pod's name does not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fakecri import FakeCri, sandbox_response, socket_path
from fakehost import CONTAINERD_ROOT, CRIO_ROOT, FIXTURES, FakeHost, Pod, containerd_spec, new_id
from hypothesis import given, settings
from hypothesis import strategies as st

from ociresolve import Resolver
from ociresolve.cri.client import GrpcCriClient
from ociresolve.deprecations.labels import Workloads
from ociresolve.deprecations.workloads import CLOCK_SKEW, CRONJOB_PAST, workload
from ociresolve.model import ContainerMeta, IndexedContainer

NOW = 1_750_000_000.0  # seconds since the epoch
MINUTE = int(NOW // 60)
UID = "0d3c2f4e-8a6b-4c1d-9e2f-3a4b5c6d7e8f"
JOB = {"controller-uid": UID, "batch.kubernetes.io/controller-uid": UID}


def job_labels(name: str, *, legacy_only: bool = False) -> dict[str, str]:
    labels = {"job-name": name, "controller-uid": UID}
    if not legacy_only:
        labels |= {"batch.kubernetes.io/job-name": name, "batch.kubernetes.io/controller-uid": UID}
    return labels


DEPLOYMENT = {"app": "checkout", "pod-template-hash": "7d4b9c6f5"}
DAEMONSET = {"controller-revision-hash": "6d5f7b8c9", "pod-template-generation": "3"}
STATEFULSET = {
    "controller-revision-hash": "db-6c8f9d7b5b",
    "statefulset.kubernetes.io/pod-name": "db-0",
    "apps.kubernetes.io/pod-index": "0",
}


@pytest.mark.parametrize(
    ("pod", "labels", "expected"),
    [
        # Deployment: <deployment>-<pod-template-hash>-<5 random>.
        ("checkout-7d4b9c6f5-x2x4q", DEPLOYMENT, "Deployment/checkout"),
        ("shop-api-v2-7d4b9c6f5-x2x4q", DEPLOYMENT, "Deployment/shop-api-v2"),
        ("web.v1-7d4b9c6f5-x2x4q", DEPLOYMENT, "Deployment/web.v1"),
        ("checkout-3669180487-x2x4q", {"pod-template-hash": "3669180487"}, "Deployment/checkout"),
        ("checkout-7d4b9c6f5-x2x4q", {"pod-template-hash": "5f6d7c8b9"}, None),  # another hash
        ("checkout-7d4b9c6f5-aeiou", DEPLOYMENT, None),  # no generated suffix has vowels
        ("checkout-7d4b9c6f5", DEPLOYMENT, None),
        ("7d4b9c6f5-x2x4q", DEPLOYMENT, None),  # nothing before the hash
        ("checkout-7d4b9c6f5-x2x4q", {"app": "checkout"}, None),  # a bare ReplicaSet's pod
        ("checkout-7d4b9c6f5-x2x4q", {"pod-template-hash": "7D4B"}, None),
        # A prefix of 58 characters may have been cut from a longer Deployment name.
        ("a" * 47 + "-7d4b9c6f5-x2x4q", DEPLOYMENT, None),
        ("a" * 46 + "-7d4b9c6f5-x2x4q", DEPLOYMENT, "Deployment/" + "a" * 46),
        # DaemonSet: <daemonset>-<5 random>.
        ("node-agent-x2x4q", DAEMONSET, "DaemonSet/node-agent"),
        ("node-agent-x2x4q", {"controller-revision-hash": "6d5f7b8c9"}, None),
        ("node-agent-x2x4q", {**DAEMONSET, "pod-template-generation": "three"}, None),
        ("node-agent-x2x4q", {"pod-template-generation": "3"}, None),  # no revision hash
        ("node-agent", DAEMONSET, None),
        # StatefulSet: <statefulset>-<ordinal>, its revision named after it.
        ("db-0", STATEFULSET, "StatefulSet/db"),
        (
            "kafka-broker-12",
            {
                "controller-revision-hash": "kafka-broker-7f9c6d8b5",
                "statefulset.kubernetes.io/pod-name": "kafka-broker-12",
            },
            "StatefulSet/kafka-broker",
        ),
        ("db-0", {**STATEFULSET, "statefulset.kubernetes.io/pod-name": "db-1"}, None),
        ("db-0", {**STATEFULSET, "apps.kubernetes.io/pod-index": "1"}, None),
        ("db-0", {**STATEFULSET, "controller-revision-hash": "web-6c8f9d7b5b"}, None),
        ("db-0", {**STATEFULSET, "controller-revision-hash": "6c8f9d7b5b"}, None),
        ("db-01", {**STATEFULSET, "statefulset.kubernetes.io/pod-name": "db-01"}, None),
        ("db", {**STATEFULSET, "statefulset.kubernetes.io/pod-name": "db"}, None),
        # Job: <job>-<5 random>, or <job>-<index>-<5 random> (Indexed).
        ("migrate-x2x4q", job_labels("migrate"), "Job/migrate"),
        ("migrate-x2x4q", job_labels("migrate", legacy_only=True), "Job/migrate"),
        ("migrate-3-x2x4q", job_labels("migrate"), "Job/migrate"),
        ("migrate-x2x4q", {"job-name": "migrate"}, None),  # no controller uid
        ("migrate-x2x4q", job_labels("other"), None),  # names another Job than its name
        ("migrate-x2x4q", {**job_labels("migrate"), "job-name": "other"}, None),
        ("migrate-x2x4q", job_labels("migr"), None),
        ("migrate-extra-x2x4q", job_labels("migrate"), None),
        ("migrate-03-x2x4q", job_labels("migrate"), None),
        # CronJob: <cronjob>-<scheduled time in minutes>, plausible now.
        (f"backup-{MINUTE - 5}-x2x4q", job_labels(f"backup-{MINUTE - 5}"), "CronJob/backup"),
        (f"db-backup-{MINUTE}-1-x2x4q", job_labels(f"db-backup-{MINUTE}"), "CronJob/db-backup"),
        (
            f"backup-{MINUTE + 60}-x2x4q",  # an hour ahead: not scheduled yet
            job_labels(f"backup-{MINUTE + 60}"),
            f"Job/backup-{MINUTE + 60}",
        ),
        (
            f"backup-{MINUTE - 60 * 24 * 40}-x2x4q",  # 40 days ago
            job_labels(f"backup-{MINUTE - 60 * 24 * 40}"),
            f"Job/backup-{MINUTE - 60 * 24 * 40}",
        ),
        ("backup-20240101-x2x4q", job_labels("backup-20240101"), "Job/backup-20240101"),
        ("run-1-x2x4q", job_labels("run-1"), "Job/run-1"),
        (f"backup-{int(NOW)}-x2x4q", job_labels(f"backup-{int(NOW)}"), f"Job/backup-{int(NOW)}"),
        (
            f"{'c' * 53}-{MINUTE}-x2x4q"[:63],  # too long to be a CronJob's Job: cut anyway
            job_labels(f"{'c' * 53}-{MINUTE}"),
            None,
        ),
        # Conflicting or no controller labels.
        ("checkout-7d4b9c6f5-x2x4q", {**DEPLOYMENT, "job-name": "checkout"}, None),
        ("db-0", {**STATEFULSET, **DAEMONSET}, None),
        ("web", {}, None),
        # Names no API server accepts.
        ("Checkout-7d4b9c6f5-x2x4q", DEPLOYMENT, None),
        ("checkout-7d4b9c6f5-x2x4q\n", DEPLOYMENT, None),
        ("", DEPLOYMENT, None),
        (None, DEPLOYMENT, None),
    ],
)
def test_rules(pod: str | None, labels: dict[str, str], expected: str | None) -> None:
    assert workload(pod, labels, now=NOW) == expected


def test_the_cronjob_window() -> None:
    def job_at(seconds: float) -> str | None:
        name = f"report-{int(seconds // 60)}"
        return workload(f"{name}-x2x4q", job_labels(name), now=NOW)

    assert job_at(NOW) == "CronJob/report"
    assert job_at(NOW + CLOCK_SKEW - 60) == "CronJob/report"
    assert job_at(NOW + CLOCK_SKEW + 120) != "CronJob/report"
    assert job_at(NOW - CRONJOB_PAST + 120) == "CronJob/report"
    assert job_at(NOW - CRONJOB_PAST - 120) != "CronJob/report"


_KEYS = st.sampled_from(
    [
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "job-name",
        "batch.kubernetes.io/job-name",
        "controller-uid",
        "app",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(["7d4b9c6f5", "web", "web-0", "db", "0", "3", "web-7d4b9c6f5", UID]),
    st.text(alphabet="abcdw-0123456789.", max_size=20),
)
_PODS = st.sampled_from(
    ["web-7d4b9c6f5-x2x4q", "web-0", "db-web-0", "web-x2x4q", "web-3-x2x4q", f"web-{MINUTE}-x2x4q"]
)


@settings(max_examples=500, deadline=None)
@given(_PODS, st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_a_label_never_names_another_workload_than_the_pods_name(
    pod: str, labels: dict[str, str]
) -> None:
    """Whatever a tenant writes into the labels, the name given is the start of the pod's."""
    found = workload(pod, labels, now=NOW)
    if found is not None:
        kind, _, name = found.partition("/")
        assert kind in {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}
        assert pod.startswith(f"{name}-"), (pod, labels, found)


# -- where the labels come from ----------------------------------------------------------------


class FakePods:
    """The three resolver calls ``Workloads`` makes, over a dict of records."""

    def __init__(self) -> None:
        self.records: dict[str, IndexedContainer] = {}
        self.labels: dict[str, dict[str, str] | None] = {}
        self.asked: list[str] = []
        self.looked_up: list[str] = []
        self.fail = False

    def add(self, meta: ContainerMeta, bundle: str = "/nowhere") -> None:
        assert meta.container_id is not None
        self.records[meta.container_id] = IndexedContainer(meta=meta, bundle=bundle)

    def container(self, container_id: str) -> IndexedContainer | None:
        if self.fail:
            raise RuntimeError("broken")
        return self.records.get(container_id)

    def lookup_container(self, container_id: str) -> ContainerMeta | None:
        self.looked_up.append(container_id)
        return None

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None:
        self.asked.append(sandbox_id)
        return self.labels.get(sandbox_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pod_of(
    pods: FakePods, name: str, labels: Mapping[str, str] | None, *, runtime: str = "containerd"
) -> tuple[str, str, str]:
    """A sandbox and two containers of a pod; returns their ids."""
    sandbox, one, two = new_id(), new_id(), new_id()
    common: dict[str, Any] = {"runtime": runtime, "pod_name": name, "pod_namespace": "shop"}
    pods.add(
        ContainerMeta(container_type="sandbox", container_id=sandbox, sandbox_id=sandbox, **common)
    )
    for container, cname in ((one, "app"), (two, "sidecar")):
        pods.add(
            ContainerMeta(
                container_type="container",
                container_id=container,
                sandbox_id=sandbox,
                container_name=cname,
                **common,
            )
        )
    pods.labels[sandbox] = None if labels is None else dict(labels)
    return sandbox, one, two


@pytest.fixture
def pods() -> FakePods:
    return FakePods()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_once_per_pod(pods: FakePods, clock: Clock) -> None:
    sandbox, one, two = pod_of(pods, "checkout-7d4b9c6f5-x2x4q", DEPLOYMENT)
    workloads = Workloads(pods, clock=clock, wall=lambda: NOW)
    for _ in range(3):
        assert workloads(one) == workloads(two) == workloads(sandbox) == "Deployment/checkout"
    assert pods.asked == [sandbox]
    assert workloads(None) is None and workloads("") is None


def test_a_pod_without_a_workload_is_asked_once_too(pods: FakePods, clock: Clock) -> None:
    sandbox, one, _ = pod_of(pods, "debug", {"run": "debug"})
    workloads = Workloads(pods, clock=clock, wall=lambda: NOW)
    assert workloads(one) is None and workloads(one) is None
    assert pods.asked == [sandbox]


def test_a_runtime_that_does_not_answer_is_asked_again_later(pods: FakePods, clock: Clock) -> None:
    sandbox, one, _ = pod_of(pods, "checkout-7d4b9c6f5-x2x4q", None)
    workloads = Workloads(pods, clock=clock, wall=lambda: NOW, retry=30.0)
    assert workloads(one) is None
    clock.now += 10
    assert workloads(one) is None
    assert pods.asked == [sandbox]
    pods.labels[sandbox] = DEPLOYMENT
    clock.now += 25
    assert workloads(one) == "Deployment/checkout"
    assert pods.asked == [sandbox, sandbox]


def test_an_unknown_container_is_looked_up_and_named_nothing(pods: FakePods) -> None:
    workloads = Workloads(pods)
    unknown = new_id()
    assert workloads(unknown) is None
    assert pods.looked_up == [unknown] and pods.asked == []


def test_a_broken_resolver_is_no_error(pods: FakePods) -> None:
    _, one, _ = pod_of(pods, "checkout-7d4b9c6f5-x2x4q", DEPLOYMENT)
    pods.fail = True
    assert Workloads(pods)(one) is None


def test_sandboxes_that_left_the_index_are_forgotten(pods: FakePods, clock: Clock) -> None:
    gone, gone_app, _ = pod_of(pods, "old-7d4b9c6f5-x2x4q", {"pod-template-hash": "7d4b9c6f5"})
    kept, kept_app, _ = pod_of(pods, "checkout-7d4b9c6f5-x2x4q", DEPLOYMENT)
    workloads = Workloads(pods, clock=clock, wall=lambda: NOW, sweep_interval=60.0)
    assert workloads(gone_app) == "Deployment/old" and workloads(kept_app) == "Deployment/checkout"
    assert len(workloads) == 2
    for container in [c for c, r in pods.records.items() if r.meta.sandbox_id == gone]:
        del pods.records[container]
    clock.now += 30
    workloads(kept_app)
    assert len(workloads) == 2  # not swept yet
    clock.now += 31
    workloads(kept_app)
    assert len(workloads) == 1
    assert pods.asked == [gone, kept]


def test_the_cache_is_bounded(pods: FakePods, clock: Clock) -> None:
    workloads = Workloads(pods, clock=clock, wall=lambda: NOW, max_sandboxes=3)
    apps = [pod_of(pods, f"web{k}-7d4b9c6f5-x2x4q", DEPLOYMENT)[1] for k in range(5)]
    assert [workloads(app) for app in apps] == [f"Deployment/web{k}" for k in range(5)]
    assert len(workloads) == 3
    workloads(apps[0])  # forgotten: asked again
    assert len(pods.asked) == 6


def test_threads_share_the_answers(pods: FakePods) -> None:
    _, one, _ = pod_of(pods, "checkout-7d4b9c6f5-x2x4q", DEPLOYMENT)
    workloads = Workloads(pods, wall=lambda: NOW)
    found: list[str | None] = []

    def ask() -> None:
        found.extend(workloads(one) for _ in range(50))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == ["Deployment/checkout"] * 200
    assert 1 <= len(pods.asked) <= 4


# -- cri-o: the labels in the sandbox's bundle --------------------------------------------------

CRIO_SANDBOX = FIXTURES / "bundles" / "cri-o" / "1.33-sandbox-dropped-infra-kubelet-like-capture"


def crio_sandbox(tmp_path: Path, labels: Any) -> str:
    """The live cri-o 1.33 sandbox capture with its pod's labels replaced."""
    spec = json.loads((CRIO_SANDBOX / "config.json").read_bytes())
    spec["annotations"]["io.kubernetes.cri-o.Labels"] = (
        labels if isinstance(labels, str) else json.dumps(labels)
    )
    bundle = tmp_path / "userdata"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    return str(bundle)


def test_crio_labels_come_from_the_sandbox_bundle(pods: FakePods, tmp_path: Path) -> None:
    captured = json.loads((CRIO_SANDBOX / "config.json").read_bytes())["annotations"]
    assert json.loads(captured["io.kubernetes.cri-o.Labels"])["app"] == "web-1"  # as cri-o wrote it
    sandbox, one, _ = pod_of(pods, "node-agent-x2x4q", None, runtime="cri-o")
    record = pods.records[sandbox]
    pods.add(record.meta, bundle=crio_sandbox(tmp_path, {**DAEMONSET, "app": "node-agent"}))
    assert Workloads(pods, wall=lambda: NOW)(one) == "DaemonSet/node-agent"
    assert pods.asked == []  # no CRI call


@pytest.mark.parametrize("labels", ["not json", "[1, 2]", '{"a": 1}', "{" + "x" * 70_000 + "}"])
def test_crio_labels_of_a_strange_shape_fall_back_to_the_cri(
    pods: FakePods, tmp_path: Path, labels: str
) -> None:
    sandbox, one, _ = pod_of(pods, "node-agent-x2x4q", DAEMONSET, runtime="cri-o")
    pods.add(pods.records[sandbox].meta, bundle=crio_sandbox(tmp_path, labels))
    assert Workloads(pods, wall=lambda: NOW)(one) == "DaemonSet/node-agent"
    assert pods.asked == [sandbox]


# -- through a real resolver and CRI ------------------------------------------------------------


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[FakeCri]:
    server = FakeCri(socket_path(tmp_path)).start()
    yield server
    server.stop()


def test_containerd_labels_over_cri_once(host: FakeHost, cri: FakeCri) -> None:
    host.make_roots()
    pod, app, sidecar = Pod.new("checkout-7d4b9c6f5-x2x4q"), new_id(), new_id()
    host.write(
        host.containerd_bundle(pod.sandbox_id), containerd_spec(pod.sandbox_id, pod, name=None)
    )
    host.write(host.containerd_bundle(app), containerd_spec(app, pod))
    host.write(host.containerd_bundle(sidecar), containerd_spec(sidecar, pod, name="sidecar"))
    cri.sandboxes[pod.sandbox_id] = sandbox_response(
        pod.sandbox_id, name=pod.name, labels=DEPLOYMENT
    )
    with Resolver(
        host_root=str(host.root),
        runtime_roots=[CONTAINERD_ROOT, CRIO_ROOT],
        cri_client=GrpcCriClient(cri.socket),
    ) as resolver:
        workloads = Workloads(resolver)
        assert [workloads(app), workloads(sidecar), workloads(app)] == ["Deployment/checkout"] * 3
    assert cri.count("PodSandboxStatus") == 1
    assert cri.count("ContainerStatus") == 0  # the index knew the containers


def test_a_dead_cri_leaves_the_workload_out(host: FakeHost, tmp_path: Path) -> None:
    host.make_roots()
    pod, app = Pod.new("checkout-7d4b9c6f5-x2x4q"), new_id()
    host.write(
        host.containerd_bundle(pod.sandbox_id), containerd_spec(pod.sandbox_id, pod, name=None)
    )
    host.write(host.containerd_bundle(app), containerd_spec(app, pod))
    with Resolver(
        host_root=str(host.root),
        runtime_roots=[CONTAINERD_ROOT],
        cri_socket=socket_path(tmp_path, "dead.sock"),
        cri_timeout=0.2,
    ) as resolver:
        workloads = Workloads(resolver)
        assert workloads(app) is None
        assert workloads(app) is None  # not asked again so soon
        assert workloads.asked == 1
