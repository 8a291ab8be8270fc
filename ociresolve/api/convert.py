"""Records to and from the API's messages (``api.proto``): unknown is ``None`` on our side and
empty (``""`` or 0) on the wire."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from ociresolve.api import api_pb2
from ociresolve.model import ContainerMeta, ContainerType, IndexedContainer
from ociresolve.render import short_id

log = logging.getLogger(__name__)

_TYPES: Final[dict[str, ContainerType]] = {"container": "container", "sandbox": "sandbox"}


def to_message(record: IndexedContainer) -> api_pb2.Container:
    """Raises ``ValueError`` for a record a field cannot hold (a number out of its range, a
    string that is not UTF-8): ``encodable`` and ``to_messages`` never raise."""
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


def encodable(record: IndexedContainer) -> api_pb2.Container | None:
    """``to_message``, or ``None`` (logged) for a record the API's fields cannot hold: one bad
    record must not break a listing or a stream."""
    try:
        return to_message(record)
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        log.warning(
            "container %s left out of the API: it does not fit the API's fields: %s",
            short_id(record.meta.container_id),
            exc,
        )
        return None


def to_messages(records: Iterable[IndexedContainer]) -> tuple[list[api_pb2.Container], int]:
    """The messages of the records that fit the API's fields, and how many did not."""
    messages: list[api_pb2.Container] = []
    skipped = 0
    for record in records:
        message = encodable(record)
        if message is None:
            skipped += 1
        else:
            messages.append(message)
    return messages, skipped


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
