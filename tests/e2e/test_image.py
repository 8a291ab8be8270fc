"""ociresolve from its own container image (deploy/image/, built by scripts/build-image), run
in the real containerd (every generation) through CRI with the DaemonSet's settings (deploy/:
mounts, user, capabilities, seccomp, read-only root, hostPID, env), resolving another pod from
inside.

The DaemonSet is translated as kubelet would (tests/harness/daemonset.py), with the host paths
of the runtime state directories remapped to this test's private containerd (its state
directory stands for /run/containerd) and to empty private directories for the runtimes that
are not here. Only the command line is the test's own: a one-shot ``lookup``/``list``, the
tracer, or the daemon.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import UNIXCONNECT, Containerd, ContainerSpec, Pod, PodFactory
from harness.daemonset import DaemonSetPod, daemonset_pod, kubectl_requirements, render
from harness.ociresolve_image import (
    OCIRESOLVE_IMAGE,
    REPO,
    build_ociresolve_image,
    image_build_requirements,
)

pytestmark = [pytest.mark.e2e]

NODE = "node-e2e-1"
CONTAINER = "ociresolve"  # the DaemonSet's container
IN_CONTAINER_SOCKET = "/run/containerd/containerd.sock"  # the workloads' view (socket_mount)
OPENED = "containerd socket connection opened"
STARTED = "containerd socket tracer started"

# Host paths of the manifests that must not be this machine's own: the runtimes that are not
# running here, and the API socket's directory.
PRIVATE_HOST_PATHS = (
    "/run/k3s/containerd",
    "/run/containers/storage",
    "/run/crio",
    "/var/lib/containers/storage",
    "/run/ociresolve",
)


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1":
        pytest.fail(f"e2e: {reason} (OCIRESOLVE_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(f"e2e: {reason}")


@pytest.fixture(scope="module")
def ociresolve_image(containerd: Containerd) -> str:
    """The image, built (or cached) and imported into the session's containerd."""
    _require(image_build_requirements() or kubectl_requirements())
    tarball = build_ociresolve_image()
    containerd.import_tarball(tarball, timeout=300)
    return OCIRESOLVE_IMAGE


def plan(variant: str, containerd: Containerd, tmp_path: Path) -> DaemonSetPod:
    host_paths = {"/run/containerd": str(containerd.state_dir)}
    host_paths.update({p: str(tmp_path / "host" / p.lstrip("/")) for p in PRIVATE_HOST_PATHS})
    return daemonset_pod(
        render(REPO / variant),
        node_name=NODE,
        scratch_dir=tmp_path / "scratch",
        host_paths=host_paths,
        image=None,
    )


def ociresolve_spec(
    pod: DaemonSetPod, image: str, args: list[str], **changes: object
) -> ContainerSpec:
    """The DaemonSet's container with the test's command line (and any other ``changes``)."""
    spec = pod.container(CONTAINER)
    # The manifests name the image as a user would ("ociresolve:<version>"): the same one.
    assert OCIRESOLVE_IMAGE.endswith("/" + spec.image), spec.image
    return dataclasses.replace(spec, image=image, args=args, **changes)  # type: ignore[arg-type]


def log_lines(pod: Pod, container: str) -> list[tuple[str, str]]:
    """(stream, text) of each complete line of a container's CRI log."""
    try:
        text = pod.log_path(container).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        _, stream, _, rest = line.split(" ", 3)
        lines.append((stream, rest))
    return lines


def stdout_of(pod: Pod, container: str) -> str:
    return "\n".join(t for s, t in log_lines(pod, container) if s == "stdout")


