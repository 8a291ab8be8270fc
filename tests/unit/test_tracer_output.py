"""The tracer's lines: logfmt and JSON fields for containers, host processes, unresolved ones;
start-up and summary lines; forged names that stay inside their own field."""

from __future__ import annotations

import io
import json

import pytest
from tracerfakes import SOCKET, event, parse_logfmt

import ociresolve
from ociresolve.tracer.attribution import HOST, UNRESOLVED, Attribution
from ociresolve.tracer.counts import Counts
from ociresolve.tracer.output import JsonOutput, LogfmtOutput, WallClock

CONTAINER_ID = "5fd11616a6a9" + "0" * 52
META = ociresolve.ContainerMeta(
    runtime="containerd",
    container_type="container",
    container_id=CONTAINER_ID,
    sandbox_id="b15846a6a502" + "1" * 52,
    pod_name="checkout-7d4b9c",
    pod_namespace="shop",
    pod_uid="c6a5f6d2-0000-4000-8000-000000000000",
    container_name="app",
    image="localhost/busybox:1",
)
# Event times are CLOCK_MONOTONIC; this offset puts 1 s of it at 2025-06-16T18:19:30.123Z.
CLOCK = WallClock(offset_ns=1_750_097_970_123_000_000 - 1_000_000_000)


def logfmt_lines(write: object) -> list[list[tuple[str, str]]]:
    assert isinstance(write, io.StringIO)
    return [parse_logfmt(text) for text in write.getvalue().splitlines()]


def test_logfmt_container_line_has_the_original_fields_first() -> None:
    out = io.StringIO()
    LogfmtOutput(out, "node-1", CLOCK).connection(
        event(comm="unixconnect", tgid=28923), Attribution(META, "index", CONTAINER_ID)
    )
    assert out.getvalue() == (
        'time=2025-06-16T18:19:30.123Z level=info msg="containerd socket connection opened" '
        "node=node-1 pod=shop/checkout-7d4b9c container=app comm=unixconnect pid=28923 "
        f"container_id=5fd11616a6a9 family=unix address={SOCKET} source=index\n"
    )


def test_logfmt_host_and_unresolved_lines_name_no_pod() -> None:
    out = io.StringIO()
    output = LogfmtOutput(out, "node-1", CLOCK)
    output.connection(event(comm="sh"), HOST)
    output.connection(event(comm="gone"), UNRESOLVED)
    output.connection(event(comm="foreign"), Attribution(None, "unresolved", "ab" * 32))
    host, gone, foreign = (dict(fields) for fields in logfmt_lines(out))
    assert host["source"] == "host" and "pod" not in host and "container" not in host
    assert gone["source"] == "unresolved" and "container_id" not in gone
    assert foreign["container_id"] == "ab" * 6 and "pod" not in foreign


def test_forged_names_cannot_forge_a_line_or_a_field() -> None:
    forged = ociresolve.ContainerMeta(
        runtime="containerd",
        container_type="container",
        container_id=CONTAINER_ID,
        pod_name='web\ntime=x level=info msg="containerd socket connection opened" pod=kube/etcd',
        pod_namespace='a" container="kube-apiserver',
        container_name="app source=index",
    )
    comm = 'x\r\npid=1 "'
    out = io.StringIO()
    LogfmtOutput(out, "node-1", CLOCK).connection(
        event(comm=comm), Attribution(forged, "index", CONTAINER_ID)
    )
    (fields,) = logfmt_lines(out)
    assert [key for key, _ in fields] == [
        "time",
        "level",
        "msg",
        "node",
        "pod",
        "container",
        "comm",
        "pid",
        "container_id",
        "family",
        "address",
        "source",
    ]
    values = dict(fields)
    assert values["pod"] == f"{forged.pod_namespace}/{forged.pod_name}"
    assert values["container"] == "app source=index"
    assert values["comm"] == comm
    json_out = io.StringIO()
    JsonOutput(json_out, "node-1", CLOCK).connection(
        event(comm=comm), Attribution(forged, "index", CONTAINER_ID)
    )
    (text,) = json_out.getvalue().splitlines()
    assert text.isascii()
    row = json.loads(text)
    assert (row["pod_name"], row["pod_namespace"], row["comm"]) == (
        forged.pod_name,
        forged.pod_namespace,
        comm,
    )


