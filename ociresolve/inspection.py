"""What the OCI bundles at some paths say (``ociresolve inspect``): each ``config.json`` read and
normalized, with the error of each path or bundle that could not be."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import msgspec

from ociresolve.bundle import find_bundles, load_bundle
from ociresolve.errors import BundleError
from ociresolve.model import ContainerMeta
from ociresolve.runtimes import detect_runtime, normalize


class InspectedBundle(msgspec.Struct, frozen=True, kw_only=True):
    """One bundle's ``config.json`` (``path``) and what it says: ``meta`` when it is a
    Kubernetes container, else ``None`` with what is known (``runtime``, ``container_id``).
    With ``error``, ``path`` (a bundle, or a path given) could not be read."""

    path: str
    meta: ContainerMeta | None = None
    runtime: str | None = None
    container_id: str | None = None
    error: str | None = None


def inspect_bundles(paths: Iterable[str]) -> Iterator[InspectedBundle]:
    """Each path in turn: a ``config.json`` file, or a directory to search for bundles (a
    bundle directory, or a tree of them, in name order). Lazily, so a caller prints each result
    as it comes."""
    for path in paths:
        if not os.path.exists(path):
            yield InspectedBundle(path=path, error=f"{path}: no such file or directory")
            continue
        configs = [path] if os.path.isfile(path) else sorted(find_bundles(path))
        if not configs:
            yield InspectedBundle(
                path=path, error=f"{path}: no OCI bundle (config.json) found below it"
            )
        for config in configs:
            yield _inspect(config)


def _inspect(config: str) -> InspectedBundle:
    try:
        bundle = load_bundle(config)
    except BundleError as exc:
        return InspectedBundle(path=exc.path, error=str(exc))
    meta = normalize(
        bundle.annotations, container_id=bundle.container_id, cgroups_path=bundle.cgroups_path
    )
    if meta is None:
        return InspectedBundle(
            path=bundle.path,
            runtime=detect_runtime(bundle.annotations),
            container_id=bundle.container_id,
        )
    return InspectedBundle(
        path=bundle.path, meta=meta, runtime=meta.runtime, container_id=meta.container_id
    )
