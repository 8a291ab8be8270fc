"""Rendering records for people (aligned tables) and machines (JSON Lines).

Annotation values and process names are untrusted: whatever a container wrote must not be
able to forge a line or steer a terminal, so tables escape every non-printable character.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from ociresolve.ids import SHORT_ID_LENGTH

_encoder = msgspec.json.Encoder()


def printable(value: object) -> str:
    """``value`` as one line of printable text; ``-`` for unknown."""
    if value is None:
        return "-"
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def short_id(container_id: str | None) -> str | None:
    return container_id[:SHORT_ID_LENGTH] if container_id else container_id


def json_line(record: Mapping[str, Any]) -> str:
    return _encoder.encode(record).decode()


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(header)] + [[printable(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
