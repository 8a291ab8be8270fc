"""``ociresolve trace connect``: the containerd socket tracer."""

from __future__ import annotations

import argparse

from ociresolve.cli._common import Commands
from ociresolve.options import add_cri_options, add_daemon_options, add_node_options
from ociresolve.tracer.options import add_connect_arguments


def add_commands(commands: Commands) -> None:
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
    # The tracer uses only the public API: the shared groups are added here, not by it.
    add_daemon_options(connect, "resolve")
    add_node_options(connect)
    add_cri_options(connect)
    connect.set_defaults(run=_connect)


def _connect(args: argparse.Namespace) -> int:
    from ociresolve.tracer.connect import run  # the probe, and BCC, only for this command

    return run(args)
