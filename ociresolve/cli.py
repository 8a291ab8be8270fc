"""The ``ociresolve`` command: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, TextIO

import msgspec

import ociresolve
from ociresolve.api.client import DEFAULT_SOCKET, DaemonClient, LookupResult
from ociresolve.daemon.options import add_serve_arguments
from ociresolve.errors import DaemonUnavailable
from ociresolve.model import Step
from ociresolve.render import json_line, printable, short_id, table
from ociresolve.tracer.options import add_connect_arguments

EXIT_OK: Final = 0
EXIT_NOT_KUBERNETES: Final = 1
EXIT_ERROR: Final = 2

_INSPECT_COLUMNS: Final = (
    "NAMESPACE",
    "POD",
    "CONTAINER",
    "TYPE",
    "RUNTIME",
    "ID",
    "IMAGE",
    "PATH",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        # `ociresolve ... | head`: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ociresolve",
        description="Which Kubernetes pod and container a PID, cgroup or OCI bundle belongs to.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect",
        help="normalize OCI bundles (a bundle dir, a config.json, or a tree to scan)",
        description="Print one normalized record per OCI bundle. Exit 0 when every bundle is a "
        "Kubernetes container, 1 when some are not, 2 on errors.",
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="one JSON object per line")
    inspect.set_defaults(run=_inspect)

    lookup = commands.add_parser(
        "lookup",
        help="the pod and container a process runs in",
        description="Exit 0 with the record when PID is in a container, 1 when it is a host "
        "process, 2 when there is no such process or on errors.",
    )
    lookup.add_argument("pid", type=int, metavar="PID")
    lookup.add_argument("--json", action="store_true", help="one JSON object")
    lookup.add_argument(
        "--explain", action="store_true", help="also show each step tried, with its timing"
    )
    _daemon_options(lookup)
    _node_options(lookup)
    _cri_options(lookup)
    lookup.set_defaults(run=_lookup)

    listing = commands.add_parser("list", help="the containers on this node")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    _daemon_options(listing)
    _node_options(listing)
    listing.set_defaults(run=_list)

    serve = commands.add_parser(
        "serve",
        help="the node daemon: index the node and serve lookups on a unix socket",
        description="Index the node's containers, keep the index current, and serve lookups "
        "(gRPC, ociresolve/api/api.proto) on a unix socket, with Prometheus metrics and "
        "health checks, until SIGTERM. Exit 2 when it cannot start.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(run=_serve)

    trace = commands.add_parser(
        "trace",
        help="trace system calls with BPF and name the pod of each caller (root)",
        description="Trace system calls with BPF (BCC) and name each caller's pod and container.",
    )
    tracers = trace.add_subparsers(required=True, metavar="TRACER")
    connect = tracers.add_parser(
        "connect",
        help="connect() calls to the containerd socket (or other sockets and ports)",
        description="The containerd socket tracer: one line per connect() to the traced "
        "sockets, naming the caller's pod and container, until SIGINT or SIGTERM. Exit 2 "
        "when BPF cannot run here (not root, no BCC, no kernel headers, no tracefs).",
    )
    add_connect_arguments(connect)
    connect.add_argument(
        "--daemon-socket",
        metavar="PATH",
        help="resolve through the ociresolve daemon on this socket (a local copy of its index) "
        "instead of indexing the node in this process",
    )
    _node_options(connect)
    _cri_options(connect)
    connect.set_defaults(run=_trace_connect)

    deprecations = commands.add_parser(
        "deprecations",
        help="containerd's deprecation warnings (containerd >= 1.7)",
        description="List containerd's deprecation warnings, like `ctr deprecations list`. "
        "Exit 0 when listed (none included), 1 when the runtime has no deprecation warnings "
        "(containerd older than 1.7), 2 when it cannot be reached.",
    )
    deprecations.add_argument("--json", action="store_true", help="one JSON object per line")
    deprecations.add_argument(
        "--containerd-socket",
        metavar="PATH",
        help="containerd's socket, on the host (default: the first of containerd's and k3s' "
        "sockets that exists)",
    )
    deprecations.add_argument(
        "--timeout", type=float, default=2.0, metavar="SECONDS", help="deadline (default: 2)"
    )
    deprecations.add_argument(
        "--clients",
        action="store_true",
        help="instead, the clients the daemon attributed the warnings to (`serve "
        "--report-deprecations --trace-connect`), most confident first",
    )
    deprecations.add_argument(
        "--daemon-socket",
        metavar="PATH",
        help=f"with --clients: the daemon's socket [OCIRESOLVE_SOCKET] (default: {DEFAULT_SOCKET})",
    )
    deprecations.add_argument(
        "--host-root",
        default="/",
        metavar="DIR",
        help="where the host's file systems are mounted (default: /)",
    )
    deprecations.set_defaults(run=_deprecations)

    report = commands.add_parser(
        "report-deprecations",
        help="report containerd's deprecation warnings as they occur, and who causes them",
        description="Poll containerd's deprecation warnings (containerd >= 1.7) and write a "
        "line for each new occurrence; with --trace-connect, also trace the connections to "
        "the containerd socket and attribute each occurrence to the pods that caused it, with "
        "a confidence. Until SIGTERM or SIGINT. `ociresolve serve --report-deprecations` does "
        "the same inside the node daemon.",
    )
    add_serve_arguments(report, api=False)
    report.set_defaults(run=_serve)
    return parser


def _daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--daemon-socket",
        metavar="PATH",
        help="ask the ociresolve daemon on this socket [OCIRESOLVE_SOCKET] (default: "
        f"{DEFAULT_SOCKET} when no --host-root or --runtime-root is given); when it does not "
        "answer, scan the node once instead",
    )
    parser.add_argument(
        "--no-daemon", action="store_true", help="scan the node once, never ask the daemon"
    )


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host-root",
        default="/",
        metavar="DIR",
        help="where the host's file systems are mounted (default: /)",
    )
    parser.add_argument(
        "--runtime-root",
        action="append",
        dest="runtime_roots",
        metavar="DIR",
        help="a runtime state directory, on the host (repeatable; default: containerd, k3s, "
        "cri-o and podman's)",
    )


def _cri_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cri-socket",
        metavar="PATH",
        help="the CRI endpoint for what the bundles do not tell, on the host (default: the "
        "first of containerd's, k3s', cri-o's and cri-dockerd's sockets that exists)",
    )
    parser.add_argument("--no-cri", action="store_true", help="never ask the runtime over CRI")


def _trace_connect(args: argparse.Namespace) -> int:
    from ociresolve.tracer.connect import run  # the probe, and BCC, only for this command

    return run(args)


def _deprecations(args: argparse.Namespace) -> int:
    from ociresolve.deprecations import IntrospectionError, ServiceMissing, listing

    if args.clients:
        return _deprecated_api_clients(args)

    try:
        warnings = listing.fetch(args.host_root, args.containerd_socket, timeout=args.timeout)
    except ServiceMissing as exc:
        _error(str(exc))
        return EXIT_NOT_KUBERNETES  # 1: a "no" answer, as for lookup
    except IntrospectionError as exc:
        _error(str(exc))
        return EXIT_ERROR
    listing.write(warnings, sys.stdout, as_json=args.json)
    return EXIT_OK


_CLIENT_COLUMNS: Final = (
    "DEPRECATION",
    "POD",
    "CONTAINER",
    "COMM",
    "CONFIDENCE",
    "OCCURRENCES",
    "LAST SEEN",
)


def _deprecated_api_clients(args: argparse.Namespace) -> int:
    from ociresolve.render import rfc3339_milli

    client = DaemonClient(args.daemon_socket)
    try:
        reply = client.deprecated_api_clients()
    except ociresolve.OciresolveError as exc:
        _error(str(exc))
        return EXIT_ERROR
    finally:
        client.close()
    if not reply.reporting:
        _error(
            f"the daemon at {client.socket} does not report deprecations (serve "
            "--report-deprecations)"
        )
        return EXIT_NOT_KUBERNETES
    rows = [
        {
            "deprecation": c.deprecation,
            "pod_namespace": c.pod_namespace or None,
            "pod_name": c.pod_name or None,
            "container": c.container or None,
            "comm": c.comm,
            "confidence": round(c.confidence, 3),
            "occurrences": c.occurrences,
            "considered": c.considered,
            "last_seen": rfc3339_milli(c.last_seen_unix_nano),
            "container_id": c.container_id or None,
            "pid": c.pid or None,
        }
        for c in reply.clients
    ]
    if args.json:
        for row in rows:
            print(json_line(row))
        return EXIT_OK
    if not reply.correlating:
        _error("the daemon runs no tracer (--trace-connect): occurrences are not attributed")
    print(
        table(
            _CLIENT_COLUMNS,
            (
                (
                    r["deprecation"],
                    f"{r['pod_namespace']}/{r['pod_name']}" if r["pod_name"] else None,
                    r["container"],
                    r["comm"],
                    f"{r['confidence']:.2f}",
                    f"{r['occurrences']}/{r['considered']}",
                    r["last_seen"],
                )
                for r in rows
            ),
        )
    )
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from ociresolve.daemon.serve import run  # grpc and prometheus-client only for this command

    return run(args)


def _daemon(args: argparse.Namespace) -> DaemonClient | None:
    """The daemon to ask, or ``None`` for a one-shot scan: the daemon is asked when its socket
    is named, or when the command names no host root or runtime root of its own."""
    if args.no_daemon:
        return None
    if args.daemon_socket is None and (args.host_root != "/" or args.runtime_roots):
        return None
    return DaemonClient(args.daemon_socket)


def _resolver(args: argparse.Namespace) -> ociresolve.Resolver:
    return ociresolve.Resolver(
        host_root=args.host_root,
        runtime_roots=args.runtime_roots,
        cri=not getattr(args, "no_cri", True),
        cri_socket=getattr(args, "cri_socket", None),
    )


class _Answer(NamedTuple):
    """A lookup's outcome, from the daemon or from a one-shot scan."""

    container_id: str | None
    meta: ociresolve.ContainerMeta | None
    source: str | None
    init_pid: int | None
    steps: list[Step]


