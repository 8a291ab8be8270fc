"""From a bundle directory on disk to an index record: spec, init PID, cgroup id."""

from __future__ import annotations

import logging
import os

import msgspec

from ociresolve.bundle import CONFIG_NAME, load_bundle
from ociresolve.cgroup import cgroup_dir
from ociresolve.hostpaths import HostPaths, Layout
from ociresolve.model import IndexedContainer
from ociresolve.runtimes import normalize

log = logging.getLogger(__name__)


def read_entry(paths: HostPaths, bundle: str, layout: Layout) -> IndexedContainer | None:
    """The record of the bundle in ``bundle``, or ``None`` if it is not a Kubernetes container.

    Raises ``BundleError`` (``retryable`` while ``config.json`` is missing or half-written).
    """
    # The file itself, not the directory: saves load_bundle an open, fstat and close of it.
    spec = load_bundle(f"{bundle}/{CONFIG_NAME}")
    meta = normalize(
        spec.annotations, container_id=spec.container_id, cgroups_path=spec.cgroups_path
    )
    if meta is None or meta.container_id is None:
        return None
    return IndexedContainer(
        meta=meta,
        bundle=bundle,
        cgroups_path=spec.cgroups_path,
        pid=read_pid_file(f"{bundle}/{layout.pid_file}"),
        cgroup_id=cgroup_id_of(paths, spec.cgroups_path),
    )


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
        return os.stat(directory).st_ino
    except OSError:
        return None  # not created yet (the container has not started), or gone
    except ValueError:
        return None  # a NUL byte in an untrusted cgroupsPath: no such directory


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
    return pid if pid > 0 else None
