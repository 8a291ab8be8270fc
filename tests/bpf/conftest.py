"""Fixtures of the BPF probe tests: a short directory for socket paths, the storm helper built
once."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

STORM_SOURCE = Path(__file__).with_name("connect_storm.c")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory for socket paths (sun_path holds 107 bytes), removed with what
    the test left in it."""
    directory = Path("/tmp") / f"ocibpf-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    try:
        yield directory
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


@pytest.fixture(scope="session")
def connect_storm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``connect_storm``, compiled with gcc (see its header for the arguments)."""
    binary = tmp_path_factory.mktemp("storm") / "connect_storm"
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(binary), str(STORM_SOURCE)],
        check=True,
        capture_output=True,
    )
    return binary
