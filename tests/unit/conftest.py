"""Fixtures of the live-index tests: a fake host on a tmpfs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehost import FakeHost, tmpfs_directory


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    """An empty host root on /dev/shm (a tmpfs, like /run) when writable, else in tmp_path."""
    root, owned = tmpfs_directory(tmp_path)
    try:
        yield FakeHost(root)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
