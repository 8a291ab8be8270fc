"""Fuzzing the parsers a tenant feeds: ``read_bundle`` (any bytes, any JSON-shaped document with
deep nesting and huge numbers anywhere), ``normalize``/``normalize_at``/``normalize_cri`` (any
annotations, the runtimes' real keys with any values), ``parse_cgroup`` and the cgroup path
helpers (any text). Nothing but a valid result, ``None`` or a ``BundleError`` may come out."""

from __future__ import annotations

import json
import signal
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ociresolve import BundleError, CgroupRef, ContainerMeta, parse_cgroup, read_bundle
from ociresolve.cgroup import cgroup_dir, pod_uid_from_path
from ociresolve.hostpaths import LAYOUTS
from ociresolve.model import ContainerType
from ociresolve.runtimes import RUNTIMES, normalize, normalize_at, normalize_cri

HEX: Final = "0123456789abcdef"
ids = st.text(HEX, min_size=64, max_size=64)
_FIXTURE_SETTINGS: Final = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- hostile JSON fragments --------------------------------------------------------------------

DEPTHS: Final = (1, 2, 64, 500, 999, 1_000, 1_001, 5_000, 100_000)


def _nested(kind: str, depth: int, closed: bool) -> str:
    opening, closing = ("[", "]") if kind == "[" else ('{"a":', "}")
    inner = "" if kind == "[" else "0"
    return opening * depth + inner + (closing * depth if closed else "")


nested = st.builds(_nested, st.sampled_from("[{"), st.sampled_from(DEPTHS), st.booleans())
huge_numbers = st.one_of(
    st.integers(1, 100_000).map(lambda n: "9" * n),
    st.integers(1, 5_000).map(lambda n: "-" + "1" * n + ".5e-7"),
    st.sampled_from(["1e999999", "-1e999999", "1e-999999", "-0", "0e99999999999999999999"]),
    st.integers(min_value=-(2**200), max_value=2**200).map(str),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
).map(json.dumps)
# Raw JSON text: a scalar, a hostile fragment, or lists and objects of them.
values = st.recursive(
    scalars | huge_numbers | nested,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=8), children, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=6,
)

KNOWN_KEYS: Final = sorted(
    {key for runtime in RUNTIMES for keys in runtime.KEYS.values() for key in keys}
    | {key for runtime in RUNTIMES for key in (*runtime.MARKERS, *runtime.SANDBOX_KEYS)}
    | {"io.container.manager", "io.kubernetes.pod.name", "io.kubernetes.pod.uid"}
)
annotation_keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=20))
# Values as runtimes and tenants write them: plain words, ids, kubelet names, JSON blobs.
annotation_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["sandbox", "container", "true", "cri-o", "libpod", "containerd", "null"]),
    ids,
    st.builds(lambda *p: "k8s_" + "_".join(p), *[st.text("abc_-0", max_size=6)] * 5),
    values,  # a JSON blob (or garbage), deep nesting and huge numbers included
)
any_annotations = st.dictionaries(annotation_keys, annotation_texts, max_size=12)
# cri-o's, with a key or two missing, so that its JSON blobs (any JSON, or not) are decoded.
crio_annotations = st.builds(
    lambda base, blobs, more: {**more, **base, **blobs},
    st.fixed_dictionaries(
        {
            "io.kubernetes.cri-o.ContainerType": st.sampled_from(["container", "sandbox"]),
            "io.kubernetes.cri-o.SandboxID": ids,
            "io.kubernetes.pod.namespace": st.text(max_size=8),
        }
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "io.kubernetes.cri-o.Labels": values,
            "io.kubernetes.cri-o.Metadata": values,
        },
    ),
    any_annotations,
)
annotation_maps = any_annotations | crio_annotations


