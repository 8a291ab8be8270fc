"""The verbose ``info`` of CRI statuses: the real payloads in fixtures/cri/, shapes, garbage."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from fakecri import CRI_FIXTURES, CriCase, cri_cases, info_map
from hypothesis import given, settings
from hypothesis import strategies as st

from ociresolve import load_bundle, normalize
from ociresolve.cri.info import VerboseInfo, parse_info_document, parse_verbose_info

CASES = cri_cases()


def test_every_fixture_file_is_in_the_provenance_table() -> None:
    files = {path.name for path in CRI_FIXTURES.iterdir() if path.name != "PROVENANCE.md"}
    assert {case.file.name for case in CASES} == files
    assert all(case.bundle is not None and case.bundle.is_dir() for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file.name)
def test_fixture_pid(case: CriCase) -> None:
    """The pid PROVENANCE.md names, from the payload as the runtime sent it and as decoded."""
    info = parse_verbose_info(case.info())
    assert info is not None
    assert info.pid == case.pid
    document = parse_info_document(case.document())
    assert document == info
    if case.file.suffix == ".json":  # a whole `crictl inspect` output is accepted too
        whole, _ = json.JSONDecoder().raw_decode(case.file.read_text().strip())
        assert parse_info_document(whole) == info


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file.name)
def test_fixture_spec_normalizes_like_its_bundle(case: CriCase) -> None:
    """The runtime spec in the payload is the bundle case's config.json: the same annotations,
    the same record from them (given the id, which a bundle has from its directory)."""
    info = parse_verbose_info(case.info())
    assert info is not None and case.bundle is not None
    bundle = load_bundle(case.bundle / "config.json")
    assert info.annotations == bundle.annotations
    assert info.cgroups_path == bundle.cgroups_path
    expected = case.expected
    meta = normalize(
        info.annotations, container_id=expected["container_id"], cgroups_path=info.cgroups_path
    )
    assert meta is not None and expected["kubernetes"]
    assert msgspec.structs.asdict(meta) == expected["expected"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file.name)
def test_fixture_in_the_flat_legacy_shape(case: CriCase) -> None:
    """The same document, one JSON entry per field (older cri-o), says the same."""
    document = case.document()
    assert parse_verbose_info(info_map(document, "flat")) == parse_info_document(document)


def test_a_sandbox_id_is_read_from_a_container_document() -> None:
    name = "containerd-crictl-container-info.falcolibs.json"
    case = next(c for c in CASES if c.file.name == name)
    info = parse_verbose_info(case.info())
    assert info is not None
    assert info.sandbox_id == case.expected["expected"]["sandbox_id"]


def test_the_flat_legacy_shape() -> None:
    spec = {
        "annotations": {"io.kubernetes.cri.sandbox-id": "abc", "not-a-string": 1},
        "linux": {"cgroupsPath": "/kubepods/pod1/abc"},
    }
    info = parse_verbose_info({"pid": "123", "runtimeSpec": json.dumps(spec)})
    assert info == VerboseInfo(
        pid=123,
        annotations={"io.kubernetes.cri.sandbox-id": "abc"},
        cgroups_path="/kubepods/pod1/abc",
    )
    assert parse_verbose_info({"pid": "123"}) == VerboseInfo(pid=123)
    assert parse_verbose_info({"pid": "0", "runtimeSpec": "{}"}) == VerboseInfo(pid=None)
    assert parse_verbose_info({"pid": "0"}) == VerboseInfo(pid=None)
    assert parse_verbose_info({"sandboxID": '"abc"', "pid": "7"}) == VerboseInfo(
        pid=7, sandbox_id="abc"
    )


def test_a_pid_of_zero_or_less_is_unknown() -> None:
    for pid in (0, -1, -31353):
        info = parse_verbose_info({"info": json.dumps({"pid": pid, "runtimeSpec": {}})})
        assert info == VerboseInfo(pid=None)


DEEP = "[" * 100_000
GARBAGE: list[dict[str, Any]] = [
    {},
    {"info": ""},
    {"info": "not json"},
    {"info": "{"},
    {"info": '{"pid": 12'},
    {"info": "[1, 2, 3]"},
    {"info": '[{"pid": 5}]'},
    {"info": "null"},
    {"info": "42"},
    {"info": '"a string"'},
    {"info": "true"},
    {"info": '{"pid": true}'},
    {"info": '{"pid": false, "runtimeSpec": {}}'},
    {"info": '{"pid": "123"}'},
    {"info": '{"pid": 1.5}'},
    {"info": '{"pid": 1e400}'},
    {"info": '{"pid": NaN}'},
    {"info": '{"pid": ' + "9" * 5000 + "}"},
    {"info": '{"pid": null, "runtimeSpec": null}'},
    {"info": '{"runtimeSpec": []}'},
    {"info": '{"runtimeSpec": "{}"}'},
    {"info": '{"runtimeSpec": {"annotations": [], "linux": "x"}}'},
    {"info": '{"runtimeSpec": {"annotations": null, "linux": {"cgroupsPath": 5}}}'},
    {"info": '{"runtimeSpec": {"annotations": {"a": 1, "b": null, "c": [], "d": {}}}}'},
    {"info": '{"pid": 5, "sandboxID": 7}'},
    {"info": '{"pid": 5, "sandboxID": ""}'},
    {"info": '{"pid": 5, "sandboxID": ["x"]}'},
    {"info": DEEP},
    {"info": '{"runtimeSpec": ' + DEEP},
    {"info": '{"a":' * 100_000},
    {"pid": DEEP, "runtimeSpec": DEEP},
    {"pid": "true"},
    {"pid": "[1]", "runtimeSpec": "[]"},
    {"pid": "", "runtimeSpec": ""},
    {"pid": "not json", "runtimeSpec": "{"},
    {"other": "x", "more": "{}"},
    {"info": "\x00\xff\ud800"},
]


@pytest.mark.parametrize("info", GARBAGE, ids=lambda info: repr(info)[:60])
def test_garbage_never_raises(info: dict[str, Any]) -> None:
    result = parse_verbose_info(info)
    assert result is None or isinstance(result, VerboseInfo)
    if result is not None:
        assert result.pid is None or result.pid > 0
        assert all(isinstance(v, str) for v in result.annotations.values())
        assert result.cgroups_path is None or isinstance(result.cgroups_path, str)
        assert result.sandbox_id is None or isinstance(result.sandbox_id, str)


def test_garbage_gives_no_information() -> None:
    assert parse_verbose_info({"info": '{"pid": true}'}) == VerboseInfo(pid=None)
    assert parse_verbose_info({"info": '{"pid": "123"}'}) is None
    assert parse_verbose_info({"info": "[1, 2, 3]"}) is None
    assert parse_verbose_info({"info": "not json"}) is None
    assert parse_verbose_info({"info": DEEP}) is None
    spec = {"annotations": {"a": 1, "c": "ok"}, "linux": {"cgroupsPath": 5}}
    info = parse_verbose_info({"info": json.dumps({"runtimeSpec": spec})})
    assert info == VerboseInfo(annotations={"c": "ok"})


@pytest.mark.parametrize(
    "document",
    [None, [], [{"pid": 5}], "text", 5, True, {}, {"pid": True}, {"info": []}, {"info": "{}"}],
    ids=repr,
)
def test_parse_info_document_garbage(document: Any) -> None:
    result = parse_info_document(document)
    assert result is None or result.pid is None


def test_parse_info_document_shapes() -> None:
    assert parse_info_document({"pid": 7}) == VerboseInfo(pid=7)
    assert parse_info_document({"status": {}, "info": {"pid": 7}}) == VerboseInfo(pid=7)
    assert parse_info_document({"info": {"pid": 0, "runtimeSpec": {}}}) == VerboseInfo()


INFO_KEYS = st.sampled_from(["info", "pid", "runtimeSpec", "sandboxID"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["pid", "runtimeSpec", "annotations", "linux", "cgroupsPath", "x"])
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), st.text()))
@settings(max_examples=300)
def test_arbitrary_maps_never_raise(info: dict[str, str]) -> None:
    result = parse_verbose_info(info)
    assert result is None or isinstance(result, VerboseInfo)


@given(st.dictionaries(INFO_KEYS | st.text(max_size=5), JSON_VALUES.map(json.dumps) | st.text()))
@settings(max_examples=300)
def test_arbitrary_json_entries_never_raise(info: dict[str, str]) -> None:
    result = parse_verbose_info(info)
    assert result is None or result.pid is None or result.pid > 0


@given(JSON_VALUES)
@settings(max_examples=300)
def test_arbitrary_documents_never_raise(document: Any) -> None:
    parse_info_document(document)
    result = parse_verbose_info({"info": json.dumps(document)})
    assert result is None or result.pid is None or result.pid > 0
