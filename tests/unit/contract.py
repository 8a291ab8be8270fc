"""The record's fields, exactly as the foundation issue fixed them (JSON output uses the same
names): written out here, not derived from the code, so that a change to them fails tests."""

from __future__ import annotations

META_FIELDS = frozenset(
    {
        "runtime",
        "container_type",
        "container_id",
        "sandbox_id",
        "pod_name",
        "pod_namespace",
        "pod_uid",
        "container_name",
        "image",
    }
)
