"""Reading an OCI bundle's ``config.json``: only the fields ociresolve uses, with a size cap.

Of the mounts, only what a mount's source reaches is kept: the runtime sockets
(``ociresolve.mounts``), a small tuple computed here once, not the list of mounts."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from typing import Final

import msgspec

from ociresolve.errors import BundleError
from ociresolve.ids import is_runtime_id
from ociresolve.model import ContainerMeta
from ociresolve.mounts import REACHING_PATHS, reached_sockets
from ociresolve.runtimes import normalize

__all__ = [
    "CONFIG_NAME",
    "MAX_CONFIG_BYTES",
    "Bundle",
    "find_bundles",
    "load_bundle",
    "read_bundle",
]

CONFIG_NAME: Final = "config.json"
# Real specs are 5-30 KB (a long environment can make them a few hundred); anything near this
# is not a runtime's config.json.
MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024
_FIRST_READ: Final = 64 * 1024
# containers-storage (cri-o, podman) keeps the bundle in <id>/userdata.
_STORAGE_BUNDLE_DIR: Final = "userdata"


class _Linux(msgspec.Struct):
    cgroupsPath: str | None = None  # the OCI spec's name


class _Mount(msgspec.Struct):
    source: str | None = None
    type: str | None = None


class _Spec(msgspec.Struct):
    """The part of an OCI runtime spec ociresolve reads; every other field is skipped unparsed."""

    annotations: dict[str, str] | None = None
    linux: _Linux | None = None
    mounts: list[_Mount] | None = None


class _BindMount(msgspec.Struct):
    source: str | None = None
    type: str | None = None
    options: list[str] | None = None


class _Mounts(msgspec.Struct):
    """The spec's mounts with their options: decoded again only when a mount may reach a
    runtime socket."""

    mounts: list[_BindMount] | None = None


_decoder: Final = msgspec.json.Decoder(_Spec)
_mounts_decoder: Final = msgspec.json.Decoder(_Mounts)
_REACHING: Final = frozenset(REACHING_PATHS)
_DOT_SEGMENT: Final = re.compile(r"/\.\.?(?:/|\0)")


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    """What a bundle's ``config.json`` and its location say, before normalization.

    ``container_id`` is the id its directory carries (containerd ``<id>/``, containers-storage
    ``<id>/userdata/``) when it has the shape of a runtime-generated id, else ``None``.
    ``sockets``: the runtime sockets its bind mounts reach (``ociresolve.mounts``).
    """

    path: str
    container_id: str | None
    annotations: dict[str, str]
    cgroups_path: str | None
    sockets: tuple[str, ...] = ()


def load_bundle(path: str | os.PathLike[str], *, container_id: str | None = None) -> Bundle:
    """Read a bundle directory or its ``config.json``.

    Raises ``BundleError``; its ``retryable`` is true for an empty, truncated or vanished
    file, which a runtime that is still writing it will close again shortly.
    """
    config = os.fspath(path)
    data = _read_config(config)
    if data is None and os.path.basename(config) == CONFIG_NAME:
        raise BundleError(config, "not a regular file")  # a directory named config.json
    if data is None:  # a bundle directory
        config = os.path.join(config, CONFIG_NAME)
        data = _read_config(config)
        if data is None:
            raise BundleError(config, "not a regular file")
    if not data.strip():
        raise BundleError(config, "empty file (still being written?)", retryable=True)
    try:
        spec = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BundleError(config, f"not an OCI runtime spec: {exc}") from exc
    except msgspec.DecodeError as exc:
        truncated = "truncated" in str(exc)
        reason = "truncated JSON (still being written?)" if truncated else f"invalid JSON: {exc}"
        raise BundleError(config, reason, retryable=truncated) from exc
    except UnicodeDecodeError as exc:  # msgspec decodes strings without wrapping this one
        raise BundleError(config, f"invalid UTF-8: {exc}") from exc
    except RecursionError as exc:
        # msgspec walks even the fields it skips, one C call per level: arrays or objects nested
        # about a thousand deep (no runtime writes more than ten) exhaust the recursion limit.
        raise BundleError(config, "JSON nested too deeply") from exc
    return Bundle(
        path=config,
        container_id=container_id or _directory_id(config),
        annotations=spec.annotations or {},
        cgroups_path=spec.linux.cgroupsPath if spec.linux else None,
        sockets=_sockets(spec.mounts, data) if spec.mounts else (),
    )


def read_bundle(
    path: str | os.PathLike[str], *, container_id: str | None = None
) -> ContainerMeta | None:
    """The normalized record of a bundle, or ``None`` if it is not a Kubernetes container.

    ``container_id`` overrides the id taken from the bundle's directory name.
    Raises ``BundleError`` (see ``load_bundle``).
    """
    bundle = load_bundle(path, container_id=container_id)
    return normalize(
        bundle.annotations, container_id=bundle.container_id, cgroups_path=bundle.cgroups_path
    )


def _sockets(mounts: list[_Mount], data: bytes) -> tuple[str, ...]:
    """The runtime sockets the spec's bind mounts reach (``ociresolve.mounts``).

    Most specs reach none, which a few scans of their mount sources tell: none is a path that
    reaches a socket, names a socket file or needs normalizing (``//``, a ``.`` or ``..``
    segment, a trailing ``/``). Only otherwise are the mounts decoded again, with their options,
    and matched one by one: that costs a few microseconds, the scans a fraction of one.
    """
    sources = [m.source for m in mounts if m.source]
    if _REACHING.isdisjoint(sources):
        joined = "\0".join(sources) + "\0"
        if not (
            ".sock\0" in joined
            or "//" in joined
            or "/\0" in joined
            or ("/." in joined and _DOT_SEGMENT.search(joined))
        ):
            return ()
    try:
        found = _mounts_decoder.decode(data).mounts or []
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return ()  # options of the wrong shape: the record stands without this fact
    return reached_sockets((m.source, m.type, m.options) for m in found if m.source)


def find_bundles(root: str | os.PathLike[str]) -> Iterator[str]:
    """Every ``config.json`` below ``root``, without descending into a bundle (its ``rootfs``
    is a container's file system) and without following symbolic links."""
    stack = [os.fspath(root)]
    while stack:
        directory = stack.pop()
        config = os.path.join(directory, CONFIG_NAME)
        if os.path.isfile(config):
            yield config
            continue
        try:
            with os.scandir(directory) as entries:
                subdirectories = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        stack.extend(reversed(subdirectories))


def _read_config(path: str) -> bytes | None:
    """The file's bytes, or ``None`` when ``path`` is a directory."""
    try:
        # O_NONBLOCK: a FIFO planted as config.json must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise BundleError(path, "no such file", retryable=True) from exc
    except OSError as exc:
        raise BundleError(path, exc.strerror or str(exc)) from exc
    try:
        # One read covers any real config.json, and a directory fails with EISDIR: fstat only
        # when the file is empty (a FIFO reads empty) or larger than that read.
        data = os.read(fd, _FIRST_READ)
        if len(data) in (0, _FIRST_READ) and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(path, "not a regular file")
        if len(data) == _FIRST_READ:
            while chunk := os.read(fd, _FIRST_READ):
                data += chunk
                if len(data) > MAX_CONFIG_BYTES:
                    raise BundleError(path, f"larger than {MAX_CONFIG_BYTES} bytes")
        return data
    except IsADirectoryError:
        return None
    except BlockingIOError as exc:  # a FIFO (or another non-file) with no writer data
        raise BundleError(path, "not a regular file") from exc
    except OSError as exc:
        retryable = exc.errno in (errno.ENOENT, errno.ESTALE)
        raise BundleError(path, exc.strerror or str(exc), retryable=retryable) from exc
    finally:
        os.close(fd)


def _directory_id(config: str) -> str | None:
    directory = os.path.dirname(config)
    name = os.path.basename(directory)
    if name in ("", ".", ".."):
        directory = os.path.dirname(os.path.abspath(config))
        name = os.path.basename(directory)
    if name == _STORAGE_BUNDLE_DIR:
        name = os.path.basename(os.path.dirname(directory))
    return name if is_runtime_id(name) else None
