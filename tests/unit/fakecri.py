"""A fake CRI runtime for the CRI fallback tests: a real ``grpc.server`` on a unix socket.

It implements the three ``RuntimeService`` calls the fallback makes (``Version``,
``ContainerStatus``, ``PodSandboxStatus``) from ``ociresolve.cri.api_pb2_grpc``, counts every
call it receives, and is scriptable per test: answers (both verbose ``info`` shapes), error
codes, hangs (until the client gives up), delays, and, on the wire, junk bytes or unknown fields
(``mangle``: the serialized response goes through it, so the server is then registered as a
generic handler of our own instead of the generated one).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf import text_format

from ociresolve.cri import api_pb2, api_pb2_grpc

FIXTURES: Final = Path(__file__).resolve().parents[2] / "fixtures"
CRI_FIXTURES: Final = FIXTURES / "cri"
SERVICE: Final = "runtime.v1.RuntimeService"
# A hanging call is released when the client gives up (its deadline), or after this at most.
HANG_MAX: Final = 10.0
# sockaddr_un.sun_path is 108 bytes.
_SOCKET_PATH_MAX: Final = 100

Mangle = Callable[[str, bytes], bytes]


@dataclass(frozen=True)
class CriCase:
    """A row of ``fixtures/cri/PROVENANCE.md``: a real verbose-info payload, the pid it reports
    (``None``: absent or 0) and the bundle case (``fixtures/bundles/...``) of its runtime spec."""

    file: Path
    pid: int | None
    bundle: Path | None

    @property
    def expected(self) -> dict[str, Any]:
        """The bundle case's ``expected.json``."""
        assert self.bundle is not None
        data: dict[str, Any] = json.loads((self.bundle / "expected.json").read_text())
        return data

    def document(self) -> Any:
        """The decoded verbose ``info`` document (a ``crictl inspect`` output's ``info``)."""
        if self.file.name.endswith(".pb.txt"):
            return json.loads(self.info()["info"])
        value, _ = json.JSONDecoder().raw_decode(self.file.read_text().strip())
        if isinstance(value, dict) and {"status", "info"} <= value.keys():
            return value["info"]
        return value

    def info(self) -> dict[str, str]:
        """The ``info`` map as the runtime sent it: the file's text verbatim where it is the
        document (trailing junk included), else the document re-encoded."""
        if self.file.name.endswith(".pb.txt"):
            return dict(self.sandbox_response().info)
        text = self.file.read_text()
        value, _ = json.JSONDecoder().raw_decode(text.strip())
        if isinstance(value, dict) and {"status", "info"} <= value.keys():
            return {"info": json.dumps(value["info"])}
        return {"info": text}

    def sandbox_response(self) -> api_pb2.PodSandboxStatusResponse:
        """The ``.pb.txt`` file: a real ``PodSandboxStatusResponse`` in protobuf text format
        (with fields our minimal proto does not declare)."""
        return text_format.Parse(
            self.file.read_text(), api_pb2.PodSandboxStatusResponse(), allow_unknown_field=True
        )


