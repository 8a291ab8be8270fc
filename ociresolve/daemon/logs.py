"""The daemon's own log lines: logfmt (default) or JSON, one line per record, on stderr.

``time`` (RFC 3339, UTC, milliseconds), ``level``, ``msg``, then the record's fields: every
value is escaped by ``ociresolve.render`` so that nothing a container names (a pod name, a
path) can forge a line or a field.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal, TextIO

from ociresolve.render import json_line, logfmt_line, rfc3339_milli

Format = Literal["logfmt", "json"]
LEVELS: Final = ("debug", "info", "warning", "error")


def _time_ns(created: float) -> int:
    """``LogRecord.created`` (float seconds) truncated to the millisecond, in nanoseconds."""
    seconds = int(created)
    return (seconds * 1000 + int((created - seconds) * 1000)) * 1_000_000


class _Formatter(logging.Formatter):
    def __init__(self, output: Format, node: str | None) -> None:
        super().__init__()
        self.output = output
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        fields: list[tuple[str, object]] = [
            ("time", rfc3339_milli(_time_ns(record.created))),
            ("level", record.levelname.lower()),
            ("msg", record.getMessage()),
            ("logger", record.name),
            ("node", self.node),
        ]
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.extend(extra.items())
        if record.exc_info:
            fields.append(("error", self.formatException(record.exc_info)))
        if self.output == "json":
            return json_line({k: v for k, v in fields if v is not None})
        return logfmt_line(fields)


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``log.info("msg", extra=fields(key=value))``: fields after ``msg`` (None left out)."""
    return {"fields": values}


def configure(
    output: Format = "logfmt",
    level: str = "info",
    *,
    node: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every ``logging`` record of level ``level`` and above to ``stream`` (stderr)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(_Formatter(output, node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
