"""A small typed CRI client for tests, doing what kubelet does to run a pod, minus the rest.

Every call has a deadline. Pods run on the host network with an empty hostname (no CNI here;
runc refuses a hostname without a private UTS namespace), their cgroups under a private parent
in the kubelet cgroupfs shape ``<parent>/kubepods/besteffort/pod<uid>/<container id>``, and
their logs under a private directory in the ``<namespace>_<name>_<uid>`` shape. Sandboxes and
containers carry the ``io.kubernetes.*`` labels kubelet sets, so CRI answers look like a real
node's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypedDict, Unpack

import grpc

from ociresolve.cri import api_pb2, api_pb2_grpc

from .image import WORKLOAD_IMAGE

DEFAULT_TIMEOUT = 10.0
"""Seconds allowed for one CRI call; RunPodSandbox and stops get more (see below)."""

RUN_POD_TIMEOUT = 60.0

# Labels kubelet puts on sandboxes and containers (pkg/kubelet/types/labels.go).
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted into a container.

    ``propagation``: ``"private"`` (the default), ``"host-to-container"`` (Kubernetes'
    ``HostToContainer``: the host's later mounts below ``host_path`` show inside) or
    ``"bidirectional"``.
    """

    host_path: str
    container_path: str
    readonly: bool = False
    propagation: str = "private"


_PROPAGATION = {
    "private": api_pb2.PROPAGATION_PRIVATE,
    "host-to-container": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
    "bidirectional": api_pb2.PROPAGATION_BIDIRECTIONAL,
}


@dataclass(frozen=True)
class SecurityContext:
    """A container's Linux security settings, as kubelet passes a container's
    ``securityContext`` to the CRI.

    ``host_pid`` runs the container in the node's PID namespace; its pod must be started with
    ``host_pid=True`` too (``hostPID`` is a pod setting that kubelet passes on both levels).
    ``seccomp``: ``None`` leaves it to the runtime (containerd 1.6: unconfined), else
    ``"RuntimeDefault"``, ``"Unconfined"`` or ``"Localhost:<path>"``.
    """

    add_capabilities: Sequence[str] = ()
    drop_capabilities: Sequence[str] = ()
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    host_pid: bool = False
    seccomp: str | None = None


@dataclass(frozen=True)
class ContainerSpec:
    """What to run in one container of a pod.

    ``security`` None sends no Linux security context at all (the runtime's defaults, and the
    pod's PID namespace), as the harness always did.
    """

    name: str
    command: Sequence[str]
    args: Sequence[str] = ()
    image: str = WORKLOAD_IMAGE
    mounts: Sequence[Mount] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    security: SecurityContext | None = None
    working_dir: str = ""


def _security_profile(value: str) -> api_pb2.SecurityProfile:
    kind, _, ref = value.partition(":")
    types = {
        "RuntimeDefault": api_pb2.SecurityProfile.RuntimeDefault,
        "Unconfined": api_pb2.SecurityProfile.Unconfined,
        "Localhost": api_pb2.SecurityProfile.Localhost,
    }
    if kind not in types:
        raise ValueError(f"unknown seccomp profile {value!r}")
    return api_pb2.SecurityProfile(profile_type=types[kind], localhost_ref=ref)


def linux_container_config(
    security: SecurityContext, pod_config: api_pb2.PodSandboxConfig
) -> api_pb2.LinuxContainerConfig:
    """The CRI ``LinuxContainerConfig`` kubelet would send for ``security`` in this pod.

    Namespaces follow the pod's (network, IPC); the PID namespace is the node's with
    ``host_pid``, else the container's own, as kubelet does for pods without
    ``shareProcessNamespace``.
    """
    pod_ns = pod_config.linux.security_context.namespace_options
    if security.host_pid and pod_ns.pid != api_pb2.NODE:
        raise ValueError("host_pid needs a pod started with host_pid=True")
    context = api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(
            add_capabilities=list(security.add_capabilities),
            drop_capabilities=list(security.drop_capabilities),
        ),
        privileged=security.privileged,
        namespace_options=api_pb2.NamespaceOption(
            network=pod_ns.network,
            ipc=pod_ns.ipc,
            pid=api_pb2.NODE if security.host_pid else api_pb2.CONTAINER,
        ),
        readonly_rootfs=security.readonly_rootfs,
        no_new_privs=security.no_new_privs,
    )
    if security.run_as_user is not None:
        context.run_as_user.value = security.run_as_user
    if security.run_as_group is not None:
        context.run_as_group.value = security.run_as_group
    if security.seccomp is not None:
        context.seccomp.CopyFrom(_security_profile(security.seccomp))
    return api_pb2.LinuxContainerConfig(security_context=context)


