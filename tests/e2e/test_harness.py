"""The real-containerd harness does what later end-to-end tests rely on, on every generation.

These double as a record of what containerd + runc write on a node: bundle directories and
their files (by generation: ``harness.generations``), ``config.json`` annotations, cgroup
paths in each cgroup mode, the verbose CRI info.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
from harness import (
    PAUSE_IMAGE,
    UNIXCONNECT,
    Containerd,
    ContainerSpec,
    HarnessError,
    ImageSet,
    Mount,
    PodFactory,
    is_alive,
)
from harness.cgroups import cgroup_mounts, subtree_dirs
from harness.generations import Generation
from harness.runc_cgroup2 import strip_resources

pytestmark = pytest.mark.e2e

SLEEP = ["sleep", "3600"]


def _peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def test_pod_bundles_process_and_teardown(containerd: Containerd, pod_factory: PodFactory) -> None:
    pod = pod_factory("harness-web", [ContainerSpec("app", SLEEP)], namespace="e2e")
    cri = containerd.cri()
    container_id = pod.container_id("app")

    # One bundle per sandbox and per container, each with the OCI config the library reads,
    # and the files of the generation.
    generation = containerd.generation
    for bundle_id, kind in ((pod.sandbox_id, "sandbox"), (container_id, "container")):
        bundle = containerd.bundle_dir(bundle_id)
        assert bundle == containerd.task_dir / "k8s.io" / bundle_id
        spec = json.loads((bundle / "config.json").read_text())
        annotations = spec["annotations"]
        assert annotations["io.kubernetes.cri.container-type"] == kind
        assert annotations["io.kubernetes.cri.sandbox-id"] == pod.sandbox_id
        assert spec["linux"]["cgroupsPath"] == f"{pod.cgroup_parent}/{bundle_id}"
        files = (
            generation.sandbox_bundle_files
            if kind == "sandbox"
            else generation.container_bundle_files
        )
        assert {p.name for p in bundle.iterdir()} == files, bundle
    sandbox = json.loads((containerd.bundle_dir(pod.sandbox_id) / "config.json").read_text())
    image_name = sandbox["annotations"].get("io.kubernetes.cri.podsandbox.image-name")
    assert image_name == (PAUSE_IMAGE if generation.sandbox_image_annotation else None)
    spec = json.loads((containerd.bundle_dir(container_id) / "config.json").read_text())
    assert spec["annotations"]["io.kubernetes.cri.container-name"] == "app"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-name"] == "harness-web"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-namespace"] == "e2e"

    # The verbose CRI status names the process, and the process is in the container's cgroup:
    # in every hierarchy when runc saw v1 controllers, in the unified (0::) one alone when it
    # saw cgroup v2 only.
    info = cri.container_info(container_id)
    pid = info["pid"]
    assert isinstance(pid, int)
    assert info["runtimeSpec"]["annotations"] == spec["annotations"]  # type: ignore[index]
    assert is_alive(pid)
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    path = f"{pod.cgroup_parent}/{container_id}"
    assert f"0::{path}" in lines
    v1_lines = [line for line in lines if not line.startswith("0::")]
    mounts = cgroup_mounts()  # every hierarchy of the machine, as this process sees them
    found = subtree_dirs(path, mounts)
    if generation.cgroups == "unified":
        assert containerd.cgroup_mode == "unified"
    if containerd.cgroup_mode == "unified":
        # runc made the v2 cgroup alone. The process keeps v1 memberships if the kernel has v1
        # hierarchies (its shim's), never the container's.
        assert found == [m.path / path.lstrip("/") for m in mounts if m.version == 2], found
        assert not any(line.endswith(path) for line in v1_lines), lines
    else:
        assert v1_lines and all(line.endswith(f":{path}") for line in v1_lines), lines
        assert len(found) == len(mounts), found
    status = cri.container_status(container_id).status
    assert status.labels["io.kubernetes.pod.uid"] == pod.uid
    assert containerd.shim_pids()

    # Teardown through CRI leaves no bundle, no process, no shim, no container cgroup.
    pod_factory.close()
    assert not containerd.bundle_dir(container_id).exists()
    assert not containerd.bundle_dir(pod.sandbox_id).exists()
    assert not is_alive(pid)
    assert containerd.shim_pids() == []
    assert cri.list_containers() == []
    assert cri.list_pods() == []
    leaves = [d / container_id for d in containerd.cgroup_dirs()]
    assert [d for d in leaves if d.exists()] == []


def test_stop_removes_everything(
    tmp_path: Path, test_images: ImageSet, generation: Generation
) -> None:
    """A daemon stopped with a pod still running leaves no process, cgroup or mount behind."""
    daemon = Containerd(tmp_path, generation=generation)
    with daemon:
        daemon.import_images(test_images)
        pod = daemon.cri().start_pod("left-running", [ContainerSpec("app", SLEEP)])
        daemon_pid = daemon.pid
        assert daemon_pid is not None
        pids = {daemon.cri().container_pid(pod.container_id("app")), *daemon.shim_pids()}
        assert len(pids) >= 2
        assert daemon.cgroup_dirs()
        assert daemon.mounts_below_base()
    assert daemon.pid is None
    assert not is_alive(daemon_pid)
    assert [pid for pid in pids if is_alive(pid)] == []
    assert daemon.shim_pids() == []
    assert daemon.cgroup_dirs() == []
    assert daemon.mounts_below_base() == []
    daemon.stop()  # idempotent


def test_deep_tmp_dir_gets_a_short_socket_dir(tmp_path: Path, generation: Generation) -> None:
    deep = tmp_path / ("d" * 60)
    with Containerd(deep, generation=generation) as daemon:
        assert not daemon.socket.is_relative_to(deep)
        assert len(f"{daemon.socket}.ttrpc") <= 104
        assert daemon.cri().version().runtime_name == "containerd"
    assert not daemon.socket.parent.exists()


@pytest.mark.parametrize(
    ("override", "error", "logged"),
    [
        # containerd exits at once: a required plugin is missing.
        (
            (("", "required_plugins"), ["io.containerd.grpc.v1.no-such-plugin"]),
            "exited with status",
            "io.containerd.grpc.v1.no-such-plugin",
        ),
        # containerd runs, but without CRI.
        (
            (("", "disabled_plugins"), ["io.containerd.grpc.v1.cri"]),
            "serves no CRI runtime.v1 API",
            "serving...",
        ),
    ],
)
def test_start_failure_shows_the_log(
    tmp_path: Path,
    generation: Generation,
    override: tuple[tuple[str, str], list[str]],
    error: str,
    logged: str,
) -> None:
    daemon = Containerd(
        tmp_path, generation=generation, start_timeout=3, config_overrides=dict([override])
    )
    with pytest.raises(HarnessError, match=error) as raised:
        daemon.start()
    message = str(raised.value)
    assert "containerd.log (tail) ---\n" in message
    assert logged in message.split("(tail) ---\n", 1)[1]  # a line of the log itself
    assert daemon.pid is None


def test_unixconnect_reaches_a_host_socket(
    containerd: Containerd, pod_factory: PodFactory, tmp_path: Path
) -> None:
    """The static helper makes a real connect() from inside a container to a host socket."""
    shared = tmp_path / "shared"
    shared.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(shared / "host.sock"))
        server.listen(1)
        server.settimeout(20)
        pod = pod_factory(
            "connector",
            [
                ContainerSpec(
                    "client",
                    [UNIXCONNECT, "/shared/host.sock", "hello", "60"],
                    mounts=[Mount(str(shared), "/shared")],
                )
            ],
        )
        conn, _ = server.accept()
        with conn:
            conn.settimeout(20)
            assert conn.recv(5) == b"hello"
            peer = _peer_pid(conn)
    # The peer is the container's process, as the host sees it.
    container_id = pod.container_id("client")
    assert peer == containerd.cri().container_pid(container_id)
    assert f"/{container_id}\n" in Path(f"/proc/{peer}/cgroup").read_text()


def test_unixconnect_reaches_containerd(containerd: Containerd, pod_factory: PodFactory) -> None:
    """A container can connect() to the daemon's own socket through ``socket_mount()``."""
    pod = pod_factory(
        "to-containerd",
        [
            ContainerSpec(
                "client",
                [UNIXCONNECT, "/run/containerd/containerd.sock"],
                mounts=[containerd.socket_mount("/run/containerd")],
            )
        ],
    )
    status = containerd.cri().wait_container_exit(pod.container_id("client"))
    log = pod.log_path("client").read_text()
    assert status.exit_code == 0, log
    assert " stdout F connected pid=" in log


def test_the_unified_views_runc_leaves_out_only_what_cgroup_v2_lacks() -> None:
    """On a hybrid kernel cgroup v2 has the controllers no v1 hierarchy took (hugetlb here):
    runc gets the resources it can apply there, and every other field as containerd wrote it."""
    spec = {
        "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
        "linux": {
            "cgroupsPath": "/kubepods/besteffort/pod1/abc",
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "cpu": {"shares": 2, "cpus": "0-1"},
                "memory": {"limit": 1 << 30},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                "unified": {"memory.high": "max", "hugetlb.2MB.max": "0"},
            },
        },
    }
    assert strip_resources(spec, {"hugetlb"})
    assert spec["linux"] == {
        "cgroupsPath": "/kubepods/besteffort/pod1/abc",
        "resources": {
            "devices": [{"allow": False, "access": "rwm"}],
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "unified": {"hugetlb.2MB.max": "0"},
        },
    }
    assert spec["annotations"] == {"io.kubernetes.cri.container-type": "sandbox"}
    everything = {"cpu", "cpuset", "memory", "pids", "io", "hugetlb", "rdma"}
    assert not strip_resources(spec, everything)  # a pure cgroup v2 node: nothing to do
