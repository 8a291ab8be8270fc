"""The ``ociresolve.v1.Deprecations`` service: the reporter's standings, who calls containerd's
deprecated APIs.

``serve`` registers it only when it runs a reporter (``--report-deprecations``), so it is
never without one; a daemon that does not report answers the service's calls with
UNIMPLEMENTED, which ``DaemonClient`` reads as "not reporting". The answer is built on the API
server's loop: ``Reporter.clients()`` ranks what the reporter holds in memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.deprecations.correlate import Attribution
from ociresolve.deprecations.reporter import Reporter

Context = grpc.aio.ServicerContext[Any, Any]


class DeprecationsService(api_pb2_grpc.DeprecationsServicer):
    """What ``reporter`` attributed so far, for ``ApiServer`` (which serves it as it is: no
    stream to end, nothing to release)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def register(self, server: grpc.aio.Server) -> None:
        api_pb2_grpc.add_DeprecationsServicer_to_server(self, server)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def detach(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def DeprecatedApiClients(
        self, request: api_pb2.DeprecatedApiClientsRequest, context: Context
    ) -> api_pb2.DeprecatedApiClientsResponse:
        return api_pb2.DeprecatedApiClientsResponse(
            reporting=True,
            correlating=self.reporter.correlator is not None,
            clients=[_client(a) for a in self.reporter.clients()],
        )


def _client(attribution: Attribution) -> api_pb2.DeprecatedApiClient:
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
    )