@dataclass(frozen=True)
class Pod:
    """A running pod: its sandbox and its started containers, by container name."""

    sandbox_id: str
    name: str
    namespace: str
    uid: str
    config: api_pb2.PodSandboxConfig
    containers: Mapping[str, str]

    @property
    def cgroup_parent(self) -> str:
        return self.config.linux.cgroup_parent

    @property
    def log_directory(self) -> Path:
        return Path(self.config.log_directory)

    def log_path(self, container_name: str) -> Path:
        """The container's CRI log file (lines: ``<time> stdout|stderr F|P <text>``)."""
        return self.log_directory / container_name / "0.log"

    def container_id(self, name: str) -> str:
        """The id of the container called ``name``; ``KeyError`` names the ones there are."""
        try:
            return self.containers[name]
        except KeyError:
            raise KeyError(
                f"pod {self.name} has no container {name!r}, only {sorted(self.containers)}"
            ) from None


class PodOptions(TypedDict, total=False):
    """The options of a pod, as ``CriClient.pod_config`` takes them (its defaults apply); the
    ways of making a pod (``run_pod``, ``start_pod``, ``pod``, ``PodFactory``) pass them on."""

    namespace: str
    uid: str | None
    labels: Mapping[str, str] | None
    annotations: Mapping[str, str] | None
    host_pid: bool


