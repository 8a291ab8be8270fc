"""``ociresolve lookup`` and ``list``: this node's containers, from the node daemon when it
answers, else from one scan of the node (``ociresolve.Node``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final, TextIO

import msgspec

import ociresolve
from ociresolve.cli._common import EXIT_ERROR, EXIT_NOT_KUBERNETES, EXIT_OK, Commands, error
from ociresolve.options import (
    add_cri_options,
    add_daemon_options,
    add_json_option,
    add_node_options,
)
from ociresolve.render import json_line, printable, short_id, table

_LIST_COLUMNS: Final = ("NAMESPACE", "POD", "CONTAINER", "TYPE", "RUNTIME", "ID", "PID")


def add_commands(commands: Commands) -> None:
    lookup = commands.add_parser(
        "lookup",
        help="the pod and container a process runs in",
        description="Exit 0 with the record when PID is in a Kubernetes container, 1 when it "
        "is a host process or in a container that is not a Kubernetes one (podman's), 2 when "
        "there is no such process or on errors.",
    )
    lookup.add_argument("pid", type=int, metavar="PID")
    add_json_option(lookup, lines=False)
    lookup.add_argument(
        "--explain", action="store_true", help="also show each step tried, with its timing"
    )
    add_daemon_options(lookup, "ask")
    add_node_options(lookup)
    add_cri_options(lookup)
    lookup.set_defaults(run=_lookup)

    listing = commands.add_parser("list", help="the containers on this node")
    add_json_option(listing)
    add_daemon_options(listing, "ask")
    add_node_options(listing)
    listing.set_defaults(run=_list, no_cri=True, cri_socket=None)  # a scan needs no CRI


def _node(args: argparse.Namespace) -> ociresolve.Node:
    return ociresolve.Node(
        host_root=args.host_root,
        runtime_roots=args.runtime_roots,
        cri=not args.no_cri,
        cri_socket=args.cri_socket,
        daemon=False if args.no_daemon else None,
        daemon_socket=args.daemon_socket,
    )


def _lookup(args: argparse.Namespace) -> int:
    try:
        answer = _node(args).lookup_pid(args.pid, explain=args.explain)
    except ociresolve.OciresolveError as exc:
        error(str(exc))
        return EXIT_ERROR
    steps = [
        {"step": s.step, "result": s.result, "ms": round(s.seconds * 1000, 3)} for s in answer.steps
    ]
    if answer.meta is None:
        if answer.container_id is None:
            error(f"pid {args.pid} is not in a container")
        elif answer.runtime is not None:
            error(
                f"pid {args.pid} is in {printable(answer.runtime)} container "
                f"{short_id(answer.container_id)}, not a Kubernetes container"
            )
        else:
            tried = [step for step in answer.steps if step.step != "daemon"]
            why = (
                f"{tried[-1].step}: {printable(tried[-1].result)}"
                if tried
                else "the daemon's index, its bundles and the CRI do not have it"
            )
            error(
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


def _print_steps(steps: list[dict[str, Any]], as_json: bool, stream: TextIO) -> None:
    if as_json:
        print(json_line({"explain": steps}), file=stream)
        return
    print("resolution:", file=stream)
    for step in steps:
        print(f"  {step['step']:<7} {step['ms']:9.3f} ms  {printable(step['result'])}", file=stream)


def _list(args: argparse.Namespace) -> int:
    try:
        records = _node(args).containers().containers
    except ociresolve.OciresolveError as exc:
        error(str(exc))
        return EXIT_ERROR
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
