"""The daemon's log lines: logfmt or JSON, one line per record, fields after ``msg``, every
value escaped so that nothing a container names can forge a line or a field."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tracerfakes import parse_logfmt

from ociresolve.daemon import logs

HOSTILE = 'evil"\nlevel=error msg="forged" \x1b[2J\u2028\u202e\\ end'


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger's handlers and level, restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    output = io.StringIO()
    try:
        yield output
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    """The lines written, split as a log pipeline splits them (on newlines only)."""
    text = stream.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_logfmt_line(stream: io.StringIO) -> None:
    logs.configure("logfmt", "info", node="node-7", stream=stream)
    logging.getLogger("ociresolve.serve").info(
        "ready", extra=logs.fields(containers=3, scan_ms=1.5, socket="/run/x.sock", tracer=None)
    )
    (line,) = lines(stream)
    fields = dict(parse_logfmt(line))
    assert list(fields) == [
        "time",
        "level",
        "msg",
        "logger",
        "node",
        "containers",
        "scan_ms",
        "socket",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])
    assert (fields["level"], fields["msg"], fields["logger"]) == (
        "info",
        "ready",
        "ociresolve.serve",
    )
    assert (fields["node"], fields["containers"], fields["scan_ms"]) == ("node-7", "3", "1.5")
    assert fields["socket"] == "/run/x.sock"


def test_json_line(stream: io.StringIO) -> None:
    logs.configure("json", "info", node="node-7", stream=stream)
    logging.getLogger("ociresolve.serve").info(
        "ready", extra=logs.fields(containers=3, scan_ms=1.5, tracer=None, on=True)
    )
    (line,) = lines(stream)
    record = json.loads(line)
    assert list(record) == ["time", "level", "msg", "logger", "node", "containers", "scan_ms", "on"]
    assert record["containers"] == 3 and record["scan_ms"] == 1.5 and record["on"] is True
    assert record["level"] == "info" and record["msg"] == "ready"


def test_time_is_truncated_to_the_millisecond(stream: io.StringIO) -> None:
    logs.configure("logfmt", stream=stream)
    handler = logging.getLogger().handlers[0]
    record = logging.makeLogRecord({"msg": "m", "created": 1_750_097_970.123_999})
    assert handler.format(record).startswith("time=2025-06-16T18:19:30.123Z ")
    record = logging.makeLogRecord({"msg": "m", "created": -61_000_000_000.5})
    assert handler.format(record).startswith("time=0036-12-26T11:33:19.500Z ")


def test_booleans_are_lower_case(stream: io.StringIO) -> None:
    logs.configure("logfmt", stream=stream)
    logging.getLogger("x").info("m", extra=logs.fields(on=True, off=False))
    (line,) = lines(stream)
    assert dict(parse_logfmt(line))["on"] == "true" and dict(parse_logfmt(line))["off"] == "false"


def test_no_node_no_field(stream: io.StringIO) -> None:
    logs.configure("logfmt", stream=stream)
    logging.getLogger("x").info("hello")
    assert "node=" not in stream.getvalue()


@pytest.mark.parametrize("output", ["logfmt", "json"])
def test_hostile_values_cannot_forge_a_line(stream: io.StringIO, output: logs.Format) -> None:
    logs.configure(output, "info", stream=stream)
    logging.getLogger("ociresolve.api").warning(
        "lookup of %s", HOSTILE, extra=logs.fields(pod=HOSTILE, path=HOSTILE)
    )
    (line,) = lines(stream)
    assert "\x1b" not in line and "\r" not in line
    if output == "json":
        record = json.loads(line)
        assert record["pod"] == HOSTILE and record["path"] == HOSTILE
        assert record["msg"] == f"lookup of {HOSTILE}"
        assert record["level"] == "warning"
        return
    assert "\u2028" not in line and "\u202e" not in line
    fields = parse_logfmt(line)
    assert dict(fields)["pod"] == HOSTILE
    assert [k for k, _ in fields] == ["time", "level", "msg", "logger", "pod", "path"]
    assert dict(fields)["level"] == "warning"


@pytest.mark.parametrize("output", ["logfmt", "json"])
def test_exceptions_stay_on_one_line(stream: io.StringIO, output: logs.Format) -> None:
    logs.configure(output, "info", stream=stream)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (line,) = lines(stream)
    error = json.loads(line)["error"] if output == "json" else dict(parse_logfmt(line))["error"]
    assert "RuntimeError" in error and "Traceback" in error


@pytest.mark.parametrize("output", ["logfmt", "json"])
def test_values_of_any_type(stream: io.StringIO, output: logs.Format) -> None:
    """A field may be a path, an exception, a tuple: a line is written either way."""
    logs.configure(output, "info", stream=stream)
    logging.getLogger("x").info(
        "values", extra=logs.fields(path=Path("/run/x"), error=OSError(2, "gone"), pair=(1, 2))
    )
    (line,) = lines(stream)
    assert "/run/x" in line
    assert "gone" in line


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ],
)
def test_levels(stream: io.StringIO, level: str, shown: list[str]) -> None:
    assert level in logs.LEVELS
    logs.configure("logfmt", level, stream=stream)
    log = logging.getLogger("ociresolve.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [dict(parse_logfmt(line))["level"] for line in lines(stream)] == shown


def test_configure_twice_keeps_one_handler(stream: io.StringIO) -> None:
    logs.configure("logfmt", stream=stream)
    logs.configure("json", stream=stream)
    logging.getLogger("x").info("once")
    (line,) = lines(stream)
    assert json.loads(line)["msg"] == "once"
