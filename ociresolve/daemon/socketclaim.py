"""The claim of one daemon on its API socket path: an exclusive ``flock`` on a lock file next
to the socket (``<socket>.lock``), taken before anything is bound and held until the socket is
removed.

Whoever holds the lock owns the path: a socket found there under the lock was left by a daemon
that is gone (the kernel drops a dead process's locks) and is replaced, unless something still
listens on it (another program: never stolen). A daemon that cannot take the lock refuses to
start, and touches nothing. The lock file itself stays: removing it would let two daemons lock
two different files of one name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat

from ociresolve.errors import OciresolveError


class SocketClaim:
    """The right to bind and remove ``socket_path``, from ``acquire()`` to ``release()``."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.lock_path = f"{self.socket_path}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> SocketClaim:
        """Create the directory, take the lock, clear a stale socket; ``OciresolveError`` if
        another daemon holds the lock, or the path cannot be used. Twice is harmless."""
        if self._fd is not None:
            return self
        path = self.socket_path
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:  # a file where a directory should be, a symlink, no permission
            raise OciresolveError(f"cannot serve on {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OciresolveError(
                    f"another daemon is serving on {path} (it holds {self.lock_path})"
                ) from exc
            raise OciresolveError(f"cannot serve on {path}: {exc.strerror}") from exc
        self._fd = fd
        try:
            _clear_stale_socket(path)
        except BaseException:
            self.release()
            raise
        return self

    def remove_socket(self) -> None:
        """Unlink the socket: only while the claim is held (it is then this daemon's)."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _clear_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OciresolveError(f"cannot serve on {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise OciresolveError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise OciresolveError(f"{path}: {exc.strerror}") from exc
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a daemon that is gone
        return
    finally:
        probe.close()
    raise OciresolveError(f"another daemon is serving on {path}")
