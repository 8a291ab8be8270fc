"""Every captured bundle in fixtures/bundles/ normalizes to its expected record."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

import ociresolve

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bundles"
CASES = sorted(path.parent for path in FIXTURES.glob("*/*/expected.json"))


def test_fixture_set_is_not_empty() -> None:
    runtimes = {case.parent.name for case in CASES}
    assert {"containerd", "cri-o", "podman", "kata"} <= runtimes


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.parent.name}/{case.name}")
def test_bundle_fixture(case: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    meta = ociresolve.read_bundle(case, container_id=expected["container_id"])
    if expected["kubernetes"]:
        assert meta is not None
        assert msgspec.structs.asdict(meta) == expected["expected"]
    else:
        assert meta is None
    bundle = ociresolve.load_bundle(case / "config.json")
    assert ociresolve.detect_runtime(bundle.annotations) == expected["runtime"]
