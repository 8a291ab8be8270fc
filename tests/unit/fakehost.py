"""A fake node for the live-index tests, on a real (tmpfs) directory tree.

Bundles are written the way the runtimes write them (containerd's state dir, containers-storage's
``overlay-containers``), from the real captured ``config.json`` files in ``fixtures/``; the host's
``/proc/<pid>/cgroup`` files and cgroup v2 tree are files and directories below the host root.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ociresolve import BundleError, IndexedContainer, read_bundle
from ociresolve.cgroup import cgroup_dir

FIXTURES: Final = Path(__file__).resolve().parents[2] / "fixtures"
CONTAINERD_CAPTURE: Final = FIXTURES / "bundles" / "containerd" / "1.6.20-container-e2e-capture"
SANDBOX_CAPTURE: Final = FIXTURES / "bundles" / "containerd" / "1.6.20-sandbox-e2e-capture"
CRIO_FIXTURE: Final = FIXTURES / "bundles" / "cri-o" / "2023-02-container-coredns-ig-blog"
PODMAN_FIXTURE: Final = (
    FIXTURES / "bundles" / "podman" / "2021-09-standalone-container-inspect-docs"
)
CGROUP_FILES: Final = FIXTURES / "cgroups" / "files"
CRIO_CAPTURES: Final = FIXTURES / "bundles" / "cri-o"
PODMAN_CAPTURES: Final = FIXTURES / "bundles" / "podman"

# Runtime roots as seen on the host (below the host root here).
CONTAINERD_ROOT: Final = "/run/containerd"
CRIO_ROOT: Final = "/run/containers/storage"  # containers-storage's run root
GRAPH_ROOT: Final = "/var/lib/containers/storage"  # containers-storage's graph root
TASKS: Final = "io.containerd.runtime.v2.task"
STORAGE: Final = "overlay-containers"
IMAGES: Final = "overlay-images"  # only a graph root has it

_CAPTURED_ID: Final = "50706bd2bb814fd1e6d7009434ebdaa7373b236ab09fb25992094ae1ff2355c4"
_CAPTURED_UID: Final = "aa20704d-63f2-4451-9018-50a4ac153cdc"
_CRIO_CAPTURED_ID: Final = "f33f47b0db740bb647cb3e7ac62d96c74966dbb99cbfaf4563bfd42d387e8b44"
_CRIO_CAPTURED_UID: Final = "042efd86_1f3b_4f2f_8736_f31c58e95bbc"


def new_id() -> str:
    """A runtime-shaped container id (64 lower-case hex)."""
    return secrets.token_hex(32)


def new_uid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    sandbox_id: str

    @classmethod
    def new(cls, name: str = "web-5d9f7", namespace: str = "shop") -> Pod:
        return cls(namespace=namespace, name=name, uid=new_uid(), sandbox_id=new_id())


def _template(path: Path) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((path / "config.json").read_bytes())
    return spec


_CONTAINERD_TEMPLATE: Final = _template(CONTAINERD_CAPTURE)


def containerd_spec(
    container_id: str,
    pod: Pod,
    *,
    name: str | None = "app",
    image: str = "localhost/ociresolve-e2e/busybox:1",
) -> dict[str, Any]:
    """containerd 1.6.20's ``config.json`` for a container (``name``) or its sandbox (``None``)."""
    spec = copy.deepcopy(_CONTAINERD_TEMPLATE)
    annotations = {
        "io.kubernetes.cri.container-type": "container" if name else "sandbox",
        "io.kubernetes.cri.sandbox-id": pod.sandbox_id,
        "io.kubernetes.cri.sandbox-name": pod.name,
        "io.kubernetes.cri.sandbox-namespace": pod.namespace,
        "io.kubernetes.cri.sandbox-uid": pod.uid,
    }
    if name:
        annotations["io.kubernetes.cri.container-name"] = name
        annotations["io.kubernetes.cri.image-name"] = image
    else:
        annotations["io.kubernetes.cri.sandbox-log-directory"] = (
            f"/var/log/pods/{pod.namespace}_{pod.name}_{pod.uid}"
        )
    spec["annotations"] = annotations
    spec["linux"]["cgroupsPath"] = f"/kubepods/besteffort/pod{pod.uid}/{container_id}"
    return spec


