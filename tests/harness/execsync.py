"""CRI ``ExecSync``, what ``kubectl exec`` becomes, which the package's CRI stubs leave out:
the request's three fields (``ExecSyncRequest``: container_id = 1, cmd = 2, timeout = 3) and
the response's exit code (``ExecSyncResponse`` field 3), encoded by hand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc


class ExecSync:
    """``ExecSync`` calls on ``channel`` (a CRI endpoint's)."""

    METHOD = "/runtime.v1.RuntimeService/ExecSync"

    def __init__(self, channel: grpc.Channel, timeout: int = 30) -> None:
        self.timeout = timeout  # the runtime's, in seconds; the call's deadline is 5 s more
        # No (de)serializers: bytes in, bytes out.
        self._call = channel.unary_unary(
            self.METHOD, request_serializer=None, response_deserializer=None
        )

    def future(self, container_id: str, cmd: Sequence[str]) -> grpc.Future[bytes]:
        request = _string(1, container_id) + b"".join(_string(2, arg) for arg in cmd)
        request += _varint(3 << 3) + _varint(self.timeout)
        return self._call.future(request, timeout=self.timeout + 5)

    @staticmethod
    def exit_code(response: bytes) -> int:
        """Field 3 of ``ExecSyncResponse`` (stdout and stderr, 1 and 2, are skipped)."""
        at, code = 0, 0
        while at < len(response):
            tag, at = _read_varint(response, at)
            if tag & 7 == 2:
                size, at = _read_varint(response, at)
                at += size
            elif tag & 7 == 0:
                value, at = _read_varint(response, at)
                if tag >> 3 == 3:
                    code = value - (1 << 64) if value >= 1 << 63 else value
            else:
                raise ValueError(f"unexpected wire type in ExecSyncResponse: {tag & 7}")
        return code


def exec_sync(socket: Path, container_id: str, cmd: Sequence[str], timeout: int = 10) -> int:
    """Run ``cmd`` in a running container through the CRI on ``socket``; its exit code."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        execs = ExecSync(channel, timeout)
        return execs.exit_code(execs.future(container_id, cmd).result())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _string(field: int, text: str) -> bytes:
    data = text.encode()
    return _varint(field << 3 | 2) + _varint(len(data)) + data