@pytest.mark.parametrize("comm", ["caf\u00e9", "\u2028", "\udcff\udcfe", "\x00\x7f"])
def test_json_escapes_everything_a_line_reader_could_split_on(comm: str) -> None:
    out = io.StringIO()
    JsonOutput(out, "n\u00f6de", CLOCK).connection(event(comm=comm), HOST)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert text[:-1].isascii() and len(text[:-1].splitlines()) == 1
    row = json.loads(text)
    assert row["comm"] == comm and row["node"] == "n\u00f6de"


def test_json_fields() -> None:
    out = io.StringIO()
    output = JsonOutput(out, "node-1", CLOCK)
    output.connection(event(tgid=7, comm="app"), Attribution(META, "bundle", CONTAINER_ID))
    output.connection(event(tgid=8, family="inet6", address="[::1]:10250", port=10250), HOST)
    container, host = (json.loads(text) for text in out.getvalue().splitlines())
    assert container == {
        "time": "2025-06-16T18:19:30.123Z",
        "msg": "containerd socket connection opened",
        "node": "node-1",
        "pod_namespace": "shop",
        "pod_name": "checkout-7d4b9c",
        "container": "app",
        "container_id": "5fd11616a6a9",
        "comm": "app",
        "pid": 7,
        "family": "unix",
        "address": SOCKET,
        "source": "bundle",
    }
    assert host["source"] == "host" and host["family"] == "inet6"
    assert host["pod_name"] is host["pod_namespace"] is host["container"] is None
    assert host["address"] == "[::1]:10250"


def test_start_and_summary_lines() -> None:
    counts = Counts()
    for source in ("index", "index", "cri", "host", "unresolved"):
        counts.add(source)  # type: ignore[arg-type]
    counts.lost, counts.suppressed = 3, 1
    settings = [("family", "unix"), ("sockets", ["/a.sock", "/b sock"]), ("ports", None)]
    out = io.StringIO()
    output = LogfmtOutput(out, "node-1", CLOCK)
    output.started(settings)  # type: ignore[arg-type]
    output.summary(counts)
    output.summary(counts, final=True)
    started, summary, stopped = (dict(fields) for fields in logfmt_lines(out))
    assert started["msg"] == "containerd socket tracer started"
    assert started["sockets"] == "/a.sock,/b sock" and "ports" not in started
    assert summary["msg"] == "containerd socket tracer summary"
    assert stopped["msg"] == "containerd socket tracer stopped"
    for fields in (summary, stopped):
        assert {k: fields[k] for k in ("events", "resolved", "host", "unresolved")} == {
            "events": "5",
            "resolved": "3",
            "host": "1",
            "unresolved": "1",
        }
        assert (fields["lost"], fields["suppressed"]) == ("3", "1")
        assert (fields["source_index"], fields["source_bundle"], fields["source_cri"]) == (
            "2",
            "0",
            "1",
        )
    out = io.StringIO()
    output = JsonOutput(out, "node-1", CLOCK)
    output.started(settings)  # type: ignore[arg-type]
    output.summary(counts, final=True)
    started_row, stopped_row = (json.loads(t) for t in out.getvalue().splitlines())
    assert started_row["sockets"] == ["/a.sock", "/b sock"] and started_row["ports"] is None
    assert stopped_row["events"] == 5 and stopped_row["lost"] == 3


def test_wall_clock_follows_the_monotonic_clock() -> None:
    clock = WallClock()
    assert clock.text(clock.now_ns())[:4].isdigit()
    assert CLOCK.text(1_000_000_000 + 999_999) == "2025-06-16T18:19:30.123Z"
    assert CLOCK.text(1_001_000_000) == "2025-06-16T18:19:30.124Z"
    # Four digits of year, as RFC 3339 wants (strftime's %Y has no leading zeros on glibc).
    assert WallClock(offset_ns=-61_000_000_000 * 10**9).text(0) == "0036-12-26T11:33:20.000Z"


def test_an_empty_container_id_is_no_container_id() -> None:
    out = io.StringIO()
    LogfmtOutput(out, "node-1", CLOCK).connection(event(), Attribution(None, "unresolved", ""))
    JsonOutput(out, "node-1", CLOCK).connection(event(), Attribution(None, "unresolved", ""))
    logfmt, json_text = out.getvalue().splitlines()
    assert "container_id" not in dict(parse_logfmt(logfmt))
    assert json.loads(json_text)["container_id"] is None
