"""normalize(): runtime detection, version differences, precedence of sources."""

from __future__ import annotations

import json

import pytest

from ociresolve import ContainerMeta, detect_runtime, normalize
from ociresolve.runtimes import detect, normalize_at

SANDBOX = "a" * 64
CONTAINER = "b" * 64
UID = "d484032b-b35c-4511-8db9-42050023ac61"
LOG_DIR = f"/var/log/pods/default_nginx_{UID}"


def containerd_keys(version: str, kind: str) -> dict[str, str]:
    """The annotations containerd's CRI plugin writes, release by release."""
    keys = {
        "io.kubernetes.cri.container-type": kind,
        "io.kubernetes.cri.sandbox-id": SANDBOX,
    }
    if kind == "sandbox":
        keys["io.kubernetes.cri.sandbox-log-directory"] = LOG_DIR
    if version >= "1.4" and kind == "container":
        keys["io.kubernetes.cri.container-name"] = "web"
    if version >= "1.5":
        keys["io.kubernetes.cri.sandbox-name"] = "nginx"
        keys["io.kubernetes.cri.sandbox-namespace"] = "default"
        if kind == "container":
            keys["io.kubernetes.cri.image-name"] = "docker.io/library/nginx:latest"
    if version >= "1.7":
        keys["io.kubernetes.cri.sandbox-uid"] = UID
    if version >= "2.0" and kind == "sandbox":
        keys["io.kubernetes.cri.podsandbox.image-name"] = "registry.k8s.io/pause:3.10"
    return keys


@pytest.mark.parametrize("version", ["1.3", "1.4", "1.5", "1.7", "2.0"])
def test_containerd_sandbox_across_versions(version: str) -> None:
    meta = normalize(containerd_keys(version, "sandbox"))
    assert meta == ContainerMeta(
        runtime="containerd",
        container_type="sandbox",
        container_id=SANDBOX,
        sandbox_id=SANDBOX,
        pod_name="nginx",
        pod_namespace="default",
        pod_uid=UID,
        image="registry.k8s.io/pause:3.10" if version >= "2.0" else None,
    )


@pytest.mark.parametrize("version", ["1.3", "1.4", "1.5", "1.7", "2.0"])
def test_containerd_container_across_versions(version: str) -> None:
    meta = normalize(containerd_keys(version, "container"), container_id=CONTAINER)
    assert meta is not None
    assert meta.container_type == "container"
    assert (meta.container_id, meta.sandbox_id) == (CONTAINER, SANDBOX)
    assert meta.container_name == ("web" if version >= "1.4" else None)
    assert meta.pod_name == ("nginx" if version >= "1.5" else None)
    # A container carries no log directory: before 1.7 its pod UID is only in the cgroup path.
    assert meta.pod_uid == (UID if version >= "1.7" else None)


def test_pod_uid_from_cgroups_path_when_no_annotation_has_it() -> None:
    keys = containerd_keys("1.5", "container")
    systemd = f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice:cri-containerd:{CONTAINER}"
    cgroupfs = f"/kubepods/burstable/pod{UID}/{CONTAINER}"
    for path in (systemd, cgroupfs):
        meta = normalize(keys, container_id=CONTAINER, cgroups_path=path)
        assert meta is not None and meta.pod_uid == UID


def test_annotation_uid_wins_over_cgroups_path() -> None:
    keys = containerd_keys("1.7", "container")
    other = "0e886e9a-3879-45f9-b44d-86ef9df03224"
    meta = normalize(keys, cgroups_path=f"/kubepods/pod{other}/{CONTAINER}")
    assert meta is not None and meta.pod_uid == UID


def test_static_pod_uid_is_kept_as_is() -> None:
    static = "487a0dc6dccaeefbcfedba7a7ce1ca18"
    keys = containerd_keys("1.5", "container")
    meta = normalize(keys, cgroups_path=f"/kubepods/burstable/pod{static}/{CONTAINER}")
    assert meta is not None and meta.pod_uid == static


def test_log_directory_that_is_not_kubelets_gives_nothing() -> None:
    keys = containerd_keys("1.3", "sandbox") | {"io.kubernetes.cri.sandbox-log-directory": "/tmp"}
    meta = normalize(keys)
    assert meta is not None
    assert (meta.pod_name, meta.pod_namespace, meta.pod_uid) == (None, None, None)


def crio_container(**extra: str) -> dict[str, str]:
    return {
        "io.container.manager": "cri-o",
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ContainerID": CONTAINER,
        "io.kubernetes.cri-o.SandboxID": SANDBOX,
        **extra,
    }


