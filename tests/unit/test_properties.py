"""Property-based tests: arbitrary input never raises anything but the typed error."""

from __future__ import annotations

import json
import string
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ociresolve import BundleError, CgroupRef, ContainerMeta, normalize, parse_cgroup, read_bundle
from ociresolve.runtimes import containerd, crio

HEX = "0123456789abcdef"
ids = st.text(HEX, min_size=64, max_size=64)
# Text shaped like cgroup paths, so that the interesting branches are reached often.
path_parts = st.one_of(
    st.sampled_from(["kubepods", "kubepods.slice", "besteffort", "burstable", "docker", "ecs"]),
    ids,
    ids.map(lambda i: f"cri-containerd-{i}.scope"),
    ids.map(lambda i: f"crio-conmon-{i}.scope"),
    st.uuids().map(lambda u: f"pod{u}"),
    st.uuids().map(lambda u: f"kubepods-besteffort-pod{str(u).replace('-', '_')}.slice"),
    st.text(string.printable, max_size=20),
)
paths = st.lists(path_parts, max_size=8).map(lambda parts: "/" + "/".join(parts))
lines = st.tuples(st.integers(0, 13), st.text(string.ascii_lowercase + ",=", max_size=12), paths)
files = st.lists(lines.map(lambda t: f"{t[0]}:{t[1]}:{t[2]}"), max_size=14).map("\n".join)


@given(st.one_of(st.text(), paths, files))
@settings(max_examples=600)
def test_parse_cgroup_never_raises(text: str) -> None:
    ref = parse_cgroup(text)
    assert ref is None or isinstance(ref, CgroupRef)


@given(paths)
def test_a_found_container_id_is_a_component_of_the_path(path: str) -> None:
    ref = parse_cgroup(path)
    if ref is not None:
        assert ref.container_id in path


KNOWN_KEYS = sorted(
    {key for table in (containerd.KEYS, crio.KEYS) for keys in table.values() for key in keys}
)
annotations = st.dictionaries(
    st.one_of(st.sampled_from([*KNOWN_KEYS, "io.container.manager"]), st.text(max_size=20)),
    st.one_of(st.text(), st.sampled_from(["sandbox", "container", "true", "cri-o", "libpod"])),
    max_size=12,
)


@given(annotations, st.none() | ids, st.none() | st.text())
def test_normalize_never_raises(
    values: dict[str, str], container_id: str | None, cgroups_path: str | None
) -> None:
    meta = normalize(values, container_id=container_id, cgroups_path=cgroups_path)
    assert meta is None or isinstance(meta, ContainerMeta)


@given(
    st.binary(max_size=512)
    | st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=20,
        ),
    )
)
@settings(max_examples=300)
def test_read_bundle_raises_only_bundle_error(tmp_path_factory: object, content: bytes) -> None:
    directory = Path(tmp_path_factory.mktemp("bundle"))  # type: ignore[attr-defined]
    (directory / "config.json").write_bytes(content)
    try:
        meta = read_bundle(directory)
    except BundleError:
        return
    assert meta is None or isinstance(meta, ContainerMeta)
