"""Fixtures of the unit tests: a fake host on a tmpfs, a private directory for sockets, and the
daemon API's node: a fake node, a resolver over it and an API server over that (a module may
define its own ``node``, ``resolver`` or ``server``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import Node, make_node, serving, socket_dir
from fakehost import FakeHost, tmpfs_directory

from ociresolve import Resolver
from ociresolve.daemon.server import ApiServer


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


@pytest.fixture
def node(host: FakeHost) -> Node:
    """A fake node (``daemonfakes.make_node``) on ``host``."""
    return make_node(host)


@pytest.fixture
def resolver(node: Node) -> Iterator[Resolver]:
    """A started resolver of ``node`` that keeps a removed container 0.5 s."""
    resolver = node.resolver(grace_period=0.5).start()
    yield resolver
    resolver.close()


@pytest.fixture
def server(resolver: Resolver, sockets: Path) -> Iterator[ApiServer]:
    """The daemon's API over ``resolver``, served on ``<sockets>/api.sock``."""
    with serving(resolver, sockets / "api.sock") as server:
        yield server
