"""Which runtime sockets a container's bind mounts reach (``ociresolve.mounts``), computed when
its bundle is parsed and carried on its index record: real bundle shapes (containerd's and
cri-o's captured ``config.json`` with a ``hostPath`` mount added as each runtime writes it),
hostile sources, and the parser's shortcut checked against the full rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from fakehost import (
    CONTAINERD_CAPTURE,
    CONTAINERD_ROOT,
    CRIO_ROOT,
    FIXTURES,
    FakeHost,
    Pod,
    containerd_spec,
    crio_spec,
    new_id,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ociresolve import Resolver
from ociresolve.bundle import _decoder, _sockets, load_bundle
from ociresolve.hostpaths import DEFAULT_CRI_SOCKETS
from ociresolve.mounts import (
    MAX_SOCKETS,
    RUNTIME_SOCKETS,
    normalize_host_path,
    reached_sockets,
)

CONTAINERD_SOCK = "/run/containerd/containerd.sock"
K3S_SOCK = "/run/k3s/containerd/containerd.sock"
CRIO_SOCK = "/run/crio/crio.sock"
DOCKER_SOCK = "/run/docker.sock"
CRI_DOCKERD_SOCK = "/run/cri-dockerd.sock"
BELOW_RUN = (CONTAINERD_SOCK, CRI_DOCKERD_SOCK, CRIO_SOCK, DOCKER_SOCK, K3S_SOCK)
CRIO_CAPTURE = FIXTURES / "bundles" / "cri-o" / "1.33-container-kubelet-like-capture"


def containerd_host_path(source: str, destination: str = "/host") -> dict[str, Any]:
    """A ``hostPath`` volume as containerd's CRI plugin writes it into ``config.json``."""
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", "rw"],
    }


def crio_host_path(source: str, destination: str = "/host") -> dict[str, Any]:
    """The same as cri-o 1.33 writes it (the options of its own bind mounts, read-only here)."""
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["ro", "rbind", "rprivate", "bind"],
    }


def spec_with(template: Path, *mounts: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((template / "config.json").read_bytes())
    spec["mounts"] = [*spec["mounts"], *mounts]
    return spec


def sockets_of(
    tmp_path: Path, spec: dict[str, Any], *, indent: int | None = None
) -> tuple[str, ...]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec, indent=indent))
    return load_bundle(config).sockets


def bind(*sources: str) -> list[tuple[str, str | None, list[str] | None]]:
    return [(source, "bind", ["rbind"]) for source in sources]


# -- the rule ----------------------------------------------------------------------------------