class CriClient:
    """A blocking CRI ``RuntimeService`` client over a unix socket.

    ``log_root`` is where pod log directories go, ``cgroup_parent`` the cgroup every pod's
    cgroups go under. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self, socket: Path, *, log_root: Path, cgroup_parent: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.socket = socket
        self.log_root = log_root
        self.cgroup_parent = cgroup_parent
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._stub = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self._pod_configs: dict[str, api_pb2.PodSandboxConfig] = {}

    def close(self) -> None:
        self._channel.close()

    def reconnect(self) -> None:
        """Replace the channel with a new one (after the daemon restarted), keeping this
        client, which pods and factories hold on to."""
        self._channel.close()
        self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        self._stub = api_pb2_grpc.RuntimeServiceStub(self._channel)

    def __enter__(self) -> CriClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- runtime -------------------------------------------------------------------------------

    def version(self, *, timeout: float | None = None) -> api_pb2.VersionResponse:
        return self._stub.Version(
            api_pb2.VersionRequest(version="v1"), timeout=timeout or self.timeout
        )

    # -- sandboxes -----------------------------------------------------------------------------

    def pod_config(
        self,
        name: str,
        namespace: str = "default",
        uid: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        host_pid: bool = False,
        privileged: bool = False,
    ) -> api_pb2.PodSandboxConfig:
        """The sandbox config kubelet would send for a host-network pod (``uid`` made if None).

        ``host_pid``: the pod's PID namespace is the node's (``hostPID: true``); ``privileged``:
        some container of the pod will be privileged.
        """
        uid = uid or str(uuid.uuid4())
        all_labels = {LABEL_POD_NAME: name, LABEL_POD_NAMESPACE: namespace, LABEL_POD_UID: uid}
        all_labels.update(labels or {})
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            hostname="",
            log_directory=str(self.log_root / f"{namespace}_{name}_{uid}"),
            labels=all_labels,
            annotations=dict(annotations or {}),
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_parent}/kubepods/besteffort/pod{uid}",
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(
                        network=api_pb2.NODE, pid=api_pb2.NODE if host_pid else api_pb2.POD
                    ),
                    privileged=privileged,
                ),
            ),
        )

    def run_pod(self, name: str, **options: Unpack[PodOptions]) -> str:
        """Run a sandbox and return its id. Its config is kept for ``create_container``."""
        return self.run_pod_sandbox(self.pod_config(name, **options))

    def run_pod_sandbox(self, config: api_pb2.PodSandboxConfig) -> str:
        """Run a sandbox from a ready config (e.g. one changed after ``pod_config``)."""
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        response = self._stub.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config), timeout=RUN_POD_TIMEOUT
        )
        self._pod_configs[response.pod_sandbox_id] = config
        return response.pod_sandbox_id

    def stop_pod(self, sandbox_id: str) -> None:
        self._stub.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RUN_POD_TIMEOUT
        )

    def remove_pod(self, sandbox_id: str) -> None:
        self._stub.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RUN_POD_TIMEOUT
        )
        self._pod_configs.pop(sandbox_id, None)

    def pod_status(
        self, sandbox_id: str, *, verbose: bool = True
    ) -> api_pb2.PodSandboxStatusResponse:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
        return self._stub.PodSandboxStatus(request, timeout=self.timeout)

    def list_pods(self, *, labels: Mapping[str, str] | None = None) -> list[api_pb2.PodSandbox]:
        request = api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector=dict(labels or {}))
        )
        return list(self._stub.ListPodSandbox(request, timeout=self.timeout).items)

    # -- containers ----------------------------------------------------------------------------

    def create_container(
        self,
        sandbox_id: str,
        name: str,
        image: str = WORKLOAD_IMAGE,
        command: Sequence[str] = (),
        *,
        args: Sequence[str] = (),
        pod_config: api_pb2.PodSandboxConfig | None = None,
        mounts: Iterable[Mount] = (),
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        security: SecurityContext | None = None,
        working_dir: str = "",
    ) -> str:
        """Create (not start) a container in a sandbox and return its id.

        ``pod_config`` defaults to the config this client ran the sandbox with. ``security``
        None sends no Linux security context (see ``ContainerSpec``).
        """
        if pod_config is None:
            try:
                pod_config = self._pod_configs[sandbox_id]
            except KeyError:
                raise ValueError(
                    f"sandbox {sandbox_id} was not run by this client: pass pod_config"
                ) from None
        meta = pod_config.metadata
        all_labels = {
            LABEL_CONTAINER_NAME: name,
            LABEL_POD_NAME: meta.name,
            LABEL_POD_NAMESPACE: meta.namespace,
            LABEL_POD_UID: meta.uid,
        }
        all_labels.update(labels or {})
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image),
            command=list(command),
            args=list(args),
            working_dir=working_dir,
            envs=[api_pb2.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
            mounts=[
                api_pb2.Mount(
                    host_path=m.host_path,
                    container_path=m.container_path,
                    readonly=m.readonly,
                    propagation=_PROPAGATION[m.propagation],
                )
                for m in mounts
            ],
            labels=all_labels,
            annotations=dict(annotations or {}),
            log_path=f"{name}/0.log",
        )
        if security is not None:
            config.linux.CopyFrom(linux_container_config(security, pod_config))
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=pod_config
        )
        return self._stub.CreateContainer(request, timeout=self.timeout).container_id

    def start_container(self, container_id: str) -> None:
        self._stub.StartContainer(
            api_pb2.StartContainerRequest(container_id=container_id), timeout=self.timeout
        )

    def stop_container(self, container_id: str, *, grace: int = 0) -> None:
        """Stop a container, killing it after ``grace`` seconds (0: at once)."""
        request = api_pb2.StopContainerRequest(container_id=container_id, timeout=grace)
        self._stub.StopContainer(request, timeout=self.timeout + grace)

    def remove_container(self, container_id: str) -> None:
        self._stub.RemoveContainer(
            api_pb2.RemoveContainerRequest(container_id=container_id), timeout=self.timeout
        )

    def container_status(
        self, container_id: str, *, verbose: bool = True
    ) -> api_pb2.ContainerStatusResponse:
        request = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self._stub.ContainerStatus(request, timeout=self.timeout)

    def container_info(self, container_id: str) -> dict[str, object]:
        """The runtime's verbose info document (containerd: ``pid``, ``runtimeSpec``, ...)."""
        info = self.container_status(container_id, verbose=True).info
        if "info" not in info:
            raise KeyError(
                f"container {container_id}: no 'info' in verbose status (keys: {sorted(info)})"
            )
        document = json.loads(info["info"])
        assert isinstance(document, dict)
        return document

    def container_pid(self, container_id: str) -> int:
        """The host PID of the container's first process, from the verbose status."""
        pid = self.container_info(container_id).get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"container {container_id}: no running pid (got {pid!r})")
        return pid

    def wait_container_exit(
        self, container_id: str, *, timeout: float = DEFAULT_TIMEOUT
    ) -> api_pb2.ContainerStatus:
        """Poll until the container has exited and return its status (``exit_code``, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id, verbose=False).status
            if status.state == api_pb2.CONTAINER_EXITED:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"container {container_id} still "
                    f"{api_pb2.ContainerState.Name(status.state)} after {timeout}s"
                )
            time.sleep(0.02)

    def list_containers(
        self, *, sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[api_pb2.Container]:
        request = api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(
                pod_sandbox_id=sandbox_id, label_selector=dict(labels or {})
            )
        )
        return list(self._stub.ListContainers(request, timeout=self.timeout).containers)

    # -- pods as a unit ------------------------------------------------------------------------

    def start_pod(
        self, name: str, containers: Sequence[ContainerSpec], **options: Unpack[PodOptions]
    ) -> Pod:
        """Run a sandbox, then create and start each container in order.

        On any failure, what was made so far is torn down before the error propagates.
        """
        privileged = any(s.security is not None and s.security.privileged for s in containers)
        config = self.pod_config(name, privileged=privileged, **options)
        sandbox_id = self.run_pod_sandbox(config)
        ids: dict[str, str] = {}
        try:
            for spec in containers:
                container_id = self.create_container(
                    sandbox_id,
                    spec.name,
                    spec.image,
                    spec.command,
                    args=spec.args,
                    pod_config=config,
                    mounts=spec.mounts,
                    labels=spec.labels,
                    annotations=spec.annotations,
                    env=spec.env,
                    security=spec.security,
                    working_dir=spec.working_dir,
                )
                ids[spec.name] = container_id
                self.start_container(container_id)
        except BaseException:
            self.teardown_pod(sandbox_id)
            raise
        return Pod(
            sandbox_id=sandbox_id,
            name=name,
            namespace=config.metadata.namespace,
            uid=config.metadata.uid,
            config=config,
            containers=ids,
        )

    @contextmanager
    def pod(
        self, name: str, containers: Sequence[ContainerSpec], **options: Unpack[PodOptions]
    ) -> Iterator[Pod]:
        """``start_pod`` as a context manager that tears the pod down on exit."""
        started = self.start_pod(name, containers, **options)
        try:
            yield started
        finally:
            self.teardown_pod(started.sandbox_id)

    def teardown_pod(self, sandbox_id: str) -> None:
        """Stop and remove a sandbox's containers, then the sandbox, as kubelet does.

        A sandbox or container that is already gone is not an error.
        """
        for container in self.list_containers(sandbox_id=sandbox_id):
            self._teardown_container(container.id)
        with _missing_ok():
            self.stop_pod(sandbox_id)
        with _missing_ok():
            self.remove_pod(sandbox_id)
        self._pod_configs.pop(sandbox_id, None)

    def teardown_all(self) -> None:
        """Tear down every pod the runtime knows, and containers left outside any pod."""
        for sandbox in self.list_pods():
            self.teardown_pod(sandbox.id)
        for container in self.list_containers():
            self._teardown_container(container.id)

    def _teardown_container(self, container_id: str) -> None:
        with _missing_ok():
            self.stop_container(container_id)
        with _missing_ok():
            self.remove_container(container_id)


@contextmanager
def _missing_ok() -> Iterator[None]:
    """Swallow the CRI's NOT_FOUND: teardown is idempotent."""
    try:
        yield
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise


class PodFactory:
    """Starts pods for one test and tears down, at ``close()``, those still there.

    ``factory("web", [ContainerSpec("app", ["sleep", "3600"])])`` returns a started ``Pod``;
    with no container specs the pod gets one container ``main`` running ``sleep``.
    """

    def __init__(self, client: CriClient) -> None:
        self.client = client
        self.pods: list[Pod] = []

    def __call__(
        self,
        name: str = "pod",
        containers: Sequence[ContainerSpec] | None = None,
        **options: Unpack[PodOptions],
    ) -> Pod:
        if containers is None:
            containers = [ContainerSpec("main", ["sleep", "3600"])]
        pod = self.client.start_pod(name, containers, **options)
        self.pods.append(pod)
        return pod

    def close(self) -> None:
        """Tear down every pod this factory started, newest first; raise the first error."""
        errors: list[Exception] = []
        while self.pods:
            pod = self.pods.pop()
            try:
                self.client.teardown_pod(pod.sandbox_id)
            except Exception as e:  # keep tearing down the others
                errors.append(e)
        if errors:
            raise errors[0]
