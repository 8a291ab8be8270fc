"""What a process's ``/proc`` entry says about it: its live cgroup.

A function of the host paths alone, so that what only needs the cgroup (``RemoteResolver``,
whose index lives in the daemon) needs no ``Resolver``.
"""

from __future__ import annotations

import os
from typing import Final

from ociresolve.cgroup import parse_cgroup
from ociresolve.errors import OciresolveError, ProcessNotFound
from ociresolve.hostpaths import HostPaths
from ociresolve.model import CgroupRef

# /proc/<pid>/cgroup is a few hundred bytes; a v1 host with many hierarchies stays under this.
CGROUP_FILE_MAX: Final = 16384


def read_cgroup(paths: HostPaths, pid: int) -> CgroupRef | None:
    """What the live cgroup of ``pid`` says: its container id, or ``None`` on the host.

    Read at every call (a PID is reused, its cgroup is not). Raises ``ProcessNotFound`` when
    there is no such process, ``OciresolveError`` when its cgroup cannot be read.
    """
    path = paths.proc_cgroup(pid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessNotFound(pid) from None
    except OSError as exc:
        raise OciresolveError(f"pid {pid}: cannot read {path}: {exc.strerror}") from exc
    try:
        data = os.read(fd, CGROUP_FILE_MAX)
    except ProcessLookupError:  # ESRCH: exited between open and read
        raise ProcessNotFound(pid) from None
    finally:
        os.close(fd)
    return parse_cgroup(data.decode(errors="replace"))
