"""One escaping policy for every output path: hostile values through render's functions, the
daemon's log lines, the deprecation reporter's lines, ``ociresolve deprecations --json``, the
tracer's lines and ``ociresolve list --json``'s records. Each stays on one line; JSON is printable
ASCII and reads back as the original text; logfmt reads back as the original text."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tracerfakes import event, parse_logfmt

import ociresolve
from ociresolve import render
from ociresolve.daemon import logs
from ociresolve.deprecations import Deprecation, listing
from ociresolve.deprecations import lines as deprecation_lines
from ociresolve.deprecations.correlate import Attribution as DeprecationAttribution
from ociresolve.deprecations.correlate import Identity
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.output import JsonOutput, LogfmtOutput, WallClock

UNDECODABLE = b"\xff\xfe".decode("utf-8", "surrogateescape")  # lone surrogates \udcff\udcfe
HOSTILE = {
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "right-to-left override": "\u202egnp.exe",
    "escape sequence": "\x1b[2J\x1b]0;title\x07",
    "newline": 'x\nlevel=error msg="forged"',
    "carriage return": "x\rpid=1",
    "tab": "a\tb",
    "nul": "a\x00b",
    "undecodable bytes": f"comm{UNDECODABLE}",
    "quote and space": 'a" b',
    "equals": "a=b",
    "del": "a\x7fb",
    "beyond the BMP": "\U0001f600\U000e0001",
    "everything": (f'\u2028\u2029\u202e\x1b\n\r\t\x00{UNDECODABLE}" =\x7f\\ café \U0001f600'),
}
VALUES = pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
CONTAINER_ID = "5fd11616a6a9" + "0" * 52
CLOCK = WallClock(offset_ns=1_750_097_970_123_000_000 - 1_000_000_000)
_PRINTABLE_ASCII = re.compile(r"[ -~]*")


def json_row(text: str) -> dict[str, object]:
    """One JSON line: printable ASCII only, one line however it is split, an object."""
    assert _PRINTABLE_ASCII.fullmatch(text), text
    assert len(text.splitlines()) == 1
    row = json.loads(text)
    assert isinstance(row, dict)
    return row


def logfmt_fields(text: str) -> dict[str, str]:
    """One logfmt line: printable (no control, separator or override), fields read back."""
    assert text.isprintable(), text
    assert len(text.splitlines()) == 1
    return dict(parse_logfmt(text))


def one_line(stream: io.StringIO) -> str:
    written = stream.getvalue()
    assert written.endswith("\n") and written.count("\n") == 1
    return written[:-1]


# -- render ------------------------------------------------------------------------------------


@VALUES
def test_render_json_line(text: str) -> None:
    row = json_row(render.json_line({"value": text, text: 1, "nested": [text, {"k": text}]}))
    assert row == {"value": text, text: 1, "nested": [text, {"k": text}]}


@VALUES
def test_render_logfmt_line(text: str) -> None:
    fields = logfmt_fields(render.logfmt_line([("value", text), ("pid", 7)]))
    assert fields == {"value": text, "pid": "7"}


@given(st.text(st.characters(exclude_categories=())))  # surrogates included
def test_any_text_is_printable_ascii_json_that_reads_back(text: str) -> None:
    assert json_row(render.json_line({"comm": text})) == {"comm": text}


def test_plain_records_are_msgspec_output() -> None:
    record = {"a": "x", "n": 1, "f": 0.5, "none": None, "list": [1, "y"], "on": True}
    assert render.json_line(record) == msgspec.json.encode(record).decode()


def test_values_json_has_no_type_for_are_text() -> None:
    row = json_row(render.json_line({"path": Path("/run/x"), "error": OSError(2, "gone")}))
    assert row == {"path": "/run/x", "error": "[Errno 2] gone"}


def test_undecodable_bytes_are_written_as_msgspec_writes_the_rest() -> None:
    record = {
        "comm": UNDECODABLE,
        "path": Path("/run/x"),
        "nan": math.nan,
        "inf": math.inf,
        "pair": (1, 2),
        "raw": b"\x00",
        "del": "\x7f",
        "emoji": "\U0001f600",
    }
    row = json_row(render.json_line(record))
    assert row == {
        "comm": UNDECODABLE,
        "path": "/run/x",
        "nan": None,
        "inf": None,
        "pair": [1, 2],
        "raw": "AA==",
        "del": "\x7f",
        "emoji": "\U0001f600",
    }


def test_json_escapes_are_the_standard_ones() -> None:
    """The standard library's (``ensure_ascii``), DEL included; astral characters as pairs."""
    text = "\u2028\u202e\x7f\U0001f600é"
    assert render.json_line({"k": text}) == '{"k":"\\u2028\\u202e\\u007f\\ud83d\\ude00\\u00e9"}'


