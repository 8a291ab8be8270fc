"""Run a DaemonSet's pod through CRI as kubelet would: its mounts, user, capabilities, env.

``render(path)`` renders a kustomization directory (``kubectl kustomize``) or reads a YAML
file; ``daemonset_pod(docs, ...)`` translates the DaemonSet in it into what the harness
starts (``PodFactory`` / ``CriClient.start_pod``)::

    plan = daemonset_pod(render(REPO / "deploy/variants/tracer"), node_name="node-1",
                         host_paths={"/run/containerd": str(ctrd.state_dir)},
                         scratch_dir=tmp_path)
    pod = pod_factory(plan.name, plan.containers, namespace=plan.namespace,
                      host_pid=plan.host_pid)

What is translated, as kubelet does it:

* ``volumes`` + ``volumeMounts``: ``hostPath`` becomes a bind mount (``readOnly``,
  ``mountPropagation``, ``subPath``), its host path remapped through ``host_paths`` (longest
  prefix first), so a test points the runtime state directories at its private containerd
  and leaves ``/proc`` or ``/sys/fs/cgroup`` as they are; ``DirectoryOrCreate`` is created,
  ``Directory``/``File``/``Socket`` must exist. ``emptyDir`` becomes a fresh directory under
  ``scratch_dir``. Any other volume type is refused.
* the pod's and the container's ``securityContext`` (the container's wins): ``capabilities``,
  ``privileged``, ``runAsUser``, ``runAsGroup``, ``runAsNonRoot`` (checked),
  ``readOnlyRootFilesystem``, ``allowPrivilegeEscalation: false`` (no_new_privs),
  ``seccompProfile``; ``hostPID``.
* ``env``: values, and ``valueFrom.fieldRef`` for ``spec.nodeName`` (``node_name``),
  ``metadata.name``, ``metadata.namespace``; ``$(VAR)`` in ``command``/``args``.
* ``command``, ``args``, ``workingDir``, ``image`` (``image`` overrides it).

A ``mountPropagation`` whose source is on a private mount (``/`` is private on a machine
without systemd; containerd then refuses the container) is downgraded to private, and said so
in ``DaemonSetPod.notes``.

Left out: probes, ports, resources (the harness sets no limits), service links, the service
account. Pods always run on the node's network (the harness has no CNI): a manifest with
``hostNetwork: false`` still gets it, so a test must choose free ports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cri import ContainerSpec, Mount, SecurityContext
from .errors import HarnessError
from .mounts import propagation_of

Manifest = dict[str, Any]

_PROPAGATION = {
    None: "private",
    "None": "private",
    "HostToContainer": "host-to-container",
    "Bidirectional": "bidirectional",
}


@dataclass(frozen=True)
class DaemonSetPod:
    """What to start for one node's pod of a DaemonSet."""

    name: str
    namespace: str
    host_pid: bool
    containers: tuple[ContainerSpec, ...]
    notes: tuple[str, ...] = ()

    def container(self, name: str) -> ContainerSpec:
        for spec in self.containers:
            if spec.name == name:
                return spec
        raise KeyError(f"no container {name!r} in {[c.name for c in self.containers]}")


def kubectl_requirements() -> str | None:
    """Why manifests cannot be rendered here, or None."""
    if shutil.which("kubectl") is None:
        return "kubectl missing (renders deploy/ with its kustomize): run scripts/install-system"
    return None


