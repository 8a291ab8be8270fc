"""``ociresolve.inspect_bundles``: each path given, in turn, as results and errors."""

from __future__ import annotations

import json
from pathlib import Path

import ociresolve

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bundles"
CRIO = FIXTURES / "cri-o" / "2023-02-container-coredns-ig-blog"
PODMAN = FIXTURES / "podman" / "2021-09-standalone-container-inspect-docs"


def test_results_and_errors_in_the_order_given(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    paths = [
        str(CRIO),
        str(tmp_path / "missing"),
        str(PODMAN / "config.json"),
        str(tmp_path / "empty"),
        str(tmp_path / "broken"),
    ]
    crio, missing, podman, empty, broken = ociresolve.inspect_bundles(paths)

    assert crio.error is None and crio.meta is not None
    assert crio.path == str(CRIO / "config.json")
    assert crio.meta.pod_name == "coredns-6d4b75cb6d-4mtdm"
    assert (crio.runtime, crio.container_id) == ("cri-o", crio.meta.container_id)

    assert missing.error == f"{missing.path}: no such file or directory"
    assert missing.path == str(tmp_path / "missing")

    assert (podman.meta, podman.error, podman.runtime) == (None, None, "podman")

    assert empty.error == f"{tmp_path / 'empty'}: no OCI bundle (config.json) found below it"

    assert broken.meta is None and broken.error is not None
    assert str(tmp_path / "broken" / "config.json") in broken.error


def test_a_tree_in_name_order(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"annotations": {}}))
    found = list(ociresolve.inspect_bundles([str(tmp_path)]))
    assert [Path(f.path).parent.name for f in found] == ["a", "b"]
    assert all(f.meta is None and f.error is None for f in found)


def test_lazily() -> None:
    results = ociresolve.inspect_bundles(["/no/such/path", str(CRIO)])
    assert next(results).error is not None  # before the second path is looked at