def crio_spec(container_id: str, pod: Pod, *, name: str = "coredns") -> dict[str, Any]:
    """cri-o's ``config.json`` (systemd cgroup driver) for a container of ``pod``."""
    spec = _template(CRIO_FIXTURE)
    spec["annotations"] = {
        "io.container.manager": "cri-o",
        "io.kubernetes.container.name": name,
        "io.kubernetes.cri-o.ContainerID": container_id,
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ImageName": "k8s.gcr.io/coredns/coredns:v1.8.6",
        "io.kubernetes.cri-o.SandboxID": pod.sandbox_id,
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
    }
    slice_uid = pod.uid.replace("-", "_")
    spec.setdefault("linux", {})["cgroupsPath"] = (
        f"kubepods-burstable-pod{slice_uid}.slice:crio:{container_id}"
    )
    return spec


def podman_spec() -> dict[str, Any]:
    """A plain podman container's ``config.json``: not a Kubernetes container."""
    return _template(PODMAN_FIXTURE)


@dataclass(frozen=True)
class Capture:
    """A live capture kept in ``fixtures/bundles`` (see its PROVENANCE.md): the container's
    ``config.json``, the listing of its ``userdata/`` in each containers-storage root, the PID of
    its first process and that process's ``/proc/<pid>/cgroup``."""

    case: Path
    container_id: str
    pid: int | None
    kubernetes: bool
    expected: dict[str, Any] | None

    @classmethod
    def load(cls, case: Path) -> Capture:
        truth = json.loads((case / "expected.json").read_text())
        pid = (case / "pid").read_text().strip()
        return cls(
            case=case,
            container_id=truth["container_id"],
            pid=int(pid) if pid.isdigit() else None,
            kubernetes=truth["kubernetes"],
            expected=truth["expected"],
        )

    @property
    def spec(self) -> dict[str, Any]:
        return _template(self.case)

    @property
    def cgroups_path(self) -> str:
        return str(self.spec["linux"]["cgroupsPath"])

    @property
    def proc_cgroup(self) -> str | None:
        path = self.case / "proc_pid_cgroup"
        return path.read_text() if path.exists() else None

    def listing(self) -> dict[str, list[tuple[str, str, int]]]:
        """Per ``userdata/`` directory (its host path), its entries: (name, kind, size), kind
        being ``ls -l``'s first letter (``-`` file, ``d`` directory, ``s`` socket, ``p`` FIFO)."""
        listing: dict[str, list[tuple[str, str, int]]] = {}
        entries: list[tuple[str, str, int]] = []
        for line in (self.case / "bundle_files.txt").read_text().splitlines():
            if line.startswith("# "):
                entries = listing.setdefault(line[2:].split()[0], [])
            elif line and not line.startswith("total"):
                fields = line.split()
                if fields[-1] not in (".", ".."):
                    entries.append((fields[-1], fields[0][0], int(fields[4])))
        return listing


def captures(runtime_dir: Path) -> list[Capture]:
    return [Capture.load(case.parent) for case in sorted(runtime_dir.glob("*-capture/pid"))]


def encode(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec).encode()