def test_the_sockets_are_the_cri_sockets_and_dockers() -> None:
    # One table: the CRI sockets the daemon itself looks for, and the Docker engine's.
    assert set(RUNTIME_SOCKETS) == {*DEFAULT_CRI_SOCKETS, DOCKER_SOCK}
    assert set(BELOW_RUN) == set(RUNTIME_SOCKETS)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/run/containerd", (CONTAINERD_SOCK,)),
        ("/run/containerd/containerd.sock", (CONTAINERD_SOCK,)),
        ("/var/run/containerd", (CONTAINERD_SOCK,)),
        ("/var/run/containerd/containerd.sock", (CONTAINERD_SOCK,)),
        ("/run/k3s", (K3S_SOCK,)),
        ("/run/k3s/containerd", (K3S_SOCK,)),
        ("/run/crio", (CRIO_SOCK,)),
        ("/var/run/crio/crio.sock", (CRIO_SOCK,)),
        ("/var/run/docker.sock", (DOCKER_SOCK,)),
        ("/run/cri-dockerd.sock", (CRI_DOCKERD_SOCK,)),
        ("/run", BELOW_RUN),
        ("/var/run", BELOW_RUN),
        ("/", BELOW_RUN),
        # A socket file elsewhere, named as a runtime names its socket.
        ("/srv/containerd/containerd.sock", ("/srv/containerd/containerd.sock",)),
        # Nothing a socket is in.
        ("/var", ()),
        ("/run/containerd/io.containerd.runtime.v2.task", ()),
        ("/run/containerd-other", ()),
        ("/run/containerd.sock.d", ()),
        ("/var/lib/kubelet/pods/x/volumes/kubernetes.io~secret/token", ()),
        ("/run/containers/storage/overlay-containers/x/userdata/.containerenv", ()),
    ],
)
def test_what_a_source_reaches(source: str, expected: tuple[str, ...]) -> None:
    assert reached_sockets(bind(source)) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("//run//containerd/", "/run/containerd"),
        ("/run/./containerd/.", "/run/containerd"),
        ("/run/crio/../containerd", "/run/containerd"),
        ("/var/run/../run/containerd", "/run/containerd"),  # /var/run is /run: its .. is /
        ("/var/./run/containerd", "/run/containerd"),
        ("/var/runner", "/var/runner"),
        ("/x/../../..", "/"),
        ("/..", "/"),
        ("/var/lib/kubelet", "/var/lib/kubelet"),
        ("proc", None),
        ("tmpfs", None),
        ("", None),
        ("/run\0/containerd", None),
        ("/" + "a" * 5000, None),
    ],
)
def test_normalization(source: str, expected: str | None) -> None:
    assert normalize_host_path(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "//run//containerd/",
        "/run/./containerd/.",
        "/run/crio/../containerd",
        "/x/../run/containerd",
    ],
)
def test_unclean_sources_reach_what_they_name(source: str) -> None:
    assert reached_sockets(bind(source)) == (CONTAINERD_SOCK,)


@pytest.mark.parametrize(
    ("kind", "options", "counts"),
    [
        ("bind", ["rbind", "rprivate", "rw"], True),  # containerd
        ("bind", ["ro", "rbind"], True),  # cri-o; read-only: connect() needs no write access
        ("bind", None, True),
        ("none", ["rbind", "ro"], True),  # runc's spelling
        (None, ["bind"], True),
        ("tmpfs", ["nosuid"], False),
        ("none", ["ro"], False),
        (None, None, False),
    ],
)
def test_only_bind_mounts_reach_anything(
    kind: str | None, options: list[str] | None, counts: bool
) -> None:
    assert reached_sockets([("/run/containerd", kind, options)]) == (
        (CONTAINERD_SOCK,) if counts else ()
    )


def test_what_is_kept_is_capped_and_sorted() -> None:
    files = [f"/srv/{k:02d}/docker.sock" for k in range(3 * MAX_SOCKETS)]
    found = reached_sockets(bind(*reversed(files), "/run/containerd", "/run/containerd/"))
    assert len(found) == MAX_SOCKETS
    assert list(found) == sorted(found)
    assert reached_sockets([]) == ()


# -- real bundle shapes ------------------------------------------------------------------------


def test_a_containerd_bundle_with_a_host_path_of_the_socket_directory(tmp_path: Path) -> None:
    spec = spec_with(CONTAINERD_CAPTURE, containerd_host_path("/run/containerd", "/run/containerd"))
    assert sockets_of(tmp_path, spec) == (CONTAINERD_SOCK,)


def test_a_crio_bundle_with_a_read_only_host_path_of_its_socket(tmp_path: Path) -> None:
    spec = spec_with(CRIO_CAPTURE, crio_host_path("/var/run/crio/crio.sock", "/crio.sock"))
    assert sockets_of(tmp_path, spec) == (CRIO_SOCK,)


def test_pretty_printed_and_several_mounts(tmp_path: Path) -> None:
    spec = spec_with(
        CONTAINERD_CAPTURE,
        containerd_host_path("/var/run/docker.sock", "/var/run/docker.sock"),
        containerd_host_path("/run/k3s/containerd/", "/k3s"),
        containerd_host_path("/var/log", "/var/log"),
    )
    assert sockets_of(tmp_path, spec, indent=2) == (DOCKER_SOCK, K3S_SOCK)


