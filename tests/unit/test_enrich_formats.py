"""``ociresolve enrich``'s line formats: where each finds an event's pid and cgroup id, how the
pod fields are added, and which lines it refuses to read (passed through unchanged), above all
lines in which a process's own name spells a second key."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ociresolve.enrich.formats import (
    AMBIGUOUS,
    NO_KEY,
    NOT_PARSED,
    OUT_OF_RANGE,
    JsonFormat,
    Keys,
    LogfmtFormat,
    TextFormat,
    Unreadable,
)

FIELDS = [("k8s_namespace", "shop"), ("k8s_pod", "web-5d9f7"), ("k8s_container", "app")]
PID_MAX = 4_194_304


def unreadable(form: JsonFormat | LogfmtFormat | TextFormat, line: bytes) -> str:
    with pytest.raises(Unreadable) as caught:
        form.keys(line)
    return caught.value.reason


# -- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "keys"),
    [
        (b'{"pid": 42, "comm": "curl"}', Keys(42, None)),
        (b'{"cgroup_id": 9876, "comm": "curl"}', Keys(None, 9876)),
        (b'{"pid": 42, "cgroup_id": 18446744073709551615}', Keys(42, 2**64 - 1)),
        (b'{"pid": "42", "cgroup_id": "9876"}', Keys(42, 9876)),  # quoted numbers
        (b'{"pid": null, "cgroup_id": 7}', Keys(None, 7)),
        (b'  {"pid": 42}  ', Keys(42, None)),
        (b'{"comm": "pid", "pid": 42}', Keys(42, None)),  # "pid" as a value, once as a key
        (b'{"comm": "x\\", \\"pid\\": 1", "pid": 42}', Keys(42, None)),  # escaped, in a value
        (b'{"parent": {"pid": 1}, "pid": 42}', Keys(42, None)),  # another object's key
    ],
)
def test_json_keys(line: bytes, keys: Keys) -> None:
    assert JsonFormat().keys(line) == keys


def test_json_nested_paths() -> None:
    form = JsonFormat("proc.pid", "proc.cgroup.id")
    line = b'{"proc": {"pid": 42, "cgroup": {"id": 77}}, "pid": 1}'
    assert form.keys(line) == Keys(42, 77)
    assert unreadable(form, b'{"proc": 42}') == NO_KEY
    assert unreadable(form, b'{"proc": {"pid": [42]}}') == OUT_OF_RANGE


def test_json_one_key_only() -> None:
    assert JsonFormat("", "cgroup").keys(b'{"pid": 1, "cgroup": 5}') == Keys(None, 5)
    assert unreadable(JsonFormat("", "cgroup"), b'{"pid": 1}') == NO_KEY


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"Attaching 1 probe...", NOT_PARSED),
        (b'{"pid": 42', NOT_PARSED),  # half a line
        (b"[1, 2]", NOT_PARSED),
        (b'"pid"', NOT_PARSED),
        (b"", NOT_PARSED),
        (b"[" * 100_000, NOT_PARSED),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, NOT_PARSED),  # beyond msgspec's depth
        (b'{"comm": "x"}', NO_KEY),
        (b'{"pid": 0}', NO_KEY),  # 0 is what tools print for none
        (b'{"pid": 0, "cgroup_id": "0"}', NO_KEY),
        (b'{"pid": -1}', OUT_OF_RANGE),
        (b'{"pid": %d}' % (PID_MAX + 1), OUT_OF_RANGE),
        (b'{"pid": 4.2}', OUT_OF_RANGE),
        (b'{"pid": true}', OUT_OF_RANGE),
        (b'{"pid": "+42"}', OUT_OF_RANGE),
        (b'{"pid": " 42"}', OUT_OF_RANGE),
        (b'{"pid": "4_2"}', OUT_OF_RANGE),
        (b'{"pid": "\xd9\xa4\xd9\xa2"}', OUT_OF_RANGE),  # Arabic-Indic digits
        (b'{"cgroup_id": 18446744073709551616}', OUT_OF_RANGE),
        (b'{"cgroup_id": 1e3}', OUT_OF_RANGE),
    ],
)
def test_json_lines_it_does_not_read(line: bytes, reason: str) -> None:
    assert unreadable(JsonFormat(), line) == reason


@pytest.mark.parametrize(
    "line",
    [
        # A tool that writes JSON with printf, and a process named `x", "pid": 1, "c": "`:
        b'{"pid": 4242, "comm": "x", "pid": 1, "c": ""}',
        b'{"pid": 4242, "cgroup_id": 5, "comm": "x", "cgroup_id": 6}',
        b'{"pid": 4242, "pid": 4242}',  # even the same value: the line is not what it seems
        b'{"pid": 4242, "comm": "x", "p\\u0069d": 1}',  # the key spelled with an escape
        b'{"pid": 4242, "comm": "x", "\\u0070\\u0069\\u0064": 1}',
    ],
)
def test_json_a_key_given_twice_is_ambiguous(line: bytes) -> None:
    assert unreadable(JsonFormat(), line) == AMBIGUOUS


def test_json_a_nested_key_given_twice_is_ambiguous() -> None:
    line = b'{"proc": {"pid": 1, "pid": 2}}'
    assert unreadable(JsonFormat("proc.pid", ""), line) == AMBIGUOUS
    form = JsonFormat("größe", "")
    assert unreadable(form, '{"größe": 1, "größe": 2}'.encode()) == AMBIGUOUS
    assert unreadable(form, '{"größe": 1, "gr\\u00f6\\u00dfe": 2}'.encode()) == AMBIGUOUS
    assert form.keys('{"größe": 7, "x": "\\u00e9"}'.encode()) == Keys(7, None)


def test_json_fields_are_added_without_rewriting_the_line() -> None:
    line = b'{"time": 1.50, "pid": 42,  "comm": "caf\\u00e9"}'
    out = JsonFormat().add(line, FIELDS)
    assert out.startswith(line[:-1])
    assert json.loads(out) == {
        "time": 1.5,
        "pid": 42,
        "comm": "café",
        "k8s_namespace": "shop",
        "k8s_pod": "web-5d9f7",
        "k8s_container": "app",
    }
    assert JsonFormat().add(b"{}", FIELDS[:1]) == b'{"k8s_namespace":"shop"}'
    assert JsonFormat().add(b'{"pid": 1} ', FIELDS[:1]) == b'{"pid": 1,"k8s_namespace":"shop"}'


def test_json_a_field_name_in_a_value_does_not_rewrite_the_line() -> None:
    """A process named k8s_pod: its line keeps its own formatting (1.50 stays 1.50)."""
    line = b'{"time": 1.50, "pid": 42, "comm": "k8s_pod"}'
    assert JsonFormat().add(line, FIELDS).startswith(line[:-1] + b',"k8s_namespace"')


def test_json_fields_replace_the_lines_own() -> None:
    out = JsonFormat().add(b'{"pid": 42, "k8s_pod": "forged"}', FIELDS)
    assert json.loads(out)["k8s_pod"] == "web-5d9f7"
    assert out.count(b"k8s_pod") == 1


def test_json_hostile_values_are_escaped() -> None:
    fields = [("k8s_pod", 'a"}\n{"pid": 1, "x": "\u2028\u202e')]
    out = JsonFormat().add(b'{"pid": 42}', fields)
    assert out.isascii() and b"\n" not in out
    assert json.loads(out)["k8s_pod"] == fields[0][1]


# -- logfmt ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "keys"),
    [
        (b"time=1 pid=42 comm=curl", Keys(42, None)),
        (b'pid="42" cgroup_id=9876', Keys(42, 9876)),
        (b'msg="a pid=1 in a value" pid=42', Keys(42, None)),
        (b'msg="quote \\" pid=1" pid=42 flag', Keys(42, None)),
        (b"pid=42\tcgroup_id=7", Keys(42, 7)),
        (b"cgroup_id=7 pid=", Keys(None, 7)),
    ],
)
def test_logfmt_keys(line: bytes, keys: Keys) -> None:
    assert LogfmtFormat().keys(line) == keys


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"Attaching 1 probe...", NO_KEY),
        (b"time=1 comm=curl", NO_KEY),
        (b'pid=42 msg="unclosed', NOT_PARSED),
        (b'pid=4"2', NOT_PARSED),
        (b"pid=42 comm=x pid=1", AMBIGUOUS),  # a comm of `x pid=1`, written unquoted
        (b"pid=-1", OUT_OF_RANGE),
        (b"pid=42a", OUT_OF_RANGE),
        (b"apid=42", NO_KEY),  # not the key, though it ends with it
    ],
)
def test_logfmt_lines_it_does_not_read(line: bytes, reason: str) -> None:
    assert unreadable(LogfmtFormat(), line) == reason


def test_logfmt_fields_are_appended_escaped() -> None:
    form = LogfmtFormat("tgid", "cg")
    assert form.keys(b"tgid=5 cg=6 pid=9") == Keys(5, 6)
    out = form.add(b"tgid=5 cg=6", [("k8s_pod", "web"), ("k8s_container", 'a b"\nc=1')])
    assert out == b'tgid=5 cg=6 k8s_pod=web k8s_container="a b\\"\\nc=1"'


def test_the_lines_own_text_is_kept_to_its_last_byte() -> None:
    """A name ending in spaces keeps them: the fields come after one more space."""
    assert TextFormat(BPFTRACE).add(b"42 7 name  ", FIELDS[1:2]) == b"42 7 name   k8s_pod=web-5d9f7"
    assert (
        LogfmtFormat().add(b'pid=1 comm="a "', FIELDS[1:2]) == b'pid=1 comm="a " k8s_pod=web-5d9f7'
    )


# -- text --------------------------------------------------------------------------------------

BPFTRACE = r"^(?P<pid>\d+) (?P<cgroup_id>\d+) "


def test_text_groups_hold_the_keys() -> None:
    form = TextFormat(BPFTRACE)
    assert form.keys(b"42 9876 curl") == Keys(42, 9876)
    assert form.keys(b"42 9876 1 2 ") == Keys(42, 9876)  # a comm of "1 2 " comes after
    assert unreadable(form, b"Attaching 1 probe...") == NO_KEY
    assert form.keys(b"0 9876 swapper/0") == Keys(None, 9876)  # 0: no pid (an interrupt)
    assert unreadable(form, b"4194305 9876 curl") == OUT_OF_RANGE
    assert form.add(b"42 9876 curl", FIELDS[1:2]) == b"42 9876 curl k8s_pod=web-5d9f7"
    assert TextFormat(r"pid=(?P<pid>\d+)").keys(b"x pid=7") == Keys(7, None)


def test_text_non_utf8_lines_are_read_as_bytes() -> None:
    assert TextFormat(BPFTRACE).keys(b"42 7 \xff\xfe") == Keys(42, 7)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(?P<pid>", "missing"), (r"^(\d+) ", "names no group"), (r"(?P<cgroup>\d+)", "names no")],
)
def test_text_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextFormat(pattern)


# The plain lines' fast path reads what the full parse reads: keys, or no keys (a line passed
# through; its count may differ, NOT_PARSED for AMBIGUOUS, when it is both).
_LOGFMT_BYTES = st.sampled_from(
    [b" ", b"\t", b"=", b"pid", b"cgroup_id", b"p", b"id", b"1", b"42", b"0", b"x", b"-", b"\\"]
)


def _outcome(read: Callable[[], Keys]) -> Keys | str:
    try:
        return read()
    except Unreadable:
        return "passed"


@settings(max_examples=3000, deadline=None)
@given(st.lists(_LOGFMT_BYTES, max_size=24).map(b"".join))
def test_logfmt_fast_path_reads_what_the_parse_reads(line: bytes) -> None:
    form = LogfmtFormat()
    assert _outcome(lambda: form.keys(line)) == _outcome(lambda: form._parsed_keys(line))
