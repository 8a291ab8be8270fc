"""Which container runtime sockets a container's bind mounts reach.

A container that mounts a runtime's socket, or a directory holding it, can call that runtime's
APIs whenever it likes: a weekly job is a client of containerd's deprecated API as much as a
daemon that calls it every second, but it is seen calling only once a week. This module says,
from a bundle's ``config.json`` alone, which runtime sockets a container can reach, so that it
is known before it calls. ``ociresolve.bundle`` computes it once, when it parses the bundle, into
a small tuple; the mounts themselves are not kept.

Only bind mounts count (``type: bind``, or a ``bind``/``rbind`` option): a host path reaches the
container only through one. Their sources are host paths that Kubernetes takes from the pod's
``hostPath`` volumes, which a tenant writes: each is normalized (``//``, ``.``, ``..``, a
trailing ``/``) before it is matched, and at most ``MAX_SOCKETS`` are kept. (containerd and
cri-o write the host path with its symbolic links resolved, so ``/var/run/...`` arrives as
``/run/...``; the normalization is a defence, not the usual case.)

A source reaches a socket when it is

- the socket file itself or a directory above it (``/run/containerd``, ``/run``, ``/``), at the
  runtime's default path (``RUNTIME_SOCKETS``); ``/var/run`` is read as ``/run``, which it links
  to on every current distribution;
- or a file named as a runtime names its socket (``containerd.sock``, ...), anywhere: a pod that
  mounts ``/srv/containerd/containerd.sock`` names the socket itself.

A directory elsewhere than the defaults is not looked into (that would cost the parse a ``stat``
per mount). A read-only mount counts too: connecting to a unix socket needs no write access to
the file system it is on.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Final

from ociresolve.hostpaths import DEFAULT_CRI_SOCKETS

__all__ = [
    "MAX_SOCKETS",
    "REACHING_PATHS",
    "RUNTIME_SOCKETS",
    "SOCKET_NAMES",
    "is_bind",
    "normalize_host_path",
    "reached_sockets",
]

# The Docker engine's own socket (moby's default ``unix:///var/run/docker.sock``): not a CRI
# endpoint, but its clients drive a container runtime all the same.
DOCKER_SOCKET: Final = "/run/docker.sock"
# Every runtime socket at its default path: the CRI sockets (containerd, k3s' containerd,
# cri-o, cri-dockerd) and Docker's.
RUNTIME_SOCKETS: Final = (*DEFAULT_CRI_SOCKETS, DOCKER_SOCKET)
# The file names runtimes give their sockets.
SOCKET_NAMES: Final = frozenset(posixpath.basename(path) for path in RUNTIME_SOCKETS)
# A container keeps at most this many sockets (more only from many differently placed files
# named like sockets, which no real pod has).
MAX_SOCKETS: Final = 8
# A longer source is no host path (PATH_MAX).
MAX_SOURCE: Final = 4096
_BIND_OPTIONS: Final = frozenset({"bind", "rbind"})


def _reach(sockets: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each socket's path and every directory above it -> the sockets it holds."""
    below: dict[str, set[str]] = {}
    for socket in sockets:
        path = socket
        while True:
            below.setdefault(path, set()).add(socket)
            if path == "/":
                break
            path = posixpath.dirname(path)
    return {path: tuple(sorted(found)) for path, found in below.items()}


_REACH: Final[Mapping[str, tuple[str, ...]]] = _reach(RUNTIME_SOCKETS)
# Every clean path that reaches a default socket, as written or through /var/run: a source
# that is none of these, names no socket file and needs no normalization reaches nothing.
REACHING_PATHS: Final = tuple(
    sorted({*_REACH, *(f"/var{path}" for path in _REACH if path.startswith("/run"))})
)


def _through_var_run(source: str) -> bool:
    return source.startswith("/var/run") and source[8:9] in ("", "/")


def is_bind(kind: str | None, options: Iterable[str] | None) -> bool:
    """Whether an OCI mount of this ``type`` and ``options`` binds a host path: ``bind``
    (containerd, cri-o, podman), or any type with a ``bind``/``rbind`` option (runc's ``none``)."""
    return kind == "bind" or (options is not None and not _BIND_OPTIONS.isdisjoint(options))


def normalize_host_path(source: str) -> str | None:
    """``source`` as a clean absolute path, ``/var/run`` read as ``/run`` (also where ``..``
    leads through it); ``None`` when it is no host path (relative, as ``proc`` and ``tmpfs``
    are, too long, or holding a NUL)."""
    if not source.startswith("/") or len(source) > MAX_SOURCE or "\0" in source:
        return None
    if not ("//" in source or "/." in source or source.endswith("/") or _through_var_run(source)):
        return source  # clean already, and not through /var/run: the usual case
    parts: list[str] = []
    for part in source.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()  # the root's parent is the root
            continue
        parts.append(part)
        if len(parts) == 2 and parts[0] == "var" and parts[1] == "run":
            parts = ["run"]  # the host's /var/run links to /run: what follows is below /run
    return "/" + "/".join(parts)


def reached_sockets(
    mounts: Iterable[tuple[str, str | None, Iterable[str] | None]],
) -> tuple[str, ...]:
    """The runtime sockets that these mounts (source, type, options) reach, sorted, at most
    ``MAX_SOCKETS`` (see the module's documentation)."""
    found: set[str] = set()
    for source, kind, options in mounts:
        path = normalize_host_path(source)
        if path is None or not is_bind(kind, options):
            continue
        reached = _REACH.get(path)
        if reached is not None:
            found.update(reached)
        elif posixpath.basename(path) in SOCKET_NAMES:
            found.add(path)
    return tuple(sorted(found)[:MAX_SOCKETS])
