"""The parsers on what a real containerd + runc write, on every generation, for pods made through
CRI as kubelet makes them: every bundle normalizes to its pod, every process's cgroup names its
container."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import PAUSE_IMAGE, WORKLOAD_IMAGE, Containerd, ContainerSpec, PodFactory

import ociresolve

pytestmark = pytest.mark.e2e


def test_real_bundles_normalize_to_their_pods(
    containerd: Containerd, pod_factory: PodFactory
) -> None:
    pod = pod_factory(
        "checkout-7d4b9c",
        [ContainerSpec("app", ["sleep", "3600"]), ContainerSpec("sidecar", ["sleep", "3600"])],
        namespace="shop",
    )
    sandbox = ociresolve.read_bundle(containerd.bundle_dir(pod.sandbox_id))
    assert sandbox == ociresolve.ContainerMeta(
        runtime="containerd",
        container_type="sandbox",
        container_id=pod.sandbox_id,
        sandbox_id=pod.sandbox_id,
        pod_name="checkout-7d4b9c",
        pod_namespace="shop",
        pod_uid=pod.uid,
        image=PAUSE_IMAGE if containerd.generation.sandbox_image_annotation else None,
    )
    for name in ("app", "sidecar"):
        container_id = pod.container_id(name)
        meta = ociresolve.read_bundle(containerd.bundle_dir(container_id))
        assert meta is not None
        assert meta.container_id == container_id
        assert meta.sandbox_id == pod.sandbox_id
        assert (meta.pod_name, meta.pod_namespace, meta.pod_uid) == (
            "checkout-7d4b9c",
            "shop",
            pod.uid,
        )
        assert meta.container_name == name
        assert meta.image == WORKLOAD_IMAGE


def test_real_process_cgroups_name_their_containers(
    containerd: Containerd, pod_factory: PodFactory
) -> None:
    pod = pod_factory("cgroups", namespace="e2e")
    for container_id in (pod.container_id("main"), pod.sandbox_id):
        pid = int((containerd.bundle_dir(container_id) / "init.pid").read_text())
        text = Path(f"/proc/{pid}/cgroup").read_text()
        ref = ociresolve.parse_cgroup(text)
        assert ref is not None and ref.container_id == container_id
        # Every hierarchy line that names a container (all: v1 controllers and the unified
        # 0:: line; the 0:: line alone when runc saw cgroup v2 only) names this one.
        refs = [ociresolve.parse_cgroup(line) for line in text.splitlines()]
        named = [r.container_id for r in refs if r is not None]
        if containerd.cgroup_mode == "unified":
            assert named == [container_id], text
        else:
            assert named == [container_id] * len(refs), text
        # The pod's cgroups are kubelet-shaped (.../kubepods/besteffort/pod<uid>/<id>).
        assert (ref.pod_uid, ref.qos) == (pod.uid, "besteffort")


def test_inspect_scans_a_real_task_directory(
    containerd: Containerd, pod_factory: PodFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from ociresolve.cli import main

    pod = pod_factory("inspect-me", namespace="e2e")
    assert main(["inspect", "--json", str(containerd.task_dir)]) == 0
    out = capsys.readouterr().out
    assert pod.sandbox_id in out and pod.container_id("main") in out
