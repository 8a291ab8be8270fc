"""The kernel's inotify limits: which one an ``OSError`` of inotify hit, named by its sysctl.

``inotify_init1`` fails with EMFILE both at the user's instance limit and at the process's
open file limit: a file opened right after tells them apart. ``inotify_add_watch`` fails with
ENOSPC at the user's watch limit.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from ociresolve.errors import InotifyLimitReached, OciresolveError
from ociresolve.hostpaths import sysctl_path

INSTANCES: Final = "fs.inotify.max_user_instances"
WATCHES: Final = "fs.inotify.max_user_watches"
# The same limits of this process's user namespace (the kernel checks every level's): lower
# than the global ones only in a namespace that lowered them.
_USERNS: Final = {INSTANCES: "user.max_inotify_instances", WATCHES: "user.max_inotify_watches"}


def read_limit(sysctl: str) -> int | None:
    """The value of an inotify sysctl, or None when it cannot be read."""
    try:
        with open(sysctl_path(sysctl), "rb") as file:
            return int(file.read(32))
    except (OSError, ValueError):
        return None


def instance_error(exc: OSError) -> OciresolveError:
    """The error ``Resolver.start`` raises when no inotify instance could be created."""
    if exc.errno == errno.EMFILE and not _open_files_used_up():
        return InotifyLimitReached(
            INSTANCES,
            "no inotify instance left for this user" + _userns(INSTANCES),
            read_limit(INSTANCES),
        )
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EMFILE:
        reason += " (the process's open file limit, RLIMIT_NOFILE)"
    return OciresolveError(f"cannot create an inotify instance: {reason}")


def watch_problem(exc: OSError) -> str:
    """Why a watch could not be added, naming the sysctl when it is the watch limit."""
    if exc.errno == errno.ENOSPC:
        what = "no inotify watch left" + _userns(WATCHES)
        limit = InotifyLimitReached(WATCHES, what, read_limit(WATCHES))
        return str(limit)
    return exc.strerror or str(exc)


def _userns(sysctl: str) -> str:
    """The user namespace's own limit, when it is lower than the global one."""
    own, limit = read_limit(_USERNS[sysctl]), read_limit(sysctl)
    if own is None or limit is None or own >= limit:
        return ""
    return f" (its user namespace's {_USERNS[sysctl]} = {own})"


def _open_files_used_up() -> bool:
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno == errno.EMFILE
    os.close(fd)
    return False