def cri_cases() -> list[CriCase]:
    """Every row of ``fixtures/cri/PROVENANCE.md``'s table; a ``.pb.txt`` response shares the
    bundle case of its decoded ``.info.json``."""
    cases: list[CriCase] = []
    for line in (CRI_FIXTURES / "PROVENANCE.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        name, pid, bundle = cells[0].strip("`"), cells[3], cells[4]
        found = re.fullmatch(r"`(bundles/[^`]+)`", bundle)
        cases.append(
            CriCase(
                file=CRI_FIXTURES / name,
                pid=int(pid) if pid.isdigit() and int(pid) > 0 else None,
                bundle=FIXTURES / found.group(1) if found else None,
            )
        )
    bundles = {case.file.name: case.bundle for case in cases}
    return [
        CriCase(
            file=case.file,
            pid=case.pid,
            bundle=bundles.get(case.file.name.replace(".pb.txt", ".info.json")),
        )
        if case.bundle is None
        else case
        for case in cases
    ]


def socket_path(directory: Path, name: str = "cri.sock") -> str:
    """``directory/name``, or a short directory of its own when that is too long for a socket."""
    path = str(directory / name)
    if len(path) <= _SOCKET_PATH_MAX:
        return path
    return os.path.join(tempfile.mkdtemp(prefix="cri-"), name)


def info_map(document: Mapping[str, Any], shape: str = "info") -> dict[str, str]:
    """A verbose ``info`` map: ``{"info": "<JSON>"}`` (containerd, cri-o >= 1.16) or ``flat``,
    one JSON document per field (older cri-o)."""
    if shape == "info":
        return {"info": json.dumps(document)}
    return {key: json.dumps(value) for key, value in document.items()}


def container_response(
    container_id: str,
    *,
    name: str | None = None,
    image: str | None = None,
    labels: Mapping[str, str] | None = None,
    info: Mapping[str, str] | None = None,
) -> api_pb2.ContainerStatusResponse:
    return api_pb2.ContainerStatusResponse(
        status=api_pb2.ContainerStatus(
            id=container_id,
            metadata=api_pb2.ContainerMetadata(name=name or ""),
            state=api_pb2.CONTAINER_RUNNING,
            image=api_pb2.ImageSpec(image=image or ""),
            labels=dict(labels or {}),
        ),
        info=dict(info or {}),
    )


def sandbox_response(
    sandbox_id: str,
    *,
    name: str | None = None,
    namespace: str | None = None,
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    info: Mapping[str, str] | None = None,
) -> api_pb2.PodSandboxStatusResponse:
    return api_pb2.PodSandboxStatusResponse(
        status=api_pb2.PodSandboxStatus(
            id=sandbox_id,
            metadata=api_pb2.PodSandboxMetadata(
                name=name or "", namespace=namespace or "", uid=uid or ""
            ),
            labels=dict(labels or {}),
        ),
        info=dict(info or {}),
    )


class FakeCri(api_pb2_grpc.RuntimeServiceServicer):
    """Answers from ``containers`` / ``sandboxes`` (NOT_FOUND for other ids) unless scripted
    otherwise: ``errors[method]`` (a status code), ``hang`` (methods that never answer before
    the client's deadline), ``delay`` (seconds before every answer)."""

    def __init__(self, socket: str, *, mangle: Mangle | None = None) -> None:
        self.socket = socket
        self.mangle = mangle
        self.runtime_name = "containerd"
        self.containers: dict[str, api_pb2.ContainerStatusResponse] = {}
        self.sandboxes: dict[str, api_pb2.PodSandboxStatusResponse] = {}
        self.errors: dict[str, grpc.StatusCode] = {}
        self.hang: set[str] = set()
        self.delay = 0.0
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server: grpc.Server | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeCri:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        if self.mangle is None:
            api_pb2_grpc.add_RuntimeServiceServicer_to_server(self, server)
        else:
            server.add_generic_rpc_handlers((self._mangling_handler(self.mangle),))
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def heal(self) -> None:
        """No more errors, hangs or delays."""
        self.errors.clear()
        self.hang.clear()
        self.delay = 0.0

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def count(self, method: str) -> int:
        with self._lock:
            return self.calls[method]

    # -- RuntimeService ------------------------------------------------------------------------

    def Version(
        self, request: api_pb2.VersionRequest, context: grpc.ServicerContext
    ) -> api_pb2.VersionResponse:
        self._script("Version", context)
        return api_pb2.VersionResponse(
            version="0.1.0",
            runtime_name=self.runtime_name,
            runtime_version="v0.0.0-fake",
            runtime_api_version="v1",
        )

    def ContainerStatus(
        self, request: api_pb2.ContainerStatusRequest, context: grpc.ServicerContext
    ) -> api_pb2.ContainerStatusResponse:
        self._script("ContainerStatus", context)
        response = self.containers.get(request.container_id)
        if response is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_id!r}")
        return response

    def PodSandboxStatus(
        self, request: api_pb2.PodSandboxStatusRequest, context: grpc.ServicerContext
    ) -> api_pb2.PodSandboxStatusResponse:
        self._script("PodSandboxStatus", context)
        response = self.sandboxes.get(request.pod_sandbox_id)
        if response is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {request.pod_sandbox_id!r}")
        return response

    # -- internals -----------------------------------------------------------------------------

    def _script(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
        if method in self.hang:
            released = threading.Event()
            context.add_callback(released.set)  # the client's deadline passed, or it cancelled
            released.wait(HANG_MAX)
        if self.delay:
            self._stopped.wait(self.delay)
        code = self.errors.get(method)
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def _mangling_handler(self, mangle: Mangle) -> grpc.GenericRpcHandler:
        def serializer(method: str) -> Callable[[Any], bytes]:
            return lambda message: mangle(method, message.SerializeToString())

        requests = {
            "Version": api_pb2.VersionRequest,
            "ContainerStatus": api_pb2.ContainerStatusRequest,
            "PodSandboxStatus": api_pb2.PodSandboxStatusRequest,
        }
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                getattr(self, method),
                request_deserializer=request.FromString,
                response_serializer=serializer(method),
            )
            for method, request in requests.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)
