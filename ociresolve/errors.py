"""The errors ociresolve raises. A lookup miss is ``None``, never an exception."""

from __future__ import annotations


class OciresolveError(Exception):
    """Base class of every error ociresolve raises on purpose."""


class BundleError(OciresolveError):
    """A bundle's ``config.json`` could not be read or decoded.

    ``retryable`` is true when the file may simply be half-written (empty, truncated,
    vanished while reading): a watcher should wait for the next close event and try again.
    """

    def __init__(self, path: str, reason: str, *, retryable: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.retryable = retryable


class ProcessNotFound(OciresolveError):
    """No process with this PID (it never existed, or exited)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"no such process: pid {pid}")
        self.pid = pid


class CriUnavailable(OciresolveError):
    """The CRI runtime did not answer in time, or answered with an error.

    The resolver never lets it escape a lookup: a miss it could not resolve is ``None``.
    """

    def __init__(self, endpoint: str, reason: str, *, code: str | None = None) -> None:
        super().__init__(f"CRI {endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason
        self.code = code


class DaemonUnavailable(OciresolveError):
    """The ociresolve daemon's socket did not answer (not running, not there, too slow)."""

    def __init__(self, socket: str, reason: str) -> None:
        super().__init__(f"ociresolve daemon at {socket}: {reason}")
        self.socket = socket
        self.reason = reason


class InotifyLimitReached(OciresolveError):
    """A kernel limit of inotify is used up for this user: ``sysctl`` names it
    (``fs.inotify.max_user_instances`` or ``fs.inotify.max_user_watches``), ``limit`` is its
    value when it could be read."""

    def __init__(self, sysctl: str, what: str, limit: int | None) -> None:
        value = "" if limit is None else f" = {limit}"
        super().__init__(f"{what}: the limit is reached (sysctl {sysctl}{value}); raise it")
        self.sysctl = sysctl
        self.limit = limit
