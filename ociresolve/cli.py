"""The ``ociresolve`` command: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Final, TextIO

import msgspec

import ociresolve
from ociresolve.output import json_line, printable, short_id, table
from tracer.options import add_connect_arguments

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
    _node_options(lookup)
    _cri_options(lookup)
    lookup.set_defaults(run=_lookup)

    listing = commands.add_parser("list", help="the containers on this node")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    _node_options(listing)
    listing.set_defaults(run=_list)

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
    _node_options(connect)
    _cri_options(connect)
    connect.set_defaults(run=_trace_connect)
    return parser


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
    from tracer.connect import run  # the probe, and BCC, only for this command

    return run(args)


def _resolver(args: argparse.Namespace) -> ociresolve.Resolver:
    return ociresolve.Resolver(
        host_root=args.host_root,
        runtime_roots=args.runtime_roots,
        cri=not getattr(args, "no_cri", True),
        cri_socket=getattr(args, "cri_socket", None),
    )


def _lookup(args: argparse.Namespace) -> int:
    resolver = _resolver(args)
    try:
        explanation = resolver.explain_pid(args.pid)
    except ociresolve.OciresolveError as exc:
        _error(str(exc))
        return EXIT_ERROR
    finally:
        resolver.close()
    steps = [
        {"step": s.step, "result": s.result, "ms": round(s.seconds * 1000, 3)}
        for s in explanation.steps
    ]
    answer = explanation.resolution
    if answer is None:
        if explanation.container_id is None:
            _error(f"pid {args.pid} is not in a container")
        else:
            last = explanation.steps[-1]
            _error(
                f"pid {args.pid} is in container {short_id(explanation.container_id)}, which "
                "no runtime root knows as a Kubernetes container "
                f"({last.step}: {printable(last.result)})"
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
    record = resolver.container(explanation.container_id or "")
    row.update(init_pid=record.pid if record is not None else None)
    width = max(map(len, row))
    for key, value in row.items():
        print(f"{key:<{width}}  {printable(value)}")
    if args.explain:
        _print_steps(steps, False, sys.stdout)
    return EXIT_OK


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