def test_short_id() -> None:
    assert render.short_id(CONTAINER_ID) == "5fd11616a6a9"
    assert render.short_id("") is None and render.short_id(None) is None


# -- the daemon's log lines -------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@VALUES
@pytest.mark.usefixtures("root_logger")
def test_daemon_log_lines(text: str) -> None:
    for output in ("json", "logfmt"):
        stream = io.StringIO()
        logs.configure(output, "info", node=text, stream=stream)
        try:
            raise RuntimeError(text)
        except RuntimeError:
            logging.getLogger(text).exception(
                "lookup of %s", text, extra=logs.fields(pod=text, path=Path(text))
            )
        line = one_line(stream)
        row = json_row(line) if output == "json" else logfmt_fields(line)
        assert (row["msg"], row["node"], row["logger"]) == (f"lookup of {text}", text, text)
        assert (row["pod"], row["path"]) == (text, str(Path(text)))
        assert isinstance(row["error"], str) and row["error"].endswith(f"RuntimeError: {text}")


# -- the deprecation reporter, ociresolve deprecations ----------------------------------------


@VALUES
def test_deprecation_lines(text: str) -> None:
    attribution = DeprecationAttribution(
        deprecation=text,
        identity=Identity(pod_namespace=text, pod_name="web", container=text, comm=text),
        confidence=0.91,
        occurrences=3,
        considered=4,
        evidence=2.7,
        last_seen_ns=1,
    )
    occurrence = deprecation_lines.occurrence_fields(
        time_ns=1, node=text, deprecation=text, last_occurrence_ns=2, existing=True
    )
    client = deprecation_lines.client_fields(attribution, time_ns=1, node=text)
    for fields in (occurrence, client):
        row = json_row(deprecation_lines.render(fields, "json"))
        logfmt = logfmt_fields(deprecation_lines.render(fields, "logfmt"))
        assert row["node"] == logfmt["node"] == text
        assert row["deprecation"] == logfmt["deprecation"] == text
    assert logfmt["pod"] == f"{text}/web" and logfmt["comm"] == logfmt["container"] == text
    assert row["confidence"] == 0.91 and logfmt["confidence"] == "0.91"


@VALUES
def test_deprecations_list(text: str) -> None:
    warning = Deprecation(id=text, message=text, last_occurrence_ns=1_750_097_970_123_000_000)
    stream = io.StringIO()
    listing.write([warning], stream, as_json=True)
    row = json_row(one_line(stream))
    assert row == {"id": text, "message": text, "last_occurrence": "2025-06-16T18:19:30.123Z"}
    stream = io.StringIO()
    listing.write([warning], stream, as_json=False)
    _header, line = stream.getvalue().splitlines()
    assert line.isprintable()


# -- the tracer --------------------------------------------------------------------------------


def _meta(text: str) -> ociresolve.ContainerMeta:
    return ociresolve.ContainerMeta(
        runtime="containerd",
        container_type="container",
        container_id=CONTAINER_ID,
        pod_name=text,
        pod_namespace=text,
        container_name=text,
    )


@VALUES
def test_tracer_lines(text: str) -> None:
    who = Attribution(_meta(text), "index", CONTAINER_ID)
    connect = event(comm=text, address=text)
    stream = io.StringIO()
    JsonOutput(stream, text, CLOCK).connection(connect, who)
    row = json_row(one_line(stream))
    assert (row["pod_namespace"], row["pod_name"], row["container"]) == (text, text, text)
    assert (row["node"], row["comm"], row["address"]) == (text, text, text)
    stream = io.StringIO()
    LogfmtOutput(stream, text, CLOCK).connection(connect, who)
    fields = logfmt_fields(one_line(stream))
    assert (fields["pod"], fields["container"]) == (f"{text}/{text}", text)
    assert (fields["node"], fields["comm"], fields["address"]) == (text, text, text)
    assert fields["container_id"] == "5fd11616a6a9"


@VALUES
def test_tracer_start_lines(text: str) -> None:
    settings = [("sockets", [text, "/run/b.sock"]), ("comm", text)]
    stream = io.StringIO()
    JsonOutput(stream, "n", CLOCK).started(settings)
    row = json_row(one_line(stream))
    assert row["sockets"] == [text, "/run/b.sock"] and row["comm"] == text
    stream = io.StringIO()
    LogfmtOutput(stream, "n", CLOCK).started(settings)
    fields = logfmt_fields(one_line(stream))
    assert fields["sockets"] == f"{text},/run/b.sock" and fields["comm"] == text


# -- ociresolve list --json --------------------------------------------------------------------


@VALUES
def test_list_json_record(text: str) -> None:
    """The record ``ociresolve list --json`` writes: the metadata, pid, cgroup id, bundle."""
    record = msgspec.structs.asdict(_meta(text))
    record.update(pid=7, cgroup_id=12, bundle=text)
    row = json_row(render.json_line(record))
    assert row == {**record, "bundle": text}