def _lookup(args: argparse.Namespace) -> int:
    try:
        answer = _ask_daemon(args)
        if answer is None or isinstance(answer, Step):
            answer = _scan_once(args, [] if answer is None else [answer])
    except ociresolve.OciresolveError as exc:
        _error(str(exc))
        return EXIT_ERROR
    steps = [
        {"step": s.step, "result": s.result, "ms": round(s.seconds * 1000, 3)} for s in answer.steps
    ]
    if answer.meta is None:
        if answer.container_id is None:
            _error(f"pid {args.pid} is not in a container")
        else:
            tried = [step for step in answer.steps if step.step != "daemon"]
            why = (
                f"{tried[-1].step}: {printable(tried[-1].result)}"
                if tried
                else "the daemon's index, its bundles and the CRI do not have it"
            )
            _error(
                f"pid {args.pid} is in container {short_id(answer.container_id)}, which "
                f"no runtime root knows as a Kubernetes container ({why})"
            )
        if args.explain:
            _print_steps(steps, args.json, sys.stderr)
        return EXIT_NOT_KUBERNETES
    row: dict[str, Any] = msgspec.structs.asdict(answer.meta)
    row.update(pid=args.pid, source=answer.source)
    if args.json:
        if args.explain:
            row.update(explain=steps)
        print(json_line(row))
        return EXIT_OK
    row.update(init_pid=answer.init_pid)
    width = max(map(len, row))
    for key, value in row.items():
        print(f"{key:<{width}}  {printable(value)}")
    if args.explain:
        _print_steps(steps, False, sys.stdout)
    return EXIT_OK


