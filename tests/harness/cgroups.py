"""The host's cgroup hierarchies, seen through one private parent path.

runc (cgroupfs driver) creates a pod's parent cgroups in every hierarchy and removes only each
container's leaf, so the harness gives every run a private parent (``/ociresolve-e2e-<hex>``)
and removes that subtree, depth-first, in every hierarchy at the end.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .mounts import MOUNTS_FILE, mount_table


@dataclass(frozen=True)
class CgroupMount:
    """One mounted hierarchy: ``version`` 1 (one per controller set) or 2 (unified)."""

    path: Path
    version: int


def cgroup_mounts(mounts_file: Path = MOUNTS_FILE) -> list[CgroupMount]:
    """Every cgroup v1 and v2 mount, in mount-table order, each mount point once."""
    found: dict[Path, CgroupMount] = {}
    for entry in mount_table(mounts_file):
        if entry.fstype in ("cgroup", "cgroup2"):
            version = 2 if entry.fstype == "cgroup2" else 1
            found.setdefault(entry.target, CgroupMount(entry.target, version))
    return list(found.values())


def subtree_dirs(parent: str, mounts: list[CgroupMount] | None = None) -> list[Path]:
    """The existing directories of cgroup ``parent`` (an absolute path), all hierarchies."""
    relative = parent.strip("/")
    if not relative:
        raise ValueError("refusing to work on the root cgroup")
    dirs = []
    for mount in mounts if mounts is not None else cgroup_mounts():
        path = mount.path / relative
        if path.is_dir():
            dirs.append(path)
    return dirs


def _walk_bottom_up(top: Path) -> list[Path]:
    """``top`` and every cgroup below it, children before parents."""
    order: list[Path] = []
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        order.append(Path(dirpath))
    return order


def subtree_pids(parent: str, mounts: list[CgroupMount] | None = None) -> set[int]:
    """Every process in cgroup ``parent`` or below it, in any hierarchy."""
    pids: set[int] = set()
    for top in subtree_dirs(parent, mounts):
        for path in _walk_bottom_up(top):
            try:
                text = (path / "cgroup.procs").read_text()
            except FileNotFoundError:
                continue
            pids.update(int(line) for line in text.split())
    return pids


def remove_subtree(parent: str, *, timeout: float = 5.0) -> list[Path]:
    """Remove cgroup ``parent`` and everything below it in every hierarchy, depth-first.

    A cgroup whose last process has just exited can stay busy for a moment, so ``EBUSY`` is
    retried until ``timeout``. Returns the directories that could not be removed (empty when
    all went).
    """
    deadline = time.monotonic() + timeout
    while True:
        left: list[Path] = []
        for top in subtree_dirs(parent):
            for path in _walk_bottom_up(top):
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        raise
                    left.append(path)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
