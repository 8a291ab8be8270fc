"""``ociresolve serve``: the node daemon."""

from __future__ import annotations

import argparse

from ociresolve.cli._common import Commands
from ociresolve.daemon.options import add_serve_arguments


def add_commands(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="the node daemon: index the node and serve lookups on a unix socket",
        description="Index the node's containers, keep the index current, and serve lookups "
        "(gRPC, ociresolve/api/api.proto) on a unix socket, with Prometheus metrics and "
        "health checks, until SIGTERM. Exit 2 when it cannot start, 3 when no inotify instance is "
        "left (sysctl fs.inotify.max_user_instances).",
    )
    add_serve_arguments(serve)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``serve`` and ``report-deprecations`` (the daemon without its API)."""
    from ociresolve.daemon import serve  # grpc and prometheus-client only for this command

    return serve.run(args)
