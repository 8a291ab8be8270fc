"""Fixtures of the end-to-end tests: a short directory for sockets, ``ociresolve serve`` on the
session containerd, the ociresolve image (a module may define its own)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Containerd, DaemonProcess
from harness.ociresolve_image import (
    OCIRESOLVE_IMAGE,
    build_ociresolve_image,
    image_build_requirements,
)


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1":
        pytest.fail(f"e2e: {reason} (OCIRESOLVE_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(f"e2e: {reason}")


@pytest.fixture(scope="module")
def ociresolve_image(containerd: Containerd) -> str:
    """The ociresolve image (python3 and grpcio), built or cached, in the session containerd."""
    _require(image_build_requirements())
    containerd.import_tarball(build_ociresolve_image(), timeout=300)
    return OCIRESOLVE_IMAGE


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory for unix sockets (pytest's tmp paths can exceed 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ociresolve-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(containerd: Containerd, socket_dir: Path) -> Iterator[DaemonProcess]:
    """``ociresolve serve`` on the session containerd, ready; stopped (exit 0) at the end."""
    process = DaemonProcess(
        socket_dir / "ociresolve.sock",
        ["--runtime-root", str(containerd.state_dir), "--cri-socket", str(containerd.socket)],
        enter=containerd.command,
    )
    with process:
        yield process
