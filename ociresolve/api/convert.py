"""Records to and from the API's messages (``api.proto``): unknown is ``None`` on our side and
empty (``""`` or 0) on the wire."""

from __future__ import annotations

from typing import Final

from ociresolve.api import api_pb2
from ociresolve.model import ContainerMeta, ContainerType, IndexedContainer

_TYPES: Final[dict[str, ContainerType]] = {"container": "container", "sandbox": "sandbox"}


def to_message(record: IndexedContainer) -> api_pb2.Container:
    meta = record.meta
    return api_pb2.Container(
        runtime=meta.runtime,
        container_type=meta.container_type,
        container_id=meta.container_id or "",
        sandbox_id=meta.sandbox_id or "",
        pod_name=meta.pod_name or "",
        pod_namespace=meta.pod_namespace or "",
        pod_uid=meta.pod_uid or "",
        container_name=meta.container_name or "",
        image=meta.image or "",
        pid=record.pid or 0,
        cgroup_id=record.cgroup_id or 0,
        bundle=record.bundle,
        cgroups_path=record.cgroups_path or "",
        removed=record.removed,
    )


def meta_message(meta: ContainerMeta) -> api_pb2.Container:
    """A container known only by its ``ContainerMeta`` (a CRI answer has no bundle)."""
    return to_message(IndexedContainer(meta=meta, bundle=""))


def to_meta(message: api_pb2.Container) -> ContainerMeta:
    return ContainerMeta(
        runtime=message.runtime or "unknown",
        container_type=_TYPES.get(message.container_type, "container"),
        container_id=message.container_id or None,
        sandbox_id=message.sandbox_id or None,
        pod_name=message.pod_name or None,
        pod_namespace=message.pod_namespace or None,
        pod_uid=message.pod_uid or None,
        container_name=message.container_name or None,
        image=message.image or None,
    )


def to_record(message: api_pb2.Container) -> IndexedContainer:
    return IndexedContainer(
        meta=to_meta(message),
        bundle=message.bundle,
        cgroups_path=message.cgroups_path or None,
        pid=message.pid or None,
        cgroup_id=message.cgroup_id or None,
        removed=message.removed,
    )
