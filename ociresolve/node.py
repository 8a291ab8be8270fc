"""One-shot questions about this node's containers (``ociresolve lookup`` and ``list``, scripts):
asked of the node daemon (``ociresolve serve``) when it answers, else answered from one scan of
the bundles on disk. Each answer says which (``via``).

A long-running consumer wants a ``Resolver`` (its own live index) or a ``RemoteResolver`` (a copy
of the daemon's) instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import msgspec

from ociresolve.api.client import DaemonClient, LookupResult
from ociresolve.entries import read_entry
from ociresolve.errors import BundleError, DaemonUnavailable, OciresolveError, ProcessNotFound
from ociresolve.hostpaths import HostPaths
from ociresolve.model import ContainerMeta, IndexedContainer, StandaloneContainer, Step
from ociresolve.resolver import Resolver

Via = Literal["daemon", "scan"]


class PidAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """Who process ``pid`` is.

    ``meta`` and its ``source`` (``index``, ``bundle``, ``cri``) when it runs in a Kubernetes
    container; else ``container_id`` is the container its cgroup names (one nobody knows as a
    Kubernetes container), or ``None`` for a host process. ``runtime`` names the container's
    runtime when known, Kubernetes or not: with no ``meta``, the process runs in a container of
    that runtime that is not a Kubernetes one (``"podman"``). ``init_pid`` is the container's
    init process when known. ``via`` says who answered; ``steps`` what was tried, with timings:
    the daemon's own steps only with ``explain``, a scan's always.
    """

    pid: int
    via: Via
    container_id: str | None
    meta: ContainerMeta | None = None
    source: str | None = None
    runtime: str | None = None
    init_pid: int | None = None
    steps: list[Step] = msgspec.field(default_factory=list)


class NodeContainers(msgspec.Struct, frozen=True, kw_only=True):
    """The node's containers, in one order whoever answered: by pod namespace and name, each
    pod's sandbox first, then its containers by name."""

    via: Via
    containers: list[IndexedContainer]