def test_crio_plain_kubelet_labels_win_over_blobs_and_names() -> None:
    meta = normalize(
        crio_container(
            **{
                "io.kubernetes.pod.name": "real",
                "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.name": "label"}),
                "io.kubernetes.cri-o.SandboxName": f"k8s_name_ns_{UID}_0",
            }
        )
    )
    assert meta is not None
    assert (meta.pod_name, meta.pod_namespace, meta.pod_uid) == ("real", "ns", UID)


def test_crio_labels_blob() -> None:
    labels = {
        "io.kubernetes.pod.name": "p",
        "io.kubernetes.pod.namespace": "n",
        "io.kubernetes.pod.uid": UID,
        "io.kubernetes.container.name": "c",
    }
    meta = normalize(crio_container(**{"io.kubernetes.cri-o.Labels": json.dumps(labels)}))
    assert meta is not None
    assert (meta.pod_name, meta.pod_namespace, meta.pod_uid, meta.container_name) == (
        "p",
        "n",
        UID,
        "c",
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {"Name": "p", "UID": UID, "Namespace": "n", "Attempt": 0},  # older cri-o
        {"name": "p", "uid": UID, "namespace": "n", "attempt": 1},  # newer cri-o
    ],
)
def test_crio_sandbox_metadata_blob_in_either_key_case(metadata: dict[str, object]) -> None:
    meta = normalize(
        {
            "io.kubernetes.cri-o.ContainerType": "sandbox",
            "io.kubernetes.cri-o.ContainerID": SANDBOX,
            "io.kubernetes.cri-o.Metadata": json.dumps(metadata),
            "io.kubernetes.container.name": "POD",
        }
    )
    assert meta == ContainerMeta(
        runtime="cri-o",
        container_type="sandbox",
        container_id=SANDBOX,
        sandbox_id=SANDBOX,
        pod_name="p",
        pod_namespace="n",
        pod_uid=UID,
    )


def test_crio_container_names_from_its_k8s_name() -> None:
    meta = normalize(crio_container(**{"io.kubernetes.cri-o.Name": f"k8s_web_p_n.dots_{UID}_3"}))
    assert meta is not None
    assert (meta.container_name, meta.pod_name, meta.pod_namespace, meta.pod_uid) == (
        "web",
        "p",
        "n.dots",
        UID,
    )


def test_crio_spoofed_infra_is_a_sandbox() -> None:
    meta = normalize(
        {"io.kubernetes.cri-o.SandboxID": SANDBOX, "io.kubernetes.cri-o.Spoofed": "true"}
    )
    assert meta is not None
    assert (meta.container_type, meta.container_id) == ("sandbox", SANDBOX)


@pytest.mark.parametrize("blob", ["", "not json", "[1, 2]", '"text"', '{"name": 5}', "{"])
def test_crio_broken_blobs_are_ignored(blob: str) -> None:
    keys = crio_container(
        **{"io.kubernetes.cri-o.Labels": blob, "io.kubernetes.cri-o.Metadata": blob}
    )
    meta = normalize(keys)
    assert meta is not None and meta.container_name is None


def test_podman_is_not_kubernetes_even_with_crio_keys() -> None:
    keys = {
        "io.container.manager": "libpod",
        "io.kubernetes.cri-o.Created": "2021-09-16T06:09:08.936623325-04:00",
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.SandboxID": SANDBOX,
    }
    assert normalize(keys) is None
    assert detect_runtime(keys) == "podman"


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {"org.opencontainers.image.stopSignal": "15"},
        {"io.container.manager": "something-new"},
        {"io.kubernetes.cri.container-type": "mystery", "io.kubernetes.cri.sandbox-id": SANDBOX},
    ],
)
def test_not_a_kubernetes_container(annotations: dict[str, str]) -> None:
    assert normalize(annotations) is None


def test_unknown_manager_is_reported_unrecognised() -> None:
    assert detect_runtime({"io.container.manager": "something-new"}) is None


def test_unknown_type_value_is_inferred_from_the_ids() -> None:
    keys = {
        "io.kubernetes.cri.container-type": "pod_sandbox",
        "io.kubernetes.cri.sandbox-id": SANDBOX,
    }
    meta = normalize(keys, container_id=SANDBOX)
    assert meta is not None and meta.container_type == "sandbox"
    meta = normalize(keys, container_id=CONTAINER)
    assert meta is not None and meta.container_type == "container"


def test_empty_values_are_unknown() -> None:
    keys = containerd_keys("1.7", "container") | {"io.kubernetes.cri.image-name": ""}
    meta = normalize(keys, container_id=CONTAINER)
    assert meta is not None and meta.image is None


