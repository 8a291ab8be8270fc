"""logfmt escaping: no value can end a line, add a field or close a quote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tracerfakes import parse_logfmt

from ociresolve.render import logfmt_line as line
from ociresolve.render import logfmt_value as value


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("unixconnect", "unixconnect"),
        ("/run/containerd/containerd.sock", "/run/containerd/containerd.sock"),
        ("shop/checkout-7d4b9c", "shop/checkout-7d4b9c"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("x\ny", '"x\\ny"'),
        ("tab\tcr\r", '"tab\\tcr\\r"'),
        ("\x1b[31mred", '"\\u001b[31mred"'),
        ("\u2028", '"\\u2028"'),  # a line separator to str.splitlines()
        ("\u202egnp.exe", '"\\u202egnp.exe"'),  # right-to-left override
        ("\udcff", '"\\udcff"'),  # an undecodable byte, kept by surrogateescape
        ("café", "café"),  # printable text in any script stays as it is
        ("\U000e0001", '"\\U000e0001"'),
    ],
)
def test_values(text: str, written: str) -> None:
    assert value(text) == written
    assert parse_logfmt(f"k={written}") == [("k", text)]


def test_a_forged_comm_cannot_add_a_line_or_a_field() -> None:
    forged = 'x pod=kube-system/etcd\nlevel=info msg="containerd socket connection opened" pod=a/b'
    written = line([("comm", forged), ("pod", "shop/web")])
    assert "\n" not in written
    assert parse_logfmt(written) == [("comm", forged), ("pod", "shop/web")]


def test_none_is_left_out_and_numbers_are_bare() -> None:
    assert line([("a", None), ("pid", 42), ("b", "x")]) == "pid=42 b=x"


def test_booleans_are_lower_case_as_in_json() -> None:
    assert line([("existing", True), ("final", False)]) == "existing=true final=false"


@given(st.text(), st.text())
def test_any_text_reads_back_as_itself(first: str, second: str) -> None:
    written = line([("comm", first), ("pod", second), ("pid", 1)])
    assert written.isprintable()  # no control or separator character survives
    assert parse_logfmt(written) == [("comm", first), ("pod", second), ("pid", "1")]
