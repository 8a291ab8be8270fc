"""From a bundle directory on disk to an index record: spec, init PID, cgroup id.

A bundle is read where its layout puts it (``hostpaths.LAYOUTS``), and that place decides what
it can be: a Kubernetes container (``IndexedContainer``), or a container of a runtime that is
not Kubernetes' (``StandaloneContainer``): podman's, whose run-root bundle holds only its pid
file, its ``config.json`` being in the graph root; or one of containerd's outside CRI.
"""

from __future__ import annotations

import logging
import os
from typing import Final, NamedTuple

import msgspec

from ociresolve.bundle import CONFIG_NAME, load_bundle
from ociresolve.cgroup import cgroup_dir
from ociresolve.errors import BundleError
from ociresolve.hostpaths import HostPaths, Layout
from ociresolve.model import IndexedContainer, StandaloneContainer
from ociresolve.runtimes import normalize_at

log = logging.getLogger(__name__)

# Linux's PID_MAX_LIMIT on 64-bit (include/linux/threads.h): no kernel.pid_max goes above it.
PID_MAX: Final = 4_194_304
# Inode numbers, which cgroup ids are, are unsigned 64-bit.
_U64_MAX: Final = 2**64 - 1


class Entry(NamedTuple):
    """What a bundle directory says now. ``record`` is ``None`` when there is nothing to index
    (not a container id's directory); ``final`` when nothing the index reads will change in
    the directory any more (the init PID is known, or no process will ever run): a watcher
    need not watch it."""

    record: IndexedContainer | StandaloneContainer | None
    final: bool
    # Annotations whose claims the structure contradicts ("key=value"), not trusted: a tenant's
    # pod annotations reach a cri-o sandbox's config.json.
    conflicts: tuple[str, ...] = ()


def read_entry(paths: HostPaths, bundle: str, layout: Layout) -> Entry:
    """What the bundle directory ``bundle`` of ``layout`` holds.

    Raises ``BundleError`` (``retryable`` while ``config.json`` is missing or half-written, and
    while a run-root bundle of a two-root store has neither a ``config.json`` nor a pid file).
    """
    config = f"{bundle}/{CONFIG_NAME}"
    try:
        # The file itself, not the directory: saves load_bundle an open, fstat and close of it.
        spec = load_bundle(config)
    except BundleError as exc:
        if layout.graph_runtime is None or not _missing(exc):
            raise
        # A run-root bundle without config.json: layout.graph_runtime's (podman's, whose
        # config.json is in the graph root) once it has a pid file; until then it may still
        # become a bundle of its own. A runtime writing its config.json here does so before it
        # starts the process whose pid file follows: a pid file seen first, then no config.json
        # after it, is proof. The other order races with a config.json written meanwhile.
        pid = read_pid_file(f"{bundle}/{layout.pid_file}")
        if pid is None:
            raise
        try:
            spec = load_bundle(config)
        except BundleError as again:
            if not _missing(again):
                raise
            return _config_elsewhere(paths, bundle, layout, pid)
    pid = read_pid_file(f"{bundle}/{layout.pid_file}")
    found = normalize_at(
        layout.runtime,
        spec.annotations,
        container_id=spec.container_id,
        cgroups_path=spec.cgroups_path,
    )
    if found.meta is None or found.meta.container_id is None:
        if spec.container_id is None:
            return Entry(None, True)
        other = StandaloneContainer(
            runtime=found.runtime,
            container_id=spec.container_id,
            bundle=bundle,
            config=config,
            pid=pid,
        )
        return Entry(other, pid is not None)
    record = IndexedContainer(
        meta=found.meta,
        bundle=bundle,
        cgroups_path=spec.cgroups_path,
        pid=pid,
        cgroup_id=cgroup_id_of(paths, spec.cgroups_path),
        sockets=spec.sockets,
    )
    return Entry(record, pid is not None or not found.runs, found.conflicts)


def _missing(exc: BundleError) -> bool:
    return isinstance(exc.__cause__, FileNotFoundError)


def _config_elsewhere(paths: HostPaths, bundle: str, layout: Layout, pid: int) -> Entry:
    """The container of a run-root bundle whose ``config.json`` is in the graph root."""
    assert layout.graph_runtime is not None
    container_id = layout.container_id(bundle)
    if container_id is None:
        return Entry(None, True)
    configs = (f"{d}/{CONFIG_NAME}" for d in paths.graph_bundles(container_id, layout))
    other = StandaloneContainer(
        runtime=layout.graph_runtime,
        container_id=container_id,
        bundle=bundle,
        config=next((path for path in configs if os.path.isfile(path)), None),
        pid=pid,
    )
    return Entry(other, True)


def with_cgroup_id(paths: HostPaths, record: IndexedContainer) -> IndexedContainer:
    """``record`` with its cgroup id, if its cgroup v2 directory exists now."""
    if record.cgroup_id is not None:
        return record
    inode = cgroup_id_of(paths, record.cgroups_path)
    return record if inode is None else msgspec.structs.replace(record, cgroup_id=inode)


def cgroup_id_of(paths: HostPaths, cgroups_path: str | None) -> int | None:
    """The inode of the cgroup v2 directory a ``cgroupsPath`` names, if it exists now."""
    if not cgroups_path:
        return None
    directory = paths.cgroup2_dir(cgroup_dir(cgroups_path))
    if directory is None:
        return None
    try:
        inode = os.stat(directory).st_ino
    except OSError:
        return None  # not created yet (the container has not started), or gone
    except ValueError:
        return None  # a NUL byte in an untrusted cgroupsPath: no such directory
    return inode if 0 < inode <= _U64_MAX else None


def with_pid(paths: HostPaths, record: IndexedContainer, layout: Layout) -> IndexedContainer:
    pid = read_pid_file(f"{record.bundle}/{layout.pid_file}")
    if pid is not None and pid != record.pid:
        record = msgspec.structs.replace(record, pid=pid)
    return with_cgroup_id(paths, record)


def read_pid_file(path: str) -> int | None:
    # os.open/os.read/os.close: three system calls where open() makes five (fstat, ioctl).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        text = os.read(fd, 32)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        pid = int(text.strip() or b"0")
    except ValueError:
        log.warning("%s: not a PID: %r", path, text)
        return None
    if pid > PID_MAX:
        log.warning("%s: not a PID: %d is above the kernel's limit, %d", path, pid, PID_MAX)
        return None
    return pid if pid > 0 else None