def wait_for_line(
    pod: Pod, container: str, match: Callable[[str], bool], *, timeout: float = 60.0
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, text in log_lines(pod, container):
            if match(text):
                return text
        time.sleep(0.1)
    raise AssertionError(
        f"no matching line from {container} in {timeout}s; log:\n"
        + "\n".join(f"{s}: {t}" for s, t in log_lines(pod, container))
    )


def run_to_exit(
    containerd: Containerd, pod_factory: PodFactory, plan_: DaemonSetPod, spec: ContainerSpec
) -> tuple[int, Pod]:
    pod = pod_factory(plan_.name, [spec], namespace=plan_.namespace, host_pid=plan_.host_pid)
    status = containerd.cri().wait_container_exit(pod.container_id(CONTAINER), timeout=120)
    return status.exit_code, pod


def test_lookup_and_list_from_the_image_with_the_daemonsets_settings(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str, tmp_path: Path
) -> None:
    workload = pod_factory("web-7c9d8", [ContainerSpec("app", ["sleep", "3600"])], namespace="shop")
    pid = containerd.cri().container_pid(workload.container_id("app"))
    base = plan("deploy", containerd, tmp_path)
    security = base.container(CONTAINER).security
    assert security is not None and security.readonly_rootfs and not security.privileged

    args = ["lookup", "--json", str(pid), "--host-root", "/host"]
    code, pod = run_to_exit(
        containerd, pod_factory, base, ociresolve_spec(base, ociresolve_image, args)
    )
    output = stdout_of(pod, CONTAINER)
    assert code == 0, log_lines(pod, CONTAINER)
    record = json.loads(output)
    assert (record["pod_namespace"], record["pod_name"]) == ("shop", "web-7c9d8")
    assert record["container_name"] == "app"
    assert record["container_id"] == workload.container_id("app")
    assert record["pid"] == pid
    containerd.cri().teardown_pod(pod.sandbox_id)

    args = ["list", "--json", "--host-root", "/host"]
    code, pod = run_to_exit(
        containerd, pod_factory, base, ociresolve_spec(base, ociresolve_image, args)
    )
    assert code == 0, log_lines(pod, CONTAINER)
    rows = [json.loads(line) for line in stdout_of(pod, CONTAINER).splitlines() if line.strip()]
    flat = rows[0] if len(rows) == 1 and isinstance(rows[0], list) else rows
    ids = {row.get("container_id") for row in flat}
    assert workload.container_id("app") in ids, flat


def test_the_tracer_variant_with_its_capabilities_only(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str, tmp_path: Path
) -> None:
    tracer_plan = plan("deploy/variants/tracer", containerd, tmp_path)
    security = tracer_plan.container(CONTAINER).security
    assert security is not None and not security.privileged
    args = ["trace", "connect", "--host-root", "/host", "--socket", IN_CONTAINER_SOCKET]
    args += ["--output", "json", "--summary-interval", "0", "--no-cri"]
    spec = ociresolve_spec(tracer_plan, ociresolve_image, args)
    tracer = pod_factory(
        tracer_plan.name, [spec], namespace=tracer_plan.namespace, host_pid=tracer_plan.host_pid
    )
    wait_for_line(tracer, CONTAINER, lambda t: STARTED in t, timeout=90)

    client = pod_factory(
        "cri-client-5f6b",
        [
            ContainerSpec(
                "client",
                [UNIXCONNECT, IN_CONTAINER_SOCKET],
                mounts=[containerd.socket_mount("/run/containerd")],
            )
        ],
        namespace="legacy",
    )

    def connection(text: str) -> bool:
        try:
            row = json.loads(text)
        except ValueError:
            return False
        return row.get("msg") == OPENED and row.get("pod_name") == "cri-client-5f6b"

    row = json.loads(wait_for_line(tracer, CONTAINER, connection, timeout=30))
    assert row["pod_namespace"] == "legacy"
    assert row["container"] == "client"
    assert row["container_id"] == client.container_id("client")[:12]
    assert row["node"] == NODE  # NODE_NAME from the downward API
    assert row["source"] == "index"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_daemon_from_the_image_answers_the_host_cli(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str, tmp_path: Path
) -> None:
    workload = pod_factory(
        "api-6b5f", [ContainerSpec("server", ["sleep", "3600"])], namespace="prod"
    )
    pid = containerd.cri().container_pid(workload.container_id("server"))
    base = plan("deploy", containerd, tmp_path)
    socket_dir = tmp_path / "host" / "run" / "ociresolve"  # /run/ociresolve, remapped
    port = _free_port()
    spec = ociresolve_spec(base, ociresolve_image, ["serve"])
    # The pod runs on this machine's network here (no CNI): a free port on loopback.
    env = dict(spec.env, OCIRESOLVE_METRICS_ADDRESS=f"127.0.0.1:{port}")
    spec = dataclasses.replace(spec, env=env)
    daemon = pod_factory(base.name, [spec], namespace=base.namespace, host_pid=base.host_pid)

    sockets: list[Path] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not sockets:
        sockets = [p for p in socket_dir.iterdir() if p.is_socket()] if socket_dir.is_dir() else []
        time.sleep(0.1)
    assert sockets, log_lines(daemon, CONTAINER)
    (api,) = sockets

    cli = [str(REPO / ".venv/bin/ociresolve"), "lookup", str(pid), "--json"]
    result = subprocess.run(
        containerd.command([*cli, "--daemon-socket", str(api)]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (result.stderr, log_lines(daemon, CONTAINER))
    record = json.loads(result.stdout)
    assert (record["pod_namespace"], record["pod_name"]) == ("prod", "api-6b5f")
    assert record["container_name"] == "server"


@pytest.mark.parametrize("missing", ["BPF", "PERFMON"])
def test_the_tracer_variant_needs_each_of_its_capabilities(
    containerd: Containerd,
    pod_factory: PodFactory,
    ociresolve_image: str,
    tmp_path: Path,
    missing: str,
) -> None:
    """Without either added capability the tracer cannot start: the capabilities the harness
    passes through CRI are really applied, and neither of the two is superfluous."""
    tracer_plan = plan("deploy/variants/tracer", containerd, tmp_path)
    spec = tracer_plan.container(CONTAINER)
    assert spec.security is not None
    assert missing in spec.security.add_capabilities
    security = dataclasses.replace(
        spec.security,
        add_capabilities=tuple(c for c in spec.security.add_capabilities if c != missing),
    )
    args = ["trace", "connect", "--host-root", "/host", "--socket", IN_CONTAINER_SOCKET]
    args += ["--no-cri", "--summary-interval", "0"]
    spec = ociresolve_spec(tracer_plan, ociresolve_image, args, security=security)
    code, pod = run_to_exit(containerd, pod_factory, tracer_plan, spec)
    lines = log_lines(pod, CONTAINER)
    assert code == 2, lines
    assert not any(STARTED in text for _, text in lines), lines
