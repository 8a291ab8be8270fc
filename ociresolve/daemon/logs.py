"""The daemon's own log lines: logfmt (default) or JSON, one line per record, on stderr.

``time`` (RFC 3339, UTC), ``level``, ``msg``, then the record's fields: every value is escaped
so that nothing a container names (a pod name, a path) can forge a line or a field.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Final, Literal, TextIO

import msgspec

from ociresolve.render import logfmt_line

Format = Literal["logfmt", "json"]
LEVELS: Final = ("debug", "info", "warning", "error")

_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)  # a Path, an exception: as text


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class _Formatter(logging.Formatter):
    def __init__(self, output: Format, node: str | None) -> None:
        super().__init__()
        self.output = output
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        fields: list[tuple[str, object]] = [
            ("time", _timestamp(record.created)),
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
            return _ENCODER.encode({k: v for k, v in fields if v is not None}).decode()
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
