"""CRI clients for the deprecation tests, run in containers of the ociresolve image (python3 and
grpcio inside) against the real containerd socket, bind-mounted; and the calls they made.

Three kinds of caller, each writing one JSON line per call (its number, the times just before and
just after it, what the runtime answered):

- ``caller``: a new channel (a new connection) per call, as ``crictl`` does;
- ``persistent_caller(caller(...))``: the same calls through one channel opened before the first
  call and kept, as node agents do;
- ``raw_caller(caller(...))``: the same calls from one process whose main thread names itself
  (``comm``) and speaks HTTP/2 itself over a socket it connects from that thread, so that the
  connect and every send carry that name (gRPC's own threads rename themselves): a tenant calling
  itself ``crictl``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import pytest
from harness import Containerd, ContainerSpec, Pod

IN_CONTAINER = "/run/containerd/containerd.sock"  # the socket dir, bind-mounted
UNIMPLEMENTED = "UNIMPLEMENTED"
V1ALPHA2_VERSION = "/runtime.v1alpha2.RuntimeService/Version"
V1_VERSION = "/runtime.v1.RuntimeService/Version"
VERSION_PATHS = {"v1alpha2": V1ALPHA2_VERSION, "v1": V1_VERSION}  # by the CRI API version
TIMEOUT = 20.0

# A CRI caller, run by python3 in the ociresolve image: CALLS calls of PATH, the k-th at
# START_NS + PHASE + k * PERIOD (CLOCK_REALTIME, shared with the host), each on a new channel
# (a new connection); after each, one JSON line: the call's number, the times just before and
# just after it, and what the runtime answered (or the gRPC status it refused the call with).
# The request is a VersionRequest serialized by hand (field 1, "version"), as any client of
# either API version sends it.
CALLER = r"""
import json, os, time
import grpc
from ociresolve.cri import api_pb2

path, api = os.environ["CRI_PATH"], os.environ["CRI_VERSION"].encode()
request = b"\n" + bytes([len(api)]) + api
start = int(os.environ["START_NS"]) + int(float(os.environ["PHASE"]) * 1e9)
period = float(os.environ["PERIOD"])
for k in range(int(os.environ["CALLS"])):
    delay = (start + int(k * period * 1e9) - time.time_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)
    before = time.time_ns()
    try:
        with grpc.insecure_channel("unix://" + os.environ["SOCKET"]) as channel:
            reply = channel.unary_unary(path)(request, timeout=5)
    except grpc.RpcError as e:
        print(json.dumps({"call": k, "before": before, "after": time.time_ns(),
                          "error": e.code().name}), flush=True)
        continue
    after = time.time_ns()
    version = api_pb2.VersionResponse.FromString(reply)
    print(json.dumps({"call": k, "before": before, "after": after,
                      "runtime": version.runtime_name,
                      "api": version.runtime_api_version}), flush=True)
"""


def caller(
    containerd: Containerd,
    image: str,
    name: str,
    *,
    path: str,
    version: str,
    start_ns: int,
    period: float,
    phase: float = 0.0,
    calls: int = 1,
) -> ContainerSpec:
    return ContainerSpec(
        name,
        ["python3", "-c", CALLER],
        image=image,
        mounts=[containerd.socket_mount("/run/containerd")],
        env={
            "CRI_PATH": path,
            "CRI_VERSION": version,
            "SOCKET": IN_CONTAINER,
            "START_NS": str(start_ns),
            "PHASE": str(phase),
            "PERIOD": str(period),
            "CALLS": str(calls),
        },
    )


def calls_of(pod: Pod, container: str) -> list[dict[str, object]]:
    """The caller's JSON lines so far, from its CRI log (``<time> stdout F <text>``)."""
    try:
        text = pod.log_path(container).read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        _, stream, tag, rest = line.split(" ", 3)
        if stream == "stdout" and tag == "F" and rest.startswith("{"):
            found.append(json.loads(rest))
    return found


def log_of(pod: Pod, container: str) -> str:
    try:
        return pod.log_path(container).read_text()
    except FileNotFoundError:
        return "(no log)"


