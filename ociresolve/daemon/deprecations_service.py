"""The ``ociresolve.v1.Deprecations`` service: the reporter's standings, who calls containerd's
deprecated APIs, and who could (the containers that mount a runtime socket).

``serve`` registers it only when it runs a reporter (``--report-deprecations``), so it is
never without one; a daemon that does not report answers the service's calls with
UNIMPLEMENTED, which ``DaemonClient`` reads as "not reporting". The answer is built off the API
server's loop, on a thread of the service's own: naming a workload may ask the CRI (once per
pod, with a deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc

from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.deprecations.correlate import Attribution
from ociresolve.deprecations.potential import PotentialClient, potential_clients
from ociresolve.deprecations.reporter import Reporter

if TYPE_CHECKING:
    from ociresolve.resolver import Resolver

Context = grpc.aio.ServicerContext[Any, Any]
Workloads = Callable[[str | None], str | None]


class DeprecationsService(api_pb2_grpc.DeprecationsServicer):
    """What ``reporter`` attributed so far, for ``ApiServer``; with a ``resolver``, also the
    containers of its index that mount a runtime socket and were not attributed (but those in
    ``exclude``: the daemon's own container). ``workloads`` names a container's workload."""

    def __init__(
        self,
        reporter: Reporter,
        *,
        resolver: Resolver | None = None,
        workloads: Workloads | None = None,
        exclude: Collection[str] = (),
    ) -> None:
        self.reporter = reporter
        self.resolver = resolver
        self.workloads = workloads
        self.exclude = exclude
        self._executor: ThreadPoolExecutor | None = None

    def register(self, server: grpc.aio.Server) -> None:
        api_pb2_grpc.add_DeprecationsServicer_to_server(self, server)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ociresolve-deprecations")

    def detach(self) -> None:
        pass

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def DeprecatedApiClients(
        self, request: api_pb2.DeprecatedApiClientsRequest, context: Context
    ) -> api_pb2.DeprecatedApiClientsResponse:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.answer)

    def answer(self) -> api_pb2.DeprecatedApiClientsResponse:
        """The response, built on the calling thread."""
        attributions = self.reporter.clients()
        potential: list[PotentialClient] = []
        omitted = 0
        if self.resolver is not None:
            potential, omitted = potential_clients(
                self.resolver.containers(),
                attributions,
                workloads=self.workloads,
                exclude=self.exclude,
            )
        return api_pb2.DeprecatedApiClientsResponse(
            reporting=True,
            correlating=self.reporter.correlator is not None,
            clients=[_client(a, self._workload(a.container_id)) for a in attributions],
            potential=[_potential(p) for p in potential],
            potential_omitted=omitted,
        )

    def _workload(self, container_id: str | None) -> str | None:
        if self.workloads is None or container_id is None:
            return None
        return self.workloads(container_id)


def _client(attribution: Attribution, workload: str | None) -> api_pb2.DeprecatedApiClient:
    who = attribution.identity
    return api_pb2.DeprecatedApiClient(
        deprecation=attribution.deprecation,
        pod_namespace=who.pod_namespace or "",
        pod_name=who.pod_name or "",
        container=who.container or "",
        comm=who.comm,
        confidence=attribution.confidence,
        occurrences=attribution.occurrences,
        considered=attribution.considered,
        last_seen_unix_nano=attribution.last_seen_ns,
        container_id=attribution.container_id or "",
        pid=attribution.pid or 0,
        workload=workload or "",
    )


def _potential(client: PotentialClient) -> api_pb2.PotentialApiClient:
    return api_pb2.PotentialApiClient(
        pod_namespace=client.pod_namespace or "",
        pod_name=client.pod_name or "",
        container=client.container or "",
        container_id=client.container_id,
        workload=client.workload or "",
        sockets=list(client.sockets),
    )
