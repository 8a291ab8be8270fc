"""Fixtures of the unit tests: a fake host on a tmpfs, a private directory for sockets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import socket_dir
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


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[Path]:
    """A directory short enough for unix socket paths, removed afterwards."""
    with socket_dir(tmp_path) as directory:
        yield directory
