"""Every real /proc/<pid>/cgroup file, line and path in fixtures/cgroups/ parses as expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ociresolve import parse_cgroup

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cgroups"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text())


def case_text(case: dict[str, Any]) -> str:
    if "file" in case:
        return (FIXTURES / case["file"]).read_text()
    if "text" in case:
        return str(case["text"])
    return str(case["input"])


def test_fixture_set_covers_every_kind() -> None:
    kinds = {case["kind"] for case in CASES}
    assert {"proc_cgroup_file", "proc_cgroup_line", "cgroup_path", "sysfs_path"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_cgroup_fixture(case: dict[str, Any]) -> None:
    ref = parse_cgroup(case_text(case))
    expected = case["expected"]
    if expected is None:
        assert ref is None
        return
    assert ref is not None
    # Only what the source determines is asserted (see fixtures/cgroups/PROVENANCE.md).
    actual = {key: getattr(ref, key) for key in expected}
    assert actual == expected