def wait(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_for_calls(containerd: Containerd, pod: Pod, container: str, calls: int) -> list[dict]:
    """The caller's ``calls`` JSON lines (``"call"`` lines only), waiting for them; fails if
    the caller fails or takes much longer than its schedule allows."""
    container_id = pod.container_id(container)
    deadline = time.monotonic() + TIMEOUT + 60
    while True:
        made = [c for c in calls_of(pod, container) if "call" in c]
        if len(made) >= calls:
            return made
        if time.monotonic() > deadline:
            pytest.fail(f"the client made {len(made)} calls:\n{log_of(pod, container)}")
        status = containerd.cri().container_status(container_id, verbose=False).status
        if status.exit_code != 0:
            pytest.fail(f"the client failed:\n{log_of(pod, container)}")
        time.sleep(0.05)


# A CRI caller that opens ONE channel (one connection) at START_NS + OPEN_PHASE, says so (a JSON
# line: "opened", the time), then makes CALLS calls of PATH through it at START_NS + PHASE + k *
# PERIOD, one JSON line each as CALLER writes, and keeps the channel open HOLD seconds more.
PERSISTENT_CALLER = r"""
import json, os, time
import grpc
from ociresolve.cri import api_pb2

def at(phase):
    delay = (int(os.environ["START_NS"]) + int(phase * 1e9) - time.time_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)

path, api = os.environ["CRI_PATH"], os.environ["CRI_VERSION"].encode()
request = b"\n" + bytes([len(api)]) + api
phase, period = float(os.environ["PHASE"]), float(os.environ["PERIOD"])
at(float(os.environ["OPEN_PHASE"]))
channel = grpc.insecure_channel("unix://" + os.environ["SOCKET"])
grpc.channel_ready_future(channel).result(timeout=10)
print(json.dumps({"opened": time.time_ns()}), flush=True)
call = channel.unary_unary(path)
for k in range(int(os.environ["CALLS"])):
    at(phase + k * period)
    before = time.time_ns()
    reply = call(request, timeout=5)
    after = time.time_ns()
    version = api_pb2.VersionResponse.FromString(reply)
    print(json.dumps({"call": k, "before": before, "after": after,
                      "runtime": version.runtime_name,
                      "api": version.runtime_api_version}), flush=True)
time.sleep(float(os.environ["HOLD"]))
channel.close()
"""


def persistent_caller(
    spec: ContainerSpec, *, open_phase: float, hold: float = 3.0
) -> ContainerSpec:
    """``spec``, a ``caller``, making its calls through one channel opened at START_NS +
    ``open_phase`` and kept ``hold`` seconds after the last call."""
    return _running(spec, PERSISTENT_CALLER, OPEN_PHASE=str(open_phase), HOLD=str(hold))


# A CRI caller whose main thread names itself COMM and then, without gRPC's library (its threads
# rename themselves), speaks HTTP/2 on a unix socket it connects from that thread: CALLS calls of
# PATH at START_NS + PHASE + k * PERIOD, a new connection per call, or one kept (KEEP=1) opened at
# START_NS + OPEN_PHASE; one JSON line per call as CALLER writes ("api" is the version asked:
# the reply's frames are not decoded, only its end is waited for). The request is what any gRPC
# client sends first: the connection preface, an empty SETTINGS frame, one HEADERS frame (HPACK
# literals, never indexed, no Huffman coding) and one DATA frame ending the stream.
RAW_CALLER = r"""
import ctypes, json, os, socket, struct, time

ctypes.CDLL(None).prctl(15, os.environ["COMM"].encode(), 0, 0, 0)  # PR_SET_NAME

def frame(kind, flags, stream, payload):
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return head + struct.pack(">I", stream) + payload

def literal(name, value):
    return b"\0" + bytes([len(name)]) + name + bytes([len(value)]) + value

def at(phase):
    delay = (int(os.environ["START_NS"]) + int(phase * 1e9) - time.time_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)

def connect():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(os.environ["SOCKET"])
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    return sock

def call(sock, stream):
    api = os.environ["CRI_VERSION"].encode()
    message = b"\n" + bytes([len(api)]) + api
    headers = b"".join(literal(n, v) for n, v in (
        (b":method", b"POST"), (b":scheme", b"http"),
        (b":path", os.environ["CRI_PATH"].encode()), (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))
    sock.sendall(frame(1, 4, stream, headers)
                 + frame(0, 1, stream, b"\0" + struct.pack(">I", len(message)) + message))
    buffer = b""
    while True:
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            size = int.from_bytes(buffer[:3], "big")
            kind, flags = buffer[3], buffer[4]
            sid = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            buffer = buffer[9 + size:]
            if kind == 4 and not flags & 1:
                sock.sendall(frame(4, 1, 0, b""))  # acknowledge the server's SETTINGS
            if sid == stream and (flags & 1 or kind == 3):
                return kind != 3
            if kind == 7:
                return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buffer += chunk

keep = os.environ.get("KEEP") == "1"
sock = None
if keep:
    at(float(os.environ["OPEN_PHASE"]))
    sock = connect()
    print(json.dumps({"opened": time.time_ns()}), flush=True)
phase, period = float(os.environ["PHASE"]), float(os.environ["PERIOD"])
for k in range(int(os.environ["CALLS"])):
    at(phase + k * period)
    before = time.time_ns()
    if not keep:
        sock = connect()
    ok = call(sock, 2 * k + 1 if keep else 1)
    after = time.time_ns()
    if not keep:
        sock.close()
    line = {"call": k, "before": before, "after": after}
    line.update({"api": os.environ["CRI_VERSION"]} if ok else {"error": "refused"})
    print(json.dumps(line), flush=True)
if keep:
    time.sleep(float(os.environ["HOLD"]))
    sock.close()
"""


def raw_caller(
    spec: ContainerSpec,
    *,
    comm: str,
    keep: bool = False,
    open_phase: float = 0.0,
    hold: float = 3.0,
) -> ContainerSpec:
    """``spec``, a ``caller``, making its calls from a main thread named ``comm``: a new
    connection per call, or with ``keep`` one opened at START_NS + ``open_phase`` and kept
    ``hold`` seconds after the last call."""
    return _running(
        spec,
        RAW_CALLER,
        COMM=comm,
        KEEP="1" if keep else "0",
        OPEN_PHASE=str(open_phase),
        HOLD=str(hold),
    )


def _running(spec: ContainerSpec, script: str, **env: str) -> ContainerSpec:
    """``spec`` (a ``caller``: its schedule, its socket) running ``script`` instead, with ``env``
    added to its environment."""
    return dataclasses.replace(spec, command=["python3", "-c", script], env={**spec.env, **env})