def write_in_place(path: Path, data: bytes) -> None:
    """containerd's way: open with O_TRUNC (the file is empty for a while), write, close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_by_rename(path: Path, data: bytes) -> None:
    """A temporary file renamed into place (one IN_MOVED_TO, never a partial file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.rename(temporary, path)


class FakeHost:
    """A host root with containerd and containers-storage state dirs, /proc and a cgroup v2 tree.

    Nothing is created until asked for, so tests can start a watcher on a bare host.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.containerd = self.path(CONTAINERD_ROOT)
        self.crio = self.path(CRIO_ROOT)
        self.graph = self.path(GRAPH_ROOT)
        self.cgroup = self.path("/sys/fs/cgroup")
        self._staging = root / "staging"

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    # -- bundles -------------------------------------------------------------------------------

    def make_roots(self) -> None:
        """The runtimes' directories down to where bundles go (containerd's ``k8s.io``)."""
        (self.containerd / TASKS / "k8s.io").mkdir(parents=True, exist_ok=True)
        (self.crio / STORAGE).mkdir(parents=True, exist_ok=True)

    def bundle(self, layout: str, container_id: str, pod: Pod) -> tuple[Path, dict[str, Any]]:
        """Where a ``containerd`` or ``cri-o`` container's bundle goes, and its spec."""
        if layout == "containerd":
            return self.containerd_bundle(container_id), containerd_spec(container_id, pod)
        return self.crio_bundle(container_id), crio_spec(container_id, pod)

    def containerd_bundle(self, container_id: str, namespace: str = "k8s.io") -> Path:
        return self.containerd / TASKS / namespace / container_id

    def crio_bundle(self, container_id: str) -> Path:
        return self.crio / STORAGE / container_id / "userdata"

    def graph_bundle(self, container_id: str) -> Path:
        return self.graph / STORAGE / container_id / "userdata"

    def make_graph_root(self) -> None:
        """containers-storage's graph root: its image store, then its containers' directory
        (the order containers/storage makes them in)."""
        (self.graph / IMAGES).mkdir(parents=True, exist_ok=True)
        (self.graph / STORAGE).mkdir(parents=True, exist_ok=True)

    def lay_out(
        self, capture: Capture, *, roots: tuple[str, ...] = (CRIO_ROOT, GRAPH_ROOT)
    ) -> None:
        """Rebuild the capture's ``userdata/`` directories exactly as its listing shows, in the
        order the runtimes write them: the directories, ``config.json`` (graph root first, as
        cri-o and podman do), every other entry, the pid file last. ``roots``: only those."""
        listing = {
            directory: entries
            for directory, entries in capture.listing().items()
            if any(directory.startswith(root + "/") for root in roots)
        }
        for directory in listing:
            self.path(directory).mkdir(parents=True, exist_ok=True)
        config = (capture.case / "config.json").read_bytes()  # byte for byte
        for directory in sorted(listing, key=lambda d: not d.startswith(GRAPH_ROOT)):
            if any(name == "config.json" for name, _, _ in listing[directory]):
                write_in_place(self.path(directory) / "config.json", config)
        last: list[Path] = []
        for directory, entries in listing.items():
            for name, kind, size in entries:
                path = self.path(directory) / name
                if name == "config.json":
                    continue
                if name == "pidfile":
                    last.append(path)
                elif kind == "d":
                    path.mkdir(exist_ok=True)
                elif kind == "s":
                    os.mknod(path, 0o700 | stat.S_IFSOCK)
                elif kind == "p":
                    os.mkfifo(path, 0o640)
                else:
                    path.write_bytes(b"0" * size)  # conmon's pid, state.json: nobody reads them
        for path in last:
            write_by_rename(path, str(capture.pid).encode())

    def run_capture(self, capture: Capture) -> None:
        """The capture's process on the host: its ``/proc/<pid>/cgroup``, its cgroup v2
        directory."""
        if capture.pid is not None and capture.proc_cgroup is not None:
            self.set_proc_cgroup(capture.pid, capture.proc_cgroup)
        if self.cgroup.exists():
            self.make_cgroup(capture.cgroups_path)

    def write(self, bundle: Path, spec: dict[str, Any], *, by_rename: bool = False) -> Path:
        """Create ``bundle`` (and its parents) and write its ``config.json``."""
        bundle.mkdir(parents=True, exist_ok=True)
        config = bundle / "config.json"
        (write_by_rename if by_rename else write_in_place)(config, encode(spec))
        return bundle

    def move_in(self, bundle: Path, spec: dict[str, Any]) -> Path:
        """Build the bundle elsewhere on the same file system, then rename its directory in.

        For containers-storage the renamed directory is ``<id>/`` (holding ``userdata/``).
        """
        top = bundle.parent if bundle.name == "userdata" else bundle
        staged = self._staging / secrets.token_hex(8) / top.name
        inner = staged / bundle.relative_to(top)
        inner.mkdir(parents=True)
        (inner / "config.json").write_bytes(encode(spec))
        top.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, top)
        staged.parent.rmdir()
        return bundle

    def tear_down(self, bundle: Path) -> None:
        """containerd's teardown: rename ``<id>`` to ``.<id>``, then delete it."""
        hidden = bundle.with_name(f".{bundle.name}")
        os.rename(bundle, hidden)
        shutil.rmtree(hidden)

    def write_pid(self, bundle: Path, pid: int, name: str = "init.pid") -> None:
        write_by_rename(bundle / name, str(pid).encode())

    def truth(self) -> set[str]:
        """The ids of the Kubernetes containers on disk, read independently of the watcher."""
        patterns = (
            f"{glob.escape(str(self.containerd))}/{TASKS}/*/*/config.json",
            f"{glob.escape(str(self.crio))}/{STORAGE}/*/userdata/config.json",
        )
        found: set[str] = set()
        for config in (c for pattern in patterns for c in glob.glob(pattern)):  # skips .<id>
            try:
                meta = read_bundle(config)
            except BundleError:
                continue
            if meta is not None and meta.container_id is not None:
                found.add(meta.container_id)
        return found

    # -- /proc and cgroups ---------------------------------------------------------------------

    def enable_cgroup2(self) -> None:
        """A cgroup v2 mount at ``/sys/fs/cgroup`` (what ``HostPaths`` looks for)."""
        self.cgroup.mkdir(parents=True, exist_ok=True)
        (self.cgroup / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")

    def make_cgroup(self, cgroups_path: str) -> int:
        """Create the cgroup v2 directory of a spec's ``cgroupsPath``; its inode is its id."""
        directory = self.cgroup / cgroup_dir(cgroups_path)
        directory.mkdir(parents=True, exist_ok=True)
        return os.stat(directory).st_ino

    def set_proc_cgroup(self, pid: int, text: str) -> None:
        proc = self.path(f"/proc/{pid}")
        proc.mkdir(parents=True, exist_ok=True)
        (proc / "cgroup").write_text(text)


def containerd_cgroup_file(container_id: str, pod_uid: str) -> str:
    """The real ``/proc/<pid>/cgroup`` of a containerd 1.6.20 container, for another container."""
    text = (CGROUP_FILES / "containerd-1.6.20-e2e-capture.cgroup").read_text()
    return text.replace(_CAPTURED_ID, container_id).replace(_CAPTURED_UID, pod_uid)


def crio_cgroup_file(container_id: str, pod_uid: str) -> str:
    """A real cri-o (systemd driver, cgroup v2) ``/proc/<pid>/cgroup``, for another container."""
    text = (CGROUP_FILES / "neuvector.TestCrio_Container_Cgroupv2.cgroup").read_text()
    text = text.replace(_CRIO_CAPTURED_ID, container_id)
    return text.replace(_CRIO_CAPTURED_UID, pod_uid.replace("-", "_"))


def host_cgroup_file() -> str:
    """A host process's ``/proc/<pid>/cgroup`` (PID 1, cgroup v2)."""
    return (CGROUP_FILES / "neuvector.TestCrio_Host_Proc1_Cgroupv2.cgroup").read_text()


def tmpfs_directory(fallback: Path) -> tuple[Path, bool]:
    """A fresh directory on /dev/shm when it is a writable tmpfs, else ``fallback``.

    Returns the directory and whether the caller must delete it.
    """
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return Path(tempfile.mkdtemp(prefix="ociresolve-test-", dir="/dev/shm")), True
    return fallback, False


def live_ids(records: Iterable[IndexedContainer]) -> set[str]:
    """The ids of the containers an index holds that are not in their grace period."""
    return {r.meta.container_id for r in records if not r.removed and r.meta.container_id}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