# -- who wrote it: evidence a tenant cannot forge before keys it can set -------------------------

POD_KEYS = {
    "io.kubernetes.pod.name": "web-1",
    "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.uid": UID,
}


@pytest.mark.parametrize("claim", ["libpod", "something-new"])
def test_a_manager_claim_does_not_hide_a_crio_sandbox(claim: str) -> None:
    """cri-o copies every pod annotation into the sandbox's config.json, io.container.manager
    included, but overwrites the kubelet pod keys: those and cri-o's marker decide."""
    keys = {
        "io.container.manager": claim,
        "io.kubernetes.cri-o.ContainerType": "sandbox",
        "io.kubernetes.cri-o.SandboxID": SANDBOX,
        **POD_KEYS,
    }
    assert detect_runtime(keys) == "cri-o"
    meta = normalize(keys)
    assert meta is not None and (meta.runtime, meta.pod_uid) == ("cri-o", UID)


def test_a_manager_claim_does_not_hide_crictls_crio_container() -> None:
    """No kubelet keys (crictl), but cri-o keys podman never wrote."""
    keys = crio_container(
        **{"io.container.manager": "libpod", "io.kubernetes.cri-o.SandboxName": "k8s_p_n_u_0"}
    )
    assert detect_runtime(keys) == "cri-o"


def test_podman_1x_annotations_are_podman() -> None:
    """podman 1.x: no io.container.manager, io.kubernetes.cri-o.ContainerType=sandbox on every
    container; its only cri-o keys are the ones podman writes."""
    keys = {"io.kubernetes.cri-o.ContainerType": "sandbox", "io.kubernetes.cri-o.TTY": "false"}
    assert detect_runtime(keys) == "podman"
    assert normalize(keys, container_id=CONTAINER) is None


def test_a_pod_member_of_podman_4_is_podman() -> None:
    keys = {
        "io.container.manager": "libpod",
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.SandboxID": SANDBOX,
        "io.kubernetes.cri-o.Created": "2026-12-04T15:23:07.578912277Z",
        "io.kubernetes.cri-o.TTY": "false",
        "io.podman.annotations.autoremove": "FALSE",
    }
    assert detect_runtime(keys) == "podman"
    assert normalize(keys, container_id=CONTAINER) is None


def test_the_place_limits_the_runtimes() -> None:
    """A containerd task directory holds containerd's bundles only; containers-storage holds
    cri-o's and podman's. Keys of another runtime change nothing there."""
    crio_keys = crio_container(**POD_KEYS)
    assert detect(crio_keys, "containerd") is None
    found = normalize_at("containerd", crio_keys, container_id=CONTAINER)
    assert found.meta is None and found.runtime == "containerd"
    containerd = containerd_keys("1.7", "container")
    assert detect(containerd, "cri-o") is None
    assert normalize_at("cri-o", containerd, container_id=CONTAINER).meta is None
    podman_keys = {"io.container.manager": "libpod"}
    assert normalize_at("cri-o", podman_keys, container_id=CONTAINER).runtime == "podman"


def test_at_a_place_the_directory_names_the_container() -> None:
    """A bundle's id is its directory's: a sandbox claiming another's ContainerID/SandboxID (pod
    annotations) is indexed under its own, and is its own sandbox."""
    victim = "c" * 64
    keys = {
        "io.kubernetes.cri-o.ContainerType": "sandbox",
        "io.kubernetes.cri-o.ContainerID": victim,
        "io.kubernetes.cri-o.SandboxID": victim,
        **POD_KEYS,
    }
    meta = normalize_at("cri-o", keys, container_id=SANDBOX).meta
    assert meta is not None and (meta.container_id, meta.sandbox_id) == (SANDBOX, SANDBOX)
    container = crio_container(**{"io.kubernetes.cri-o.ContainerID": victim, **POD_KEYS})
    meta = normalize_at("cri-o", container, container_id=CONTAINER).meta
    assert meta is not None and (meta.container_id, meta.sandbox_id) == (CONTAINER, SANDBOX)


@pytest.mark.parametrize(("spoofed", "runs"), [("true", False), ("false", True), (None, True)])
def test_a_dropped_infra_container_runs_no_process(spoofed: str | None, runs: bool) -> None:
    keys = {"io.kubernetes.cri-o.ContainerType": "sandbox", **POD_KEYS}
    if spoofed is not None:
        keys["io.kubernetes.cri-o.Spoofed"] = spoofed
    assert normalize_at("cri-o", keys, container_id=SANDBOX).runs is runs