def render(path: Path) -> list[Manifest]:
    """The documents of a kustomization directory (rendered by ``kubectl kustomize``), or of
    a YAML file."""
    if path.is_dir():
        reason = kubectl_requirements()
        if reason is not None:
            raise HarnessError(reason)
        result = subprocess.run(
            ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise HarnessError(f"kubectl kustomize {path} failed:\n{result.stderr}")
        text = result.stdout
    else:
        text = path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find_daemonset(docs: Sequence[Manifest], name: str | None = None) -> Manifest:
    found = [
        d
        for d in docs
        if d.get("kind") == "DaemonSet" and (name is None or d["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise HarnessError(
            f"expected one DaemonSet{f' {name}' if name else ''}, found {len(found)}"
        )
    return found[0]


def daemonset_pod(
    docs: Sequence[Manifest] | Manifest,
    *,
    node_name: str,
    scratch_dir: Path,
    host_paths: Mapping[str, str] | None = None,
    image: str | None = None,
    pod_name: str | None = None,
) -> DaemonSetPod:
    """Translate a DaemonSet (or the rendered documents holding one) into a pod to start.

    ``host_paths`` remaps hostPath sources, ``{"/run/containerd": "<private state dir>"}``:
    a source equal to or below a key moves below its value. ``scratch_dir`` receives the
    emptyDir volumes and the remapped ``DirectoryOrCreate`` sources that do not exist.
    """
    daemonset = docs if isinstance(docs, dict) else find_daemonset(docs)
    pod_spec: Manifest = daemonset["spec"]["template"]["spec"]
    meta = daemonset["metadata"]
    name = pod_name or f"{meta['name']}-{node_name}"
    namespace = meta.get("namespace", "default")
    if pod_spec.get("initContainers"):
        raise HarnessError("initContainers are not supported by the harness")
    volumes = {
        v["name"]: _volume_source(v, scratch_dir, host_paths or {})
        for v in pod_spec.get("volumes", [])
    }
    fields = {"spec.nodeName": node_name, "metadata.name": name, "metadata.namespace": namespace}
    notes: list[str] = []
    containers = tuple(
        _container(c, pod_spec, volumes, fields, image, notes) for c in pod_spec["containers"]
    )
    return DaemonSetPod(
        name=name,
        namespace=namespace,
        host_pid=bool(pod_spec.get("hostPID", False)),
        containers=containers,
        notes=tuple(notes),
    )


def remap(path: str, host_paths: Mapping[str, str]) -> str:
    """``path`` with its longest matching prefix in ``host_paths`` replaced."""
    for prefix in sorted(host_paths, key=len, reverse=True):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return host_paths[prefix] + path[len(prefix.rstrip("/")) :]
    return path


def _volume_source(volume: Manifest, scratch_dir: Path, host_paths: Mapping[str, str]) -> str:
    name = volume["name"]
    if "emptyDir" in volume:
        directory = scratch_dir / "emptydir" / name
        directory.mkdir(parents=True, exist_ok=True)
        return str(directory)
    if "hostPath" not in volume:
        kinds = sorted(set(volume) - {"name"})
        raise HarnessError(f"volume {name}: {kinds} not supported (hostPath, emptyDir)")
    host_path = volume["hostPath"]
    path = remap(host_path["path"], host_paths)
    kind = host_path.get("type", "")
    checks = {
        "Directory": os.path.isdir,
        "File": os.path.isfile,
        "Socket": lambda p: Path(p).is_socket(),
        "CharDevice": lambda p: Path(p).is_char_device(),
        "BlockDevice": lambda p: Path(p).is_block_device(),
    }
    if kind == "DirectoryOrCreate":
        Path(path).mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    elif kind in checks:
        if not checks[kind](path):
            raise HarnessError(f"volume {name}: hostPath {path} is not a {kind}")
    elif kind == "":
        # No check: containerd creates a missing source as a directory. Do so for a remapped
        # (private) source; never let it happen to this machine's own paths.
        if path != host_path["path"]:
            Path(path).mkdir(parents=True, exist_ok=True)
        elif not os.path.exists(path):
            raise HarnessError(
                f"volume {name}: hostPath {path} does not exist; remap it (host_paths) to a "
                "private directory"
            )
    else:
        raise HarnessError(f"volume {name}: unknown hostPath type {kind!r}")
    return path


def _security(container: Manifest, pod_spec: Manifest) -> SecurityContext:
    pod_sc: Manifest = pod_spec.get("securityContext") or {}
    sc: Manifest = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return sc[key] if key in sc else pod_sc.get(key)

    run_as_user = pick("runAsUser")
    if pick("runAsNonRoot") and (run_as_user is None or run_as_user == 0):
        # kubelet refuses to start it (with no runAsUser it checks the image's user: root here).
        raise HarnessError(f"container {container['name']}: runAsNonRoot with uid 0")
    seccomp = pick("seccompProfile")
    profile = None
    if seccomp is not None:
        profile = seccomp["type"]
        if profile == "Localhost":
            profile += ":" + seccomp["localhostProfile"]
    capabilities = sc.get("capabilities") or {}
    escalation = sc.get("allowPrivilegeEscalation")
    return SecurityContext(
        add_capabilities=tuple(capabilities.get("add") or ()),
        drop_capabilities=tuple(capabilities.get("drop") or ()),
        privileged=bool(sc.get("privileged", False)),
        run_as_user=run_as_user,
        run_as_group=pick("runAsGroup"),
        readonly_rootfs=bool(sc.get("readOnlyRootFilesystem", False)),
        no_new_privs=escalation is False,
        host_pid=bool(pod_spec.get("hostPID", False)),
        seccomp=profile,
    )


def _env(container: Manifest, fields: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    if container.get("envFrom"):
        raise HarnessError(f"container {container['name']}: envFrom not supported")
    for item in container.get("env") or []:
        if "valueFrom" in item:
            ref = item["valueFrom"].get("fieldRef")
            if ref is None or ref["fieldPath"] not in fields:
                raise HarnessError(f"env {item['name']}: {item['valueFrom']} not supported")
            env[item["name"]] = fields[ref["fieldPath"]]
        else:
            env[item["name"]] = _expand(str(item.get("value", "")), env)
    return env


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` references (``$$`` escapes); unknown ones stay as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def _container(
    container: Manifest,
    pod_spec: Manifest,
    volumes: Mapping[str, str],
    fields: Mapping[str, str],
    image: str | None,
    notes: list[str],
) -> ContainerSpec:
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise HarnessError(f"volumeMount {mount['name']}: no such volume")
        source = volumes[mount["name"]]
        if mount.get("subPath"):
            source = os.path.join(source, mount["subPath"])
        propagation = _PROPAGATION[mount.get("mountPropagation")]
        if propagation != "private" and propagation_of(source) == "private":
            notes.append(
                f"{container['name']}: {mount['mountPath']}: {mount.get('mountPropagation')} "
                f"downgraded to private ({source} is on a private mount)"
            )
            propagation = "private"
        mounts.append(
            Mount(
                host_path=source,
                container_path=mount["mountPath"],
                readonly=bool(mount.get("readOnly", False)),
                propagation=propagation,
            )
        )
    env = _env(container, fields)
    return ContainerSpec(
        name=container["name"],
        command=[_expand(a, env) for a in container.get("command") or ()],
        args=[_expand(a, env) for a in container.get("args") or ()],
        image=image or container["image"],
        mounts=tuple(mounts),
        env=env,
        security=_security(container, pod_spec),
        working_dir=container.get("workingDir", ""),
    )
