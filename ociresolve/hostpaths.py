"""Every path ociresolve reads on a host, under one ``host_root`` prefix.

Nothing else in the package names a host path. In a container (the DaemonSet), ``host_root``
is where the host's file systems are mounted; on the node itself it is ``/``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from typing import Final

import msgspec

from ociresolve.ids import is_runtime_id

# Runtime state directories watched when none are given.
DEFAULT_RUNTIME_ROOTS: Final = (
    "/run/containerd",  # containerd
    "/run/k3s/containerd",  # k3s, RKE2
    "/run/containers/storage",  # containers-storage run root (cri-o's bundles, podman's pid files)
    "/var/lib/containers/storage",  # containers-storage graph root (podman's config.json)
)


class Layout(msgspec.Struct, frozen=True):
    """Where a runtime keeps its bundles below a runtime root.

    ``levels`` are the directory names from the root down to the bundle directory; ``*`` is
    any name (a namespace, a container id). ``id_level`` is the level whose name is the
    container id; ``pid_file`` is the file in the bundle holding the init process's PID.
    ``runtime`` is the runtime that writes a ``config.json`` into such a bundle.

    A store with two roots per container (containers-storage: a run root on tmpfs, a graph root
    on disk that survives reboots) names ``graph_mark``, a directory only its graph root holds.
    Only a run root says what runs: a graph root's bundles are never indexed on their own, they
    are read to complete a run-root bundle that holds a pid file and no ``config.json``, which
    is ``graph_runtime``'s (its ``config.json`` is in the graph root only).
    """

    levels: tuple[str, ...]
    id_level: int
    pid_file: str
    runtime: str
    graph_mark: str | None = None
    graph_runtime: str | None = None

    def is_graph_root(self, root: str) -> bool:
        """Whether ``root`` is the graph root of a two-root store of this layout."""
        return self.graph_mark is not None and os.path.isdir(f"{root}/{self.graph_mark}")

    def container_id(self, bundle: str) -> str | None:
        """The container id a bundle directory's path carries, if it has a runtime id's shape."""
        parts = bundle.rstrip("/").split("/")
        below = len(self.levels) - 1 - self.id_level  # levels below the id's, down to the bundle
        name = parts[-1 - below] if len(parts) > below else ""
        return name if is_runtime_id(name) else None


LAYOUTS: Final = (
    # containerd's shim v2 tasks: <state>/io.containerd.runtime.v2.task/<namespace>/<id>/
    Layout(("io.containerd.runtime.v2.task", "*", "*"), 2, "init.pid", "containerd"),
    # containerd's legacy v1 runtime: <state>/io.containerd.runtime.v1.linux/<namespace>/<id>/
    Layout(("io.containerd.runtime.v1.linux", "*", "*"), 2, "init.pid", "containerd"),
    # containers-storage: <root>/overlay-containers/<id>/userdata/ in the run root AND the graph
    # root (containers/storage store.go: ContainerRunDirectory, ContainerDirectory). cri-o writes
    # config.json into both and its pid file into the run root; podman writes config.json only
    # into the graph root and its pid file only into the run root. The graph root alone holds
    # the image store, <driver>-images/ (made when the store is first loaded, before any
    # container): what tells it from the run root, whatever the two are called.
    Layout(
        ("overlay-containers", "*", "userdata"),
        1,
        "pidfile",
        "cri-o",
        graph_mark="overlay-images",
        graph_runtime="podman",
    ),
)

# CRI endpoints, in the order they are tried when none is given.
DEFAULT_CRI_SOCKETS: Final = (
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
)

# cgroup v2 mount points, in the order they are tried: unified (v2 only), then hybrid.
_CGROUP2_MOUNTS: Final = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
# The sysctls of the kernel this process runs on (its own view: never below ``host_root``).
_SYSCTLS: Final = "/proc/sys"


def sysctl_path(name: str) -> str:
    """Where this process reads the sysctl ``name`` (``fs.inotify.max_user_watches``)."""
    return f"{_SYSCTLS}/{name.replace('.', '/')}"


class HostPaths:
    """The host's ``/proc``, cgroup v2 mount and runtime roots, all below ``host_root``."""

    def __init__(self, host_root: str = "/", runtime_roots: Sequence[str] | None = None) -> None:
        self.host_root = os.path.abspath(host_root)
        roots = DEFAULT_RUNTIME_ROOTS if runtime_roots is None else tuple(runtime_roots)
        self.runtime_roots: tuple[str, ...] = tuple(self.host(root) for root in roots)
        self._proc = self.host("/proc")
        self._cgroup2: str | None = None

    def host(self, path: str) -> str:
        """``path`` (absolute, on the host) as seen from here."""
        if self.host_root == "/":
            return os.path.normpath(path)
        return os.path.normpath(os.path.join(self.host_root, path.lstrip("/")))

    def proc_comm(self, pid: int) -> str:
        """The process's name (its ``comm``), at most 15 bytes and a newline."""
        return f"{self._proc}/{pid}/comm"

    def proc_cgroup(self, pid: int) -> str:
        return f"{self._proc}/{pid}/cgroup"

    @property
    def cgroup2(self) -> str | None:
        """The cgroup v2 mount (whose directory inodes are BPF's cgroup ids), or ``None``.

        Found once; while there is none it is looked for again on each call.
        """
        if self._cgroup2 is None:
            self._cgroup2 = next(
                (
                    path
                    for path in map(self.host, _CGROUP2_MOUNTS)
                    if os.path.exists(os.path.join(path, "cgroup.controllers"))
                ),
                None,
            )
        return self._cgroup2

    def cgroup2_dir(self, relative: str) -> str | None:
        """The directory of a cgroup v2 path relative to the mount; ``None`` without cgroup v2,
        or when the (untrusted) path would lead out of the mount."""
        mount = self.cgroup2
        relative = relative.strip("/")
        if mount is None or not relative:
            return None
        if ".." not in relative.split("/"):
            return f"{mount}/{relative}"
        path = os.path.normpath(os.path.join(mount, relative))
        return path if path.startswith(mount + os.sep) else None

    def cri_socket(
        self, explicit: str | None = None, candidates: Sequence[str] = DEFAULT_CRI_SOCKETS
    ) -> str | None:
        """The socket to use: ``explicit`` (a host path) if given, else the first of
        ``candidates`` (host paths) that is a socket now; ``None`` when there is none."""
        if explicit:
            return self.host(explicit)
        for candidate in map(self.host, candidates):
            try:
                if stat.S_ISSOCK(os.stat(candidate).st_mode):
                    return candidate
            except OSError:
                continue
        return None

    def bundle_candidates(self, container_id: str) -> Iterator[tuple[str, Layout]]:
        """The bundle directories where a container with this id could be, existing or not;
        never in a graph root (see ``Layout``). None for an id that is not a runtime's (one with
        a ``/`` or ``..`` would name any directory)."""
        if not is_runtime_id(container_id):
            return
        for root in self.runtime_roots:
            for layout in LAYOUTS:
                if not layout.is_graph_root(root):
                    yield from _expand(root, layout, container_id)

    def graph_bundles(self, container_id: str, layout: Layout) -> Iterator[str]:
        """The directories where a graph root of ``layout`` would keep this container's
        ``config.json``, existing or not (none for an id that is not a runtime's)."""
        if not is_runtime_id(container_id):
            return
        for root in self.runtime_roots:
            if layout.is_graph_root(root):
                for path, _ in _expand(root, layout, container_id):
                    yield path


def _expand(root: str, layout: Layout, container_id: str) -> Iterator[tuple[str, Layout]]:
    paths = [root]
    for level, name in enumerate(layout.levels):
        if level == layout.id_level:
            paths = [os.path.join(p, container_id) for p in paths]
        elif name == "*":
            paths = [os.path.join(p, child) for p in paths for child in _children(p)]
        else:
            paths = [os.path.join(p, name) for p in paths]
    for path in paths:
        yield path, layout


def _children(directory: str) -> list[str]:
    try:
        return [name for name in os.listdir(directory) if not name.startswith(".")]
    except OSError:
        return []
