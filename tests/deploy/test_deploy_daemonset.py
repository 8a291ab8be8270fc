"""The rendered DaemonSet of every variant: it mounts every host path the code reads by default,
and nothing else of the host's; least privilege; probes, port and environment.

The host paths come from the code's own constants, so a new default path in the code fails here
until the DaemonSet mounts it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from deploytree import variants

from ociresolve.daemon.server import DEFAULT_SOCKET
from ociresolve.hostpaths import _CGROUP2_MOUNTS, DEFAULT_CRI_SOCKETS, DEFAULT_RUNTIME_ROOTS
from ociresolve.tracer._environment import _TRACEFS_CANDIDATES

pytestmark = pytest.mark.tools

Render = Callable[[str], list[dict[str, Any]]]

HOST_ROOT = "/host"
METRICS_PORT = 9477

# Every capability a variant may add, and why. A new one needs a line here (and its comment in
# the manifest): the review happens in this table.
ALLOWED_CAPABILITIES = {
    "BPF": "bpf(2): load the tracer's probe, create its maps and ring buffer (Linux 5.8+)",
    "PERFMON": "perf_event_open(2): attach the probe to a tracepoint (Linux 5.8+)",
}

# What each variant adds; a new variant must say what it needs here.
ADDED_CAPABILITIES = {
    "default": set(),
    "base": set(),
    "tracer": {"BPF", "PERFMON"},
    # The tracer's: the reporter only talks to the containerd socket the base mounts.
    "deprecations": {"BPF", "PERFMON"},
}
# The variants that report containerd's deprecation warnings (`--report-deprecations`).
REPORTER_VARIANTS = {"deprecations"}
TRACER_VARIANTS = {name for name, caps in ADDED_CAPABILITIES.items() if "BPF" in caps}

# Default host paths deliberately not mounted, and why (documented in deploy/README.md).
NOT_MOUNTED = {
    "/run/cri-dockerd.sock": (
        "its directory is the host's /run, which holds every socket of the node; and a hostPath "
        "of the socket itself would fail (type Socket) or be created as a directory (type '') "
        "on the nodes without cri-dockerd"
    ),
}

# Read through --host-root: the daemon reads host path P at HOST_ROOT + P.
HOST_ROOT_PATHS = {
    "/proc": "HostPaths: /proc/<pid>/cgroup",
    **{path: "DEFAULT_RUNTIME_ROOTS" for path in DEFAULT_RUNTIME_ROOTS},
    **{path: "DEFAULT_CRI_SOCKETS" for path in DEFAULT_CRI_SOCKETS},
    **{path: "_CGROUP2_MOUNTS" for path in _CGROUP2_MOUNTS},
}

# Read by the tracer (BCC) at the container's own paths, so mounted at the host's paths. The
# kernel headers' paths are not constants in the code: check_kernel_headers() names
# /lib/modules/<release>/build, a symlink into /usr/src.
TRACER_PATHS = {
    "/lib/modules": "tracer/_environment.py check_kernel_headers",
    "/usr/src": "the target of /lib/modules/<release>/build",
}
TRACEFS_CANDIDATES = tuple(str(path) for path in _TRACEFS_CANDIDATES)


def _daemonset(render: Render, variant: str) -> dict[str, Any]:
    found = [doc for doc in render(variant) if doc["kind"] == "DaemonSet"]
    assert len(found) == 1, f"variant {variant}: {len(found)} DaemonSets"
    return found[0]


def _pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _main(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = (c for c in pod["containers"] if c["name"] == "ociresolve")
    return container


def _host_mounts(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(host path, volume, mount) of every hostPath volume mounted by the main container."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    return [
        (volumes[mount["name"]]["hostPath"]["path"], volumes[mount["name"]], mount)
        for mount in _main(pod).get("volumeMounts", [])
        if "hostPath" in volumes[mount["name"]]
    ]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _covering(path: str, mounts: list[tuple[str, dict[str, Any], dict[str, Any]]], at: str) -> Any:
    """The mount whose host path holds ``path`` and is mounted at ``at`` + that host path."""
    for host_path, volume, mount in mounts:
        if _under(path, host_path) and mount["mountPath"] == posixpath.join(at, host_path[1:]):
            return host_path, volume, mount
    return None


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_every_variant_has_expectations() -> None:
    assert set(variants()) == set(ADDED_CAPABILITIES), (
        "a variant was added or removed: say in ADDED_CAPABILITIES which capabilities it adds"
    )


def test_exceptions_are_still_defaults() -> None:
    # An exception for a path the code no longer reads would hide nothing: drop it.
    assert set(NOT_MOUNTED) <= set(HOST_ROOT_PATHS)


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_host_root_paths_are_mounted(variant: str, render: Render) -> None:
    pod = _pod(_daemonset(render, variant))
    assert _env(_main(pod))["OCIRESOLVE_HOST_ROOT"]["value"] == HOST_ROOT
    mounts = _host_mounts(pod)
    missing = [
        f"{path} ({source})"
        for path, source in HOST_ROOT_PATHS.items()
        if path not in NOT_MOUNTED and _covering(path, mounts, HOST_ROOT) is None
    ]
    assert not missing, f"variant {variant}: not mounted under {HOST_ROOT}: {missing}"


@pytest.mark.parametrize("variant", sorted(TRACER_VARIANTS))
def test_tracer_paths_are_mounted_at_their_own_paths(variant: str, render: Render) -> None:
    mounts = _host_mounts(_pod(_daemonset(render, variant)))
    missing = [path for path in TRACER_PATHS if _covering(path, mounts, "/") is None]
    assert not missing, f"variant {variant}: not mounted at the host's path: {missing}"
    tracefs = [path for path in TRACEFS_CANDIDATES if _covering(path, mounts, "/") is not None]
    # tracefs itself, not all of debugfs (which holds far more than the tracing directory).
    assert tracefs == ["/sys/kernel/tracing"], tracefs


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_no_host_path_without_a_reason(variant: str, render: Render) -> None:
    """Every hostPath volume serves a default path of the code, or is the API socket's."""
    pod = _pod(_daemonset(render, variant))
    tracer = variant in TRACER_VARIANTS
    wanted = [(path, HOST_ROOT) for path in HOST_ROOT_PATHS if path not in NOT_MOUNTED]
    if tracer:
        wanted += [(path, "/") for path in (*TRACER_PATHS, *TRACEFS_CANDIDATES)]
    wanted.append((os.path.dirname(DEFAULT_SOCKET), "/"))
    for host_path, _volume, mount in _host_mounts(pod):
        serves = [
            path
            for path, at in wanted
            if _under(path, host_path) and mount["mountPath"] == posixpath.join(at, host_path[1:])
        ]
        assert serves, f"variant {variant}: hostPath {host_path} serves no default path"


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_host_paths_are_read_only_but_the_socket_directory(variant: str, render: Render) -> None:
    pod = _pod(_daemonset(render, variant))
    socket_dir = os.path.dirname(DEFAULT_SOCKET)
    for host_path, volume, mount in _host_mounts(pod):
        if host_path == socket_dir:
            # Node-local clients find the API socket at the daemon's own default path.
            assert mount["mountPath"] == socket_dir
            assert not mount.get("readOnly", False)
            assert volume["hostPath"]["type"] == "DirectoryOrCreate"
        else:
            assert mount.get("readOnly") is True, f"{host_path} is mounted writable"
    assert any(host_path == socket_dir for host_path, _, _ in _host_mounts(pod)), socket_dir


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_least_privilege(variant: str, render: Render) -> None:
    pod = _pod(_daemonset(render, variant))
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["automountServiceAccountToken"] is False
    pod_seccomp = pod.get("securityContext", {}).get("seccompProfile")
    for container in _containers(pod):
        context = container["securityContext"]
        name = container["name"]
        assert context.get("privileged") is not True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        added = set(context["capabilities"].get("add", []))
        assert added <= set(ALLOWED_CAPABILITIES), f"{name}: {added - set(ALLOWED_CAPABILITIES)}"
        seccomp = context.get("seccompProfile", pod_seccomp)
        assert seccomp == {"type": "RuntimeDefault"}, name
        assert not container.get("ports", []) or all(
            "hostPort" not in port for port in container["ports"]
        ), name
    added = set(_main(pod)["securityContext"]["capabilities"].get("add", []))
    assert added == ADDED_CAPABILITIES[variant], f"variant {variant}: {added}"


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_tracer_flag_only_where_its_capabilities_are(variant: str, render: Render) -> None:
    args = _main(_pod(_daemonset(render, variant))).get("args", [])
    assert args[0] == "serve"
    assert ("--trace-connect" in args) == (variant in TRACER_VARIANTS), args


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_probes_port_and_environment(variant: str, render: Render) -> None:
    daemonset = _daemonset(render, variant)
    pod = _pod(daemonset)
    container = _main(pod)
    ports = {port["name"]: port for port in container["ports"]}
    assert ports["metrics"]["containerPort"] == METRICS_PORT
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    env = _env(container)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["OCIRESOLVE_METRICS_ADDRESS"]["value"] == f"0.0.0.0:{METRICS_PORT}"
    assert env["PYTHONDONTWRITEBYTECODE"]["value"] == "1"
    assert {"operator": "Exists"} in pod["tolerations"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_namespace_and_service_account(variant: str, render: Render) -> None:
    by_kind = {doc["kind"]: doc for doc in render(variant)}
    labels = by_kind["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert by_kind["ServiceAccount"]["automountServiceAccountToken"] is False
    pod = _pod(by_kind["DaemonSet"])
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    quota_scope = by_kind["ResourceQuota"]["spec"]["scopeSelector"]["matchExpressions"][0]
    assert pod["priorityClassName"] in quota_scope["values"]


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_reporter_flag_only_in_its_variants(variant: str, render: Render) -> None:
    args = _main(_pod(_daemonset(render, variant))).get("args", [])
    assert ("--report-deprecations" in args) == (variant in REPORTER_VARIANTS), args
    if variant in REPORTER_VARIANTS:
        # Attributing the warnings to pods needs the tracer in the same process.
        assert args == ["serve", "--trace-connect", "--report-deprecations"], args


def test_the_reporter_variant_is_the_tracer_variant_plus_its_flag(render: Render) -> None:
    tracer, reporter = _daemonset(render, "tracer"), _daemonset(render, "deprecations")
    tracer_main, reporter_main = _main(_pod(tracer)), _main(_pod(reporter))
    assert reporter_main.pop("args") == [*tracer_main.pop("args"), "--report-deprecations"]
    # and the scrape path of its gauges, said explicitly
    annotations = reporter["spec"]["template"]["metadata"]["annotations"]
    assert annotations.pop("prometheus.io/path") == "/metrics"
    assert reporter == tracer


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_prometheus_scrapes_the_metrics_port(variant: str, render: Render) -> None:
    """The prometheus.io annotations name the port the daemon serves its metrics on."""
    pod_template = _daemonset(render, variant)["spec"]["template"]
    annotations = pod_template["metadata"]["annotations"]
    container = _main(pod_template["spec"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    listen = _env(container)["OCIRESOLVE_METRICS_ADDRESS"]["value"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == int(listen.split(":")[1])
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
