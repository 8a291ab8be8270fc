"""The public record has exactly the fields the issue fixed, in order."""

from __future__ import annotations

from contract import META_FIELDS

import ociresolve


def test_container_meta_fields() -> None:
    fields = ociresolve.ContainerMeta.__struct_fields__
    assert set(fields) == META_FIELDS and len(fields) == len(META_FIELDS)
    assert fields[:2] == ("runtime", "container_type")