def _object(fields: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


annotations_json = st.one_of(
    annotation_maps.map(lambda a: _object({k: json.dumps(v) for k, v in a.items()})),
    st.dictionaries(annotation_keys, values, max_size=4).map(_object),  # not all strings
    values,
)
mount = st.fixed_dictionaries(
    {},
    optional={
        "source": st.one_of(
            st.sampled_from(["/run/containerd", "/var/run/", "//run/./crio/crio.sock", "/"]),
            st.text(max_size=30),
        ).map(json.dumps)
        | values,
        "type": st.sampled_from(["bind", "none", "proc"]).map(json.dumps) | values,
        "options": st.lists(st.sampled_from(["rbind", "ro", "bind"]), max_size=3).map(json.dumps)
        | values,
        "extra": values,
    },
).map(_object)
linux = st.fixed_dictionaries(
    {},
    optional={
        "cgroupsPath": st.text(max_size=60).map(json.dumps) | values,
        "resources": values,
        "namespaces": values,
    },
).map(_object)
specs = st.fixed_dictionaries(
    {},
    optional={
        "ociVersion": st.just('"1.0.2"') | values,
        "process": values,
        "annotations": annotations_json,
        "linux": linux | values,
        "mounts": st.lists(mount, max_size=3).map(lambda m: "[" + ",".join(m) + "]") | values,
        "hooks": values,
    },
).map(_object)
documents = st.one_of(
    st.binary(max_size=512),
    specs.map(str.encode),
    values.map(str.encode),
    st.builds(lambda s, n: s.encode()[:n], specs, st.integers(0, 2_000)),  # truncated
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A bundle directory named like a runtime's, so that its id reaches ``normalize``."""
    directory = tmp_path_factory.mktemp("fuzz") / ("ab" * 32)
    directory.mkdir()
    yield directory


def valid_meta(meta: object) -> bool:
    if meta is None:
        return True
    assert isinstance(meta, ContainerMeta)
    assert meta.container_type in get_args(ContainerType)
    fields = msgspec.structs.astuple(meta)
    return all(field is None or isinstance(field, str) for field in fields)


# -- read_bundle -------------------------------------------------------------------------------


@given(documents)
@_FIXTURE_SETTINGS
def test_read_bundle_on_anything_is_a_record_none_or_bundle_error(
    bundle: Path, data: bytes
) -> None:
    (bundle / "config.json").write_bytes(data)
    try:
        meta = read_bundle(bundle)
    except BundleError as exc:
        assert exc.path == str(bundle / "config.json")
        return
    assert valid_meta(meta)


@given(st.sampled_from(["process", "linux", "mounts", "annotations", "hooks"]), nested)
@settings(max_examples=60, deadline=None)
def test_deep_nesting_in_any_field_is_a_bundle_error_or_skipped(
    bundle: Path, field: str, fragment: str
) -> None:
    (bundle / "config.json").write_bytes(_object({field: fragment}).encode())
    try:
        meta = read_bundle(bundle)
    except BundleError as exc:
        assert not exc.retryable or "truncated" in exc.reason
        return
    assert meta is None


# -- normalize -----------------------------------------------------------------------------------

places = st.one_of(st.sampled_from(sorted({layout.runtime for layout in LAYOUTS})), st.text())
maybe_ids = st.none() | ids | st.text(max_size=70)
cgroups_paths = st.none() | st.text(max_size=80) | st.sampled_from(DEPTHS).map(lambda n: "/" * n)


@given(annotation_maps, maybe_ids, cgroups_paths)
@settings(max_examples=400, deadline=None)
def test_normalize_on_any_annotations(
    annotations: dict[str, str], container_id: str | None, cgroups_path: str | None
) -> None:
    meta = normalize(annotations, container_id=container_id, cgroups_path=cgroups_path)
    assert valid_meta(meta)


@given(places, annotation_maps, maybe_ids, cgroups_paths)
@settings(max_examples=400, deadline=None)
def test_normalize_at_on_any_annotations(
    place: str, annotations: dict[str, str], container_id: str | None, cgroups_path: str | None
) -> None:
    found = normalize_at(place, annotations, container_id=container_id, cgroups_path=cgroups_path)
    assert valid_meta(found.meta)
    assert isinstance(found.runtime, str)
    assert isinstance(found.runs, bool)
    assert all(isinstance(conflict, str) for conflict in found.conflicts)
    if found.meta is not None and container_id:
        assert found.meta.container_id == container_id  # the directory's id, whatever is claimed


cri_texts = st.none() | st.text(max_size=30)


@given(
    st.text(max_size=12),
    st.sampled_from(get_args(ContainerType)),
    ids | st.text(min_size=1, max_size=70),
    annotation_maps,
    cgroups_paths,
    st.none() | annotation_maps,
    st.tuples(cri_texts, cri_texts, cri_texts, cri_texts, cri_texts),
)
@settings(max_examples=200, deadline=None)
def test_normalize_cri_on_any_status(
    runtime: str,
    container_type: ContainerType,
    container_id: str,
    annotations: dict[str, str],
    cgroups_path: str | None,
    labels: dict[str, str] | None,
    status: tuple[str | None, ...],
) -> None:
    name, namespace, uid, sandbox_id, image = status
    meta = normalize_cri(
        runtime=runtime,
        container_type=container_type,
        container_id=container_id,
        annotations=annotations,
        cgroups_path=cgroups_path,
        labels=labels,
        name=name,
        namespace=namespace,
        uid=uid,
        sandbox_id=sandbox_id,
        image=image,
    )
    assert valid_meta(meta)
    assert meta.container_id == container_id


# -- cgroup paths --------------------------------------------------------------------------------

cgroup_words = st.one_of(
    st.sampled_from(["kubepods", "kubepods.slice", "burstable", "ecs", "garden", "docker", ":"]),
    ids.map(lambda i: f"crio-{i}.scope"),
    ids.map(lambda i: f"kubepods.slice:cri-containerd:{i}"),
    st.uuids().map(lambda u: f"kubepods-burstable-pod{str(u).replace('-', '_')}.slice"),
    st.text(string.printable + "\0\u2028\u202e", max_size=24),
)
cgroup_texts = st.one_of(
    st.text(),
    st.lists(cgroup_words, max_size=12).map("/".join),
    st.lists(
        st.tuples(st.integers(-1, 99), st.text(max_size=8), st.lists(cgroup_words, max_size=6)),
        max_size=8,
    ).map(lambda lines: "\n".join(f"{h}:{c}:/{'/'.join(p)}" for h, c, p in lines)),
    st.builds(lambda word, n: "/".join([word] * n), cgroup_words, st.sampled_from(DEPTHS)),
)


@given(cgroup_texts)
@settings(max_examples=400, deadline=None)
def test_parse_cgroup_on_any_text(text: str) -> None:
    ref = parse_cgroup(text)
    assert ref is None or isinstance(ref, CgroupRef)
    if ref is not None:
        assert ref.container_id and ref.container_id in text


@given(cgroup_texts)
@settings(max_examples=200, deadline=None)
def test_cgroup_path_helpers_on_any_text(text: str) -> None:
    uid = pod_uid_from_path(text)
    assert uid is None or isinstance(uid, str)
    assert isinstance(cgroup_dir(text), str)


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (not a measurement: what it guards takes milliseconds)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("component", ["a", "ecs", "kubepods", "pod" + "1" * 32])
def test_a_path_of_many_components_is_read_in_one_pass(component: str) -> None:
    """Each component once: a path of 100,000 components took minutes when every component
    looked through the whole path again."""
    path = "/" + "/".join([component] * 100_000)
    with hang_guard(20.0):
        assert parse_cgroup(path) is None
        assert parse_cgroup(f"0::{path}/crio-{'ab' * 32}.scope") is not None
