"""``ociresolve deprecations`` (containerd's deprecation warnings, or with ``--clients`` the
clients the daemon attributed them to) and ``report-deprecations`` (the reporter, as a process
of its own)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import ociresolve
from ociresolve.cli import serve
from ociresolve.cli._common import EXIT_ERROR, EXIT_NOT_KUBERNETES, EXIT_OK, Commands, error
from ociresolve.daemon.options import add_serve_arguments
from ociresolve.options import (
    add_containerd_options,
    add_daemon_options,
    add_json_option,
    add_node_options,
    deadline,
)
from ociresolve.render import json_line, rfc3339_milli, table

_CLIENT_COLUMNS: Final = (
    "DEPRECATION",
    "POD",
    "CONTAINER",
    "WORKLOAD",
    "COMM",
    "CONFIDENCE",
    "OCCURRENCES",
    "LAST SEEN",
)
_POTENTIAL_TITLE: Final = "Mounts a runtime socket, not seen calling:"
_POTENTIAL_COLUMNS: Final = ("POD", "CONTAINER", "WORKLOAD", "SOCKETS")
ATTRIBUTED: Final = "attributed"
MOUNTS_SOCKET: Final = "mounts-socket"


def add_commands(commands: Commands) -> None:
    deprecations = commands.add_parser(
        "deprecations",
        help="containerd's deprecation warnings (containerd >= 1.7)",
        description="List containerd's deprecation warnings, like `ctr deprecations list`. "
        "Exit 0 when listed (none included), 1 when the runtime has no deprecation warnings "
        "(containerd older than 1.7), 2 when it cannot be reached.",
    )
    add_json_option(deprecations)
    add_containerd_options(deprecations)
    deprecations.add_argument(
        "--timeout", type=deadline, default=2.0, metavar="SECONDS", help="deadline (default: 2)"
    )
    deprecations.add_argument(
        "--clients",
        action="store_true",
        help="instead, the clients the daemon attributed the warnings to (`serve "
        "--report-deprecations --trace-connect`), most confident first",
    )
    add_daemon_options(deprecations, "clients")
    add_node_options(deprecations, runtime_roots=False)
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
    report.set_defaults(run=serve.run)


def _deprecations(args: argparse.Namespace) -> int:
    from ociresolve.deprecations import IntrospectionError, ServiceMissing, listing

    if args.clients:
        return _clients(args)
    try:
        warnings = listing.fetch(args.host_root, args.containerd_socket, timeout=args.timeout)
    except ServiceMissing as exc:
        error(str(exc))
        return EXIT_NOT_KUBERNETES  # 1: a "no" answer, as for lookup
    except IntrospectionError as exc:
        error(str(exc))
        return EXIT_ERROR
    listing.write(warnings, sys.stdout, as_json=args.json)
    return EXIT_OK


def _clients(args: argparse.Namespace) -> int:
    client = ociresolve.DaemonClient(args.daemon_socket)
    try:
        reply = client.deprecated_api_clients()
    except ociresolve.OciresolveError as exc:
        error(str(exc))
        return EXIT_ERROR
    finally:
        client.close()
    if not reply.reporting:
        error(
            f"the daemon at {client.socket} does not report deprecations (serve "
            "--report-deprecations)"
        )
        return EXIT_NOT_KUBERNETES
    rows: list[dict[str, Any]] = [
        {
            "deprecation": c.deprecation,
            "pod_namespace": c.pod_namespace or None,
            "pod_name": c.pod_name or None,
            "container": c.container or None,
            "workload": c.workload or None,
            "comm": c.comm,
            "confidence": round(c.confidence, 3),
            "occurrences": c.occurrences,
            "considered": c.considered,
            "last_seen": rfc3339_milli(c.last_seen_unix_nano),
            "container_id": c.container_id or None,
            "pid": c.pid or None,
            "status": ATTRIBUTED,
        }
        for c in reply.clients
    ]
    potential: list[dict[str, Any]] = [
        {
            "status": MOUNTS_SOCKET,
            "pod_namespace": p.pod_namespace or None,
            "pod_name": p.pod_name or None,
            "container": p.container or None,
            "workload": p.workload or None,
            "container_id": p.container_id or None,
            "sockets": list(p.sockets),
        }
        for p in reply.potential
    ]
    if reply.potential_omitted:
        error(f"{reply.potential_omitted} more containers mount a runtime socket (not listed)")
    if args.json:
        for row in [*rows, *potential]:
            print(json_line(row))
        return EXIT_OK
    if not reply.correlating:
        error("the daemon runs no tracer (--trace-connect): occurrences are not attributed")
    print(
        table(
            _CLIENT_COLUMNS,
            (
                (
                    r["deprecation"],
                    _pod(r),
                    r["container"],
                    r["workload"],
                    r["comm"],
                    f"{r['confidence']:.2f}",
                    f"{r['occurrences']}/{r['considered']}",
                    r["last_seen"],
                )
                for r in rows
            ),
        )
    )
    if potential:
        print()
        print(_POTENTIAL_TITLE)
        print(
            table(
                _POTENTIAL_COLUMNS,
                (
                    (_pod(r), r["container"], r["workload"], ",".join(r["sockets"]))
                    for r in potential
                ),
            )
        )
    return EXIT_OK


def _pod(row: dict[str, Any]) -> str | None:
    return f"{row['pod_namespace']}/{row['pod_name']}" if row["pod_name"] else None