def _ask_daemon(args: argparse.Namespace) -> _Answer | Step | None:
    """The daemon's answer; a ``Step`` saying why there is none (scan once instead); ``None``
    when the daemon is not to be asked."""
    daemon = _daemon(args)
    if daemon is None:
        return None
    started = time.perf_counter()
    try:
        result = daemon.lookup_pid(args.pid, explain=args.explain)
    except DaemonUnavailable as exc:
        return _step("daemon", f"{exc.reason}; scanning the node once instead", started)
    finally:
        daemon.close()
    asked = _step("daemon", f"{daemon.socket}: answered", started)
    return _from_daemon(args.pid, result, [asked, *result.steps])


def _from_daemon(pid: int, result: LookupResult, steps: list[Step]) -> _Answer:
    if result.status == "no_such_process":
        raise ociresolve.ProcessNotFound(pid)
    if result.status == "error":
        raise ociresolve.OciresolveError(f"pid {pid}: {result.error or 'lookup failed'}")
    record = result.record
    if record is None:
        return _Answer(result.container_id, None, None, None, steps)
    return _Answer(record.meta.container_id, record.meta, result.source, record.pid, steps)


def _scan_once(args: argparse.Namespace, steps: list[Step]) -> _Answer:
    resolver = _resolver(args)
    try:
        explanation = resolver.explain_pid(args.pid)
        answer = explanation.resolution
        record = resolver.container(explanation.container_id or "")
    finally:
        resolver.close()
    steps.extend(explanation.steps)
    return _Answer(
        explanation.container_id,
        answer.meta if answer is not None else None,
        answer.source if answer is not None else None,
        record.pid if record is not None else None,
        steps,
    )


