"""A storm of lookups for a container no runtime root holds looks at the disk once a second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ociresolve
from ociresolve.hostpaths import HostPaths, Layout

UNKNOWN = "f" * 64


def test_unknown_container_is_looked_for_on_disk_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run" / "containerd"
    root.mkdir(parents=True)
    looks: list[str] = []
    original = HostPaths.bundle_candidates

    def counting(self: HostPaths, container_id: str) -> Iterator[tuple[str, Layout]]:
        looks.append(container_id)
        return original(self, container_id)

    monkeypatch.setattr(HostPaths, "bundle_candidates", counting)
    with ociresolve.Resolver(
        host_root=str(tmp_path), runtime_roots=["/run/containerd"], cri=False
    ) as resolver:
        for _ in range(1000):
            assert resolver.lookup_container(UNKNOWN) is None
        assert looks == [UNKNOWN]


def test_without_the_watcher_every_miss_reads_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks: list[str] = []
    original = HostPaths.bundle_candidates

    def counting(self: HostPaths, container_id: str) -> Iterator[tuple[str, Layout]]:
        looks.append(container_id)
        return original(self, container_id)

    monkeypatch.setattr(HostPaths, "bundle_candidates", counting)
    resolver = ociresolve.Resolver(
        host_root=str(tmp_path), runtime_roots=["/run/containerd"], cri=False
    )
    for _ in range(3):
        assert resolver.lookup_container(UNKNOWN) is None
    assert looks == [UNKNOWN] * 3  # one-shot use: nothing else would notice the bundle appear
