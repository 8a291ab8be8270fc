"""Shared test setup: the e2e/root/bpf markers' requirements, and the real-containerd fixtures.

A test marked ``e2e``, ``root`` or ``bpf`` whose requirements are missing on this machine is
skipped with the reason; with ``OCIRESOLVE_REQUIRE_E2E=1`` (CI on prepared machines) it fails
instead, so a broken machine cannot turn the end-to-end suite into a silent pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from harness import (
    Containerd,
    ImageSet,
    PodFactory,
    bpf_requirements,
    build_images,
    import_images,
    requirements,
    root_requirements,
)

REQUIRE_ENV = "OCIRESOLVE_REQUIRE_E2E"

_MARKER_REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "root": root_requirements,
    "e2e": requirements,
    "bpf": bpf_requirements,
}


def _require(marker: str, reason: str | None) -> None:
    """Skip (or, under OCIRESOLVE_REQUIRE_E2E=1, fail) when ``reason`` is not None."""
    if reason is None:
        return
    message = f"{marker}: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, check in _MARKER_REQUIREMENTS.items():
        if item.get_closest_marker(marker) is not None:
            _require(marker, check())


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """The test image tarball (pause + busybox/unixconnect), built once per session."""
    _require("e2e", requirements())
    return build_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def containerd(
    tmp_path_factory: pytest.TempPathFactory, test_images: ImageSet
) -> Iterator[Containerd]:
    """One private containerd for the session, with the test images imported.

    Its teardown fails the session's last test if pods, shims or cgroups had to be cleaned up
    by force.
    """
    with Containerd(tmp_path_factory.mktemp("ctrd", numbered=True)) as daemon:
        import_images(daemon.socket, test_images)
        yield daemon


@pytest.fixture
def pod_factory(containerd: Containerd) -> Iterator[PodFactory]:
    """Starts pods in the session's containerd; tears down what the test left at its end."""
    factory = PodFactory(containerd.cri())
    try:
        yield factory
    finally:
        factory.close()
