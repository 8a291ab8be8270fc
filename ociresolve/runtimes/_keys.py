"""The shared mechanism behind every runtime's key table.

A key table maps a field name to the annotation keys that may carry it, best first.
Field names that are ``ContainerMeta`` fields end up in the record; the others
(``log_directory``, ``labels``, ...) are raw material a runtime module decodes itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

KeyTable = Mapping[str, tuple[str, ...]]
Found = dict[str, str]

# Kubelet's own labels, which it sets on every sandbox and container it creates through CRI.
# Runtimes copy them into annotations (cri-o) or JSON blobs. Source: kubernetes
# pkg/kubelet/types/labels.go (KubernetesPodNameLabel, ...), unchanged since 1.5.
KUBELET_LABELS: Final[KeyTable] = {
    "pod_name": ("io.kubernetes.pod.name",),
    "pod_namespace": ("io.kubernetes.pod.namespace",),
    "pod_uid": ("io.kubernetes.pod.uid",),
    "container_name": ("io.kubernetes.container.name",),
}


def pick(annotations: Mapping[str, Any], table: KeyTable, found: Found) -> None:
    """Fill ``found`` with each field of ``table`` not yet known, from the first non-empty key."""
    for field, keys in table.items():
        if field in found:
            continue
        for key in keys:
            value = annotations.get(key)
            if value and isinstance(value, str):
                found[field] = value
                break


Scalar = str | int | float | bool | None
# cri-o's blobs are flat objects (kubelet's labels, a metadata struct of strings and an attempt
# number): decoded as such, a nested value fails at its first bracket instead of being walked,
# however deep a tenant nested it.
_flat_object: Final = msgspec.json.Decoder(dict[str, Scalar])


def json_object(text: str | None) -> dict[str, Scalar]:
    """Decode a flat JSON object stored in an annotation; anything else (another type, a
    nested value) is an empty dict."""
    if not text:
        return {}
    try:
        return _flat_object.decode(text)
    except msgspec.DecodeError:  # ValidationError included
        return {}


def setdefault_str(found: Found, field: str, value: object) -> None:
    """Set ``field`` unless it is known, and only to a non-empty string."""
    if field not in found and isinstance(value, str) and value:
        found[field] = value
