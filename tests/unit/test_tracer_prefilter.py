"""The kernel-side addrlen pre-filter's bound, computed from the probe's filters (no BPF)."""

from __future__ import annotations

import pytest

from ociresolve.tracer import _wire
from ociresolve.tracer.probe import DEFAULT_SOCKETS, ConnectProbe


def test_default_sockets_need_the_shortest_path_without_its_nul() -> None:
    shortest = min(len(p) for p in DEFAULT_SOCKETS)
    assert ConnectProbe().min_addrlen() == 2 + shortest == 33
    assert ConnectProbe()._config().min_addrlen == 33


@pytest.mark.parametrize(
    ("kwargs", "bound"),
    [
        ({"unix_paths": ["/a/b"]}, 2 + 4),
        ({"unix_paths": ["/run/containerd/*"]}, 2 + 16),
        ({"unix_paths": ["*"]}, 2),
        ({"unix_paths": ["@name"]}, 2 + 5),  # the leading NUL, then the name
        ({"unix_paths": ["@*"]}, 2),  # the NUL may come from the zero fill
        ({"unix_paths": ["/long/path/x.sock", "/s"]}, 2 + 2),
        ({"families": ("inet",)}, 8),
        ({"families": ("inet6",)}, 24),
        ({"families": ("unix", "inet6")}, 24),
        ({"families": ("unix", "inet", "inet6")}, 8),
        ({"families": ("other",)}, 2),
        ({"families": ("all",)}, 2),
    ],
)
def test_bound_is_the_smallest_matching_addrlen(kwargs: dict[str, object], bound: int) -> None:
    assert ConnectProbe(**kwargs).min_addrlen() == bound  # type: ignore[arg-type]


def test_unix_bound_per_key() -> None:
    assert _wire.unix_min_addrlen(_wire.unix_key("/x.sock")) == 2 + 7
    assert _wire.unix_min_addrlen(_wire.unix_key("/x*")) == 2 + 2
