"""A tenant's pod annotations against the identity of pods (issue: hostile tenants).

cri-o copies every pod annotation into the sandbox's ``config.json`` unchanged, its own keys
included (``io.kubernetes.cri-o.ContainerID``, ``SandboxID``, ``ContainerType``) and
``io.container.manager``; it overwrites only ``io.kubernetes.pod.{name,namespace,uid}``. So a
sandbox's annotations are the tenant's, but for those three keys and the keys cri-o writes on
every sandbox (which a tenant can change but not remove). Identity comes from the structure: the
bundle directory's id, the layout's place, the keys a runtime always writes. A claim that
disagrees is counted and logged, never trusted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakehost import (
    CRIO_CAPTURES,
    CRIO_ROOT,
    FIXTURES,
    GRAPH_ROOT,
    STORAGE,
    Capture,
    FakeHost,
    captures,
    new_id,
    wait_until,
)

from ociresolve import ContainerMeta, Resolver
from ociresolve.runtimes import normalize_at

CRIO = captures(CRIO_CAPTURES)
ROOTS = [CRIO_ROOT, GRAPH_ROOT]


def capture(sandbox: bool, kubelet: bool = True) -> Capture:
    name = "kubelet-like" if kubelet else "bare-cri"
    kind = "sandbox" if sandbox else "container"
    return next(c for c in CRIO if c.case.name.startswith(f"1.33-{kind}-") and name in c.case.name)


@pytest.fixture
def node(host: FakeHost) -> FakeHost:
    host.enable_cgroup2()
    (host.crio / STORAGE).mkdir(parents=True)
    host.make_graph_root()
    return host


@pytest.fixture
def resolvers(node: FakeHost) -> Iterator[list[Resolver]]:
    started: list[Resolver] = []
    yield started
    for resolver in started:
        resolver.close()


def start(node: FakeHost, started: list[Resolver]) -> Resolver:
    resolver = Resolver(host_root=str(node.root), runtime_roots=ROOTS, cri=False)
    started.append(resolver)
    return resolver.start()


def lay_out(node: FakeHost, container_id: str, spec: dict[str, Any]) -> None:
    for root in (node.crio, node.graph):
        bundle = root / STORAGE / container_id / "userdata"
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(spec))


def forged(sandbox: Capture, claims: dict[str, str]) -> dict[str, Any]:
    spec = sandbox.spec
    spec["annotations"].update(claims)
    return spec


def test_the_captures_name_a_sandbox_and_a_container_of_each_pod() -> None:
    for kubelet in (True, False):
        assert capture(True, kubelet).expected is not None
        assert capture(False, kubelet).expected is not None


@pytest.mark.parametrize("kubelet", [True, False], ids=["kubelet", "bare-cri"])
def test_a_sandbox_that_says_it_is_a_container_of_another_pod_stays_its_own_sandbox(
    kubelet: bool,
) -> None:
    """The keys cri-o writes on every sandbox (a tenant cannot remove them) say sandbox."""
    sandbox, victim = capture(True, kubelet), capture(True, not kubelet)
    spec = forged(
        sandbox,
        {
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.SandboxID": victim.container_id,
            "io.kubernetes.cri-o.ContainerID": victim.container_id,
        },
    )
    found = normalize_at(
        "cri-o", spec["annotations"], container_id=sandbox.container_id, cgroups_path=None
    )
    assert found.meta == ContainerMeta(**(sandbox.expected or {}))
    assert found.runtime == "cri-o"
    assert len(found.conflicts) == 3, found.conflicts


def test_what_crio_writes_itself_is_no_conflict() -> None:
    for case in CRIO:
        spec = case.spec
        found = normalize_at(
            "cri-o", spec["annotations"], container_id=case.container_id, cgroups_path=None
        )
        assert found.conflicts == (), case.case.name


PLACES = {"containerd": "containerd", "kata": "containerd", "cri-o": "cri-o", "podman": "cri-o"}


def known_ids() -> list[Path]:
    """The captures that know their bundle directory's id."""
    cases = sorted((FIXTURES / "bundles").glob("*/*/expected.json"))
    return [case for case in cases if json.loads(case.read_text())["container_id"]]


@pytest.mark.parametrize("case", known_ids(), ids=lambda p: p.parent.name)
def test_no_captured_bundle_conflicts_with_its_own_id(case: Path) -> None:
    truth = json.loads(case.read_text())
    spec = json.loads((case.parent / "config.json").read_text())
    place = PLACES[case.parent.parent.name]
    found = normalize_at(place, spec.get("annotations") or {}, container_id=truth["container_id"])
    assert found.conflicts == ()


def test_a_manager_claim_is_a_conflict_and_changes_nothing() -> None:
    sandbox = capture(True)
    spec = forged(sandbox, {"io.container.manager": "libpod"})
    found = normalize_at(
        "cri-o", spec["annotations"], container_id=sandbox.container_id, cgroups_path=None
    )
    assert found.meta == ContainerMeta(**(sandbox.expected or {}))
    assert len(found.conflicts) == 1 and "io.container.manager" in found.conflicts[0]


def test_conflicts_are_logged_and_counted_and_nothing_moves(
    node: FakeHost, resolvers: list[Resolver], caplog: pytest.LogCaptureFixture
) -> None:
    """The tenant's sandbox claims the victim's ids and a container type: the victim keeps its
    records and its pid; the tenant's sandbox keeps its own; the watcher counts the claims."""
    victim_sandbox, victim = capture(True), capture(False)
    tenant = new_id()
    for case in (victim_sandbox, victim):
        node.lay_out(case)
        node.run_capture(case)
    resolver = start(node, resolvers)
    before = {r.meta.container_id: r.meta for r in resolver.containers()}

    claims = {
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ContainerID": victim.container_id,
        "io.kubernetes.cri-o.SandboxID": victim_sandbox.container_id,
    }
    spec = forged(capture(True, kubelet=False), claims)
    with caplog.at_level(logging.WARNING, logger="ociresolve"):
        lay_out(node, tenant, spec)
        watcher = resolver.watcher
        assert watcher is not None
        wait_until(lambda: resolver.container(tenant) is not None, what="tenant indexed")
    record = resolver.container(tenant)
    assert record is not None
    assert record.meta.container_type == "sandbox"
    assert record.meta.sandbox_id == tenant
    after = {r.meta.container_id: r.meta for r in resolver.containers()}
    assert {k: v for k, v in after.items() if k != tenant} == before
    assert resolver.lookup_pid(victim.pid or 0) == before[victim.container_id]
    assert watcher.identity_conflicts == 1
    warnings = [r.getMessage() for r in caplog.records if "claims" in r.getMessage()]
    assert warnings and tenant in warnings[0]