def test_a_host_path_that_is_no_bind_mount_reaches_nothing(tmp_path: Path) -> None:
    tmpfs = {"destination": "/run", "type": "tmpfs", "source": "/run", "options": ["nosuid"]}
    assert sockets_of(tmp_path, spec_with(CONTAINERD_CAPTURE, tmpfs)) == ()


@pytest.mark.parametrize("config", sorted(FIXTURES.glob("bundles/*/*/config.json")), ids=str)
def test_no_captured_bundle_mounts_a_socket(config: Path) -> None:
    # Kubernetes' and podman's own mounts (/etc/hosts, resolv.conf, shm, .containerenv, kubelet
    # volumes, containerd's sandbox files below /run/containerd) reach no socket.
    assert load_bundle(config).sockets == ()


def test_mounts_of_a_strange_shape_leave_the_record_without_sockets(tmp_path: Path) -> None:
    spec = spec_with(CONTAINERD_CAPTURE, containerd_host_path("/run/containerd"))
    spec["mounts"][-1]["options"] = [1, 2]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec))
    bundle = load_bundle(config)
    assert bundle.sockets == () and bundle.annotations == spec["annotations"]


def test_the_index_record_carries_the_sockets(host: FakeHost) -> None:
    host.make_roots()
    agent_pod, web_pod = Pod.new("agent-x2x4q", "monitoring"), Pod.new()
    agent, web, crio_agent = new_id(), new_id(), new_id()
    agent_spec = containerd_spec(agent, agent_pod, name="agent")
    agent_spec["mounts"].append(containerd_host_path("/run/containerd", "/run/containerd"))
    crio_agent_spec = crio_spec(crio_agent, Pod.new("collector", "logs"), name="collector")
    crio_agent_spec.setdefault("mounts", []).append(crio_host_path("/var/run/crio"))
    host.write(
        host.containerd_bundle(agent_pod.sandbox_id),
        containerd_spec(agent_pod.sandbox_id, agent_pod, name=None),
    )
    host.write(host.containerd_bundle(agent), agent_spec)
    host.write(host.containerd_bundle(web), containerd_spec(web, web_pod))
    host.write(host.crio_bundle(crio_agent), crio_agent_spec)
    with Resolver(
        host_root=str(host.root), runtime_roots=[CONTAINERD_ROOT, CRIO_ROOT], cri=False
    ) as resolver:
        by_id = {r.meta.container_id: r.sockets for r in resolver.containers()}
    assert by_id == {
        agent_pod.sandbox_id: (),
        agent: (CONTAINERD_SOCK,),
        web: (),
        crio_agent: (CRIO_SOCK,),
    }


# -- the parser's shortcut is the rule ---------------------------------------------------------

_SEGMENTS = ("", ".", "..", "run", "var", "containerd", "k3s", "crio", "containerd.sock")
_SEGMENTS += ("docker.sock", "crio.sock", "x", ".containerenv", "sock")
_sources = st.lists(st.sampled_from(_SEGMENTS), max_size=6).map(lambda parts: "/".join(parts))
_mounts = st.lists(
    st.fixed_dictionaries(
        {
            "source": st.one_of(_sources, st.sampled_from(["proc", "tmpfs", "/", "//"])),
            "type": st.sampled_from(["bind", "none", "tmpfs"]),
            "options": st.sampled_from([["rbind", "rw"], ["ro"], ["bind"], []]),
        }
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(_mounts)
def test_the_parse_finds_what_the_rule_finds(mounts: list[dict[str, Any]]) -> None:
    """The parser skips decoding every mount again when its sources cannot reach a socket:
    that shortcut must never miss one."""
    data = json.dumps({"mounts": mounts}).encode()
    decoded = _decoder.decode(data).mounts
    found = _sockets(decoded, data) if decoded else ()
    expected = reached_sockets(
        (m["source"], m["type"], m["options"]) for m in copy.deepcopy(mounts) if m["source"]
    )
    assert found == expected