def _step(step: str, result: str, started: float) -> Step:
    return Step(step=step, result=result, seconds=time.perf_counter() - started)


def _print_steps(steps: list[dict[str, Any]], as_json: bool, stream: TextIO) -> None:
    if as_json:
        print(json_line({"explain": steps}), file=stream)
        return
    print("resolution:", file=stream)
    for step in steps:
        print(f"  {step['step']:<7} {step['ms']:9.3f} ms  {printable(step['result'])}", file=stream)


_LIST_COLUMNS: Final = ("NAMESPACE", "POD", "CONTAINER", "TYPE", "RUNTIME", "ID", "PID")


def _list_order(record: ociresolve.IndexedContainer) -> tuple[str, str, bool, str]:
    meta = record.meta
    return (
        meta.pod_namespace or "",
        meta.pod_name or "",
        meta.container_type != "sandbox",
        meta.container_name or "",
    )


def _list(args: argparse.Namespace) -> int:
    records: list[ociresolve.IndexedContainer] | None = None
    daemon = _daemon(args)
    if daemon is not None:
        try:
            records = daemon.containers()
        except DaemonUnavailable:
            records = None  # not running: scan the node once
        except ociresolve.OciresolveError as exc:
            _error(str(exc))
            return EXIT_ERROR
        finally:
            daemon.close()
    if records is None:
        records = _resolver(args).scan().containers()
    records.sort(key=_list_order)
    if args.json:
        for record in records:
            row = msgspec.structs.asdict(record.meta)
            row.update(pid=record.pid, cgroup_id=record.cgroup_id, bundle=record.bundle)
            print(json_line(row))
        return EXIT_OK
    print(
        table(
            _LIST_COLUMNS,
            (
                (
                    r.meta.pod_namespace,
                    r.meta.pod_name,
                    r.meta.container_name,
                    r.meta.container_type,
                    r.meta.runtime,
                    short_id(r.meta.container_id),
                    r.pid,
                )
                for r in records
            ),
        )
    )
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    code = EXIT_OK
    rows: list[dict[str, Any]] = []
    for path in args.paths:
        if not os.path.exists(path):
            _error(f"{path}: no such file or directory")
            code = EXIT_ERROR
            continue
        configs = [path] if os.path.isfile(path) else sorted(ociresolve.find_bundles(path))
        if not configs:
            _error(f"{path}: no OCI bundle (config.json) found below it")
            code = EXIT_ERROR
        for config in configs:
            try:
                bundle = ociresolve.load_bundle(config)
            except ociresolve.BundleError as exc:
                _error(str(exc))
                code = EXIT_ERROR
                continue
            meta = ociresolve.normalize(
                bundle.annotations,
                container_id=bundle.container_id,
                cgroups_path=bundle.cgroups_path,
            )
            row: dict[str, Any]
            if meta is None:
                code = max(code, EXIT_NOT_KUBERNETES)
                row = {
                    "runtime": ociresolve.detect_runtime(bundle.annotations),
                    "container_id": bundle.container_id,
                }
            else:
                row = msgspec.structs.asdict(meta)
            row.update(path=bundle.path, kubernetes=meta is not None)
            if args.json:
                print(json_line(row), flush=True)
            else:
                rows.append(row)
    if not args.json and rows:
        print(table(_INSPECT_COLUMNS, (_inspect_row(row) for row in rows)))
    return code


def _inspect_row(row: dict[str, Any]) -> tuple[object, ...]:
    kind = row.get("container_type") if row["kubernetes"] else "not-kubernetes"
    return (
        row.get("pod_namespace"),
        row.get("pod_name"),
        row.get("container_name"),
        kind,
        row.get("runtime"),
        short_id(row.get("container_id")),
        row.get("image"),
        row["path"],
    )


def _error(message: str) -> None:
    print(f"ociresolve: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