class Node:
    """This node, as one-shot callers see it: each call asks the node daemon, and when it does
    not answer (not running, too slow) scans the node once and forgets it. Constructing one
    opens nothing.

    ``host_root``, ``runtime_roots``, ``cri`` and ``cri_socket`` are the scan's, as for a
    ``Resolver``. ``daemon``: ``False`` never asks the daemon; ``True`` always does first;
    ``None`` (the default) does when ``daemon_socket`` is given, or when neither ``host_root``
    nor ``runtime_roots`` is (the daemon answers for the node as it is, not for another root).
    ``daemon_socket`` defaults to ``$OCIRESOLVE_SOCKET``, else the daemon's default socket.
    """

    def __init__(
        self,
        *,
        host_root: str = "/",
        runtime_roots: Sequence[str] | None = None,
        cri: bool = True,
        cri_socket: str | None = None,
        daemon: bool | None = None,
        daemon_socket: str | None = None,
    ) -> None:
        self.host_root = host_root
        self.runtime_roots = None if runtime_roots is None else list(runtime_roots)
        self.cri = cri
        self.cri_socket = cri_socket
        if daemon is None:
            daemon = daemon_socket is not None or (host_root == "/" and runtime_roots is None)
        self.asks_daemon = daemon
        self.daemon_socket = daemon_socket

    def lookup_pid(self, pid: int, *, explain: bool = False) -> PidAnswer:
        """The container process ``pid`` runs in (see ``PidAnswer``); ``explain`` asks the
        daemon for its steps too.

        Raises ``ProcessNotFound`` when there is no such process, ``OciresolveError`` when the
        daemon or the scan fails otherwise.
        """
        steps: list[Step] = []
        if self.asks_daemon:
            answer = self._ask_daemon(pid, explain, steps)
            if answer is not None:
                return answer
        return self._scan_pid(pid, steps)

    def containers(self) -> NodeContainers:
        """Every container on the node (those in their grace period included, from the
        daemon). Raises ``OciresolveError`` when the daemon refuses."""
        if self.asks_daemon:
            client = DaemonClient(self.daemon_socket)
            try:
                records = client.containers()
            except DaemonUnavailable:
                pass  # not running: scan the node once
            else:
                return NodeContainers(via="daemon", containers=_ordered(records))
            finally:
                client.close()
        resolver = self._resolver()
        try:
            records = resolver.scan().containers()
        finally:
            resolver.close()
        return NodeContainers(via="scan", containers=_ordered(records))

    # -- the two ways ------------------------------------------------------------------------

    def _ask_daemon(self, pid: int, explain: bool, steps: list[Step]) -> PidAnswer | None:
        """The daemon's answer; ``None`` (with a step saying why) when it does not answer."""
        started = time.perf_counter()
        client = DaemonClient(self.daemon_socket)
        try:
            result = client.lookup_pid(pid, explain=explain)
        except DaemonUnavailable as exc:
            steps.append(
                Step.since("daemon", f"{exc.reason}; scanning the node once instead", started)
            )
            return None
        finally:
            client.close()
        steps.append(Step.since("daemon", f"{client.socket}: answered", started))
        steps.extend(result.steps)
        answer = _from_daemon(pid, result, steps)
        if answer.meta is None and answer.container_id is not None:
            # The daemon's API says only "not found": what is it, then? Its bundle says so.
            other = self._standalone(answer.container_id)
            if other is not None:
                answer = msgspec.structs.replace(answer, runtime=other.runtime, init_pid=other.pid)
        return answer

    def _scan_pid(self, pid: int, steps: list[Step]) -> PidAnswer:
        resolver = self._resolver()
        try:
            explanation = resolver.explain_pid(pid)
            found = explanation.resolution
            record = (
                resolver.container(explanation.container_id)
                if explanation.container_id is not None
                else None
            )
        finally:
            resolver.close()
        steps.extend(explanation.steps)
        other = explanation.standalone
        if found is not None:
            runtime: str | None = found.meta.runtime
            init_pid = record.pid if record is not None else None
        else:
            runtime = None if other is None else other.runtime
            init_pid = None if other is None else other.pid
        return PidAnswer(
            pid=pid,
            via="scan",
            container_id=explanation.container_id,
            meta=found.meta if found is not None else None,
            source=found.source if found is not None else None,
            runtime=runtime,
            init_pid=init_pid,
            steps=steps,
        )

    def _standalone(self, container_id: str) -> StandaloneContainer | None:
        """The container with this id on disk when it is not a Kubernetes one (podman's)."""
        paths = HostPaths(self.host_root, self.runtime_roots)
        for bundle, layout in paths.bundle_candidates(container_id):
            try:
                record = read_entry(paths, bundle, layout).record
            except BundleError:
                continue
            if record is not None:
                return record if isinstance(record, StandaloneContainer) else None
        return None

    def _resolver(self) -> Resolver:
        return Resolver(
            host_root=self.host_root,
            runtime_roots=self.runtime_roots,
            cri=self.cri,
            cri_socket=self.cri_socket,
        )


def _from_daemon(pid: int, result: LookupResult, steps: list[Step]) -> PidAnswer:
    if result.status == "no_such_process":
        raise ProcessNotFound(pid)
    if result.status == "error":
        raise OciresolveError(f"pid {pid}: {result.error or 'lookup failed'}")
    record = result.record
    if record is None:
        return PidAnswer(pid=pid, via="daemon", container_id=result.container_id, steps=steps)
    return PidAnswer(
        pid=pid,
        via="daemon",
        container_id=record.meta.container_id,
        meta=record.meta,
        source=result.source,
        runtime=record.meta.runtime,
        init_pid=record.pid,
        steps=steps,
    )


def _ordered(records: list[IndexedContainer]) -> list[IndexedContainer]:
    return sorted(records, key=_order)


def _order(record: IndexedContainer) -> tuple[str, str, bool, str]:
    meta = record.meta
    return (
        meta.pod_namespace or "",
        meta.pod_name or "",
        meta.container_type != "sandbox",
        meta.container_name or "",
    )
