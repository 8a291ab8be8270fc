"""read_bundle / load_bundle / find_bundles on real files: ids, errors, size cap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ociresolve import BundleError, OciresolveError, find_bundles, load_bundle, read_bundle
from ociresolve.bundle import MAX_CONFIG_BYTES

CID = "c" * 64
SID = "5" * 64
CONTAINERD = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": SID,
    "io.kubernetes.cri.container-name": "web",
}


def write_spec(directory: Path, spec: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.json"
    config.write_text(json.dumps(spec))
    return config


def test_containerd_id_is_the_bundle_directory_name(tmp_path: Path) -> None:
    bundle = tmp_path / "k8s.io" / CID
    write_spec(bundle, {"ociVersion": "1.0.2", "annotations": CONTAINERD})
    for path in (bundle, bundle / "config.json"):
        meta = read_bundle(path)
        assert meta is not None and meta.container_id == CID


def test_containers_storage_id_is_above_userdata(tmp_path: Path) -> None:
    bundle = tmp_path / "overlay-containers" / CID / "userdata"
    write_spec(bundle, {"annotations": CONTAINERD})
    assert load_bundle(bundle).container_id == CID


def test_directory_names_that_are_not_ids_are_not_taken_for_ids(tmp_path: Path) -> None:
    write_spec(tmp_path / "my-copy", {"annotations": CONTAINERD})
    assert load_bundle(tmp_path / "my-copy").container_id is None
    assert load_bundle(tmp_path / "my-copy", container_id=CID).container_id == CID


def test_cgroups_path_is_read(tmp_path: Path) -> None:
    uid = "0e886e9a-3879-45f9-b44d-86ef9df03224"
    linux = {"cgroupsPath": f"/kubepods/besteffort/pod{uid}/{CID}", "namespaces": []}
    write_spec(tmp_path / CID, {"annotations": CONTAINERD, "linux": linux, "process": {}})
    meta = read_bundle(tmp_path / CID)
    assert meta is not None and meta.pod_uid == uid


def test_no_annotations_is_not_kubernetes(tmp_path: Path) -> None:
    write_spec(tmp_path / CID, {"ociVersion": "1.0.2", "process": {"args": ["sh"]}})
    assert read_bundle(tmp_path / CID) is None
    assert load_bundle(tmp_path / CID).annotations == {}


@pytest.mark.parametrize("content", [b"", b"  \n", b'{"annotations": {"io.kubernetes.cri.con'])
def test_half_written_file_is_a_retryable_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(BundleError) as info:
        read_bundle(tmp_path)
    assert info.value.retryable
    assert str(tmp_path / "config.json") in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        b"[1, 2, 3]",
        b'{"annotations": {"a": 1}}',
        b'{"annotations": ["x"]}',
        b'{"linux": {"cgroupsPath": 7}}',
        b"\xff\xfe\x00",
        b'{"annotations": {"a": "\xff\xfe"}}',  # invalid UTF-8 inside a string
    ],
)
def test_garbage_is_a_final_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(BundleError) as info:
        read_bundle(tmp_path)
    assert not info.value.retryable
    assert isinstance(info.value, OciresolveError)


def test_missing_file_is_a_retryable_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file") as info:
        read_bundle(tmp_path / "gone")
    assert info.value.retryable


def test_size_cap(tmp_path: Path) -> None:
    padding = "x" * (MAX_CONFIG_BYTES + 1)
    write_spec(tmp_path, {"annotations": CONTAINERD, "process": {"env": [padding]}})
    with pytest.raises(BundleError, match="larger than"):
        read_bundle(tmp_path)


def test_directory_or_fifo_named_config_json_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir" / "config.json").mkdir(parents=True)
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(tmp_path / "dir")
    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(tmp_path)


def test_find_bundles_stops_at_bundles_and_skips_links(tmp_path: Path) -> None:
    task = tmp_path / "io.containerd.runtime.v2.task" / "k8s.io"
    first = write_spec(task / CID, {"annotations": CONTAINERD})
    # A container's rootfs holding its own config.json must not be taken for a bundle.
    write_spec(task / CID / "rootfs" / "app", {})
    second = write_spec(tmp_path / "overlay-containers" / SID / "userdata", {})
    (tmp_path / "loop").symlink_to(tmp_path)
    assert sorted(find_bundles(tmp_path)) == sorted([str(first), str(second)])
    assert list(find_bundles(tmp_path / "missing")) == []
