"""The ``ociresolve`` command: parse arguments, call the public API, print.

One module per command group: ``bundles`` (inspect), ``lookup`` (lookup, list), ``enrich``,
``serve``, ``trace`` (trace connect), ``deprecations`` (deprecations, report-deprecations). The
options several commands share are ``ociresolve.options``' groups. Only argparse and the public
API are imported here: each command imports what it runs with (grpc, BCC) when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ociresolve.cli import bundles, deprecations, enrich, lookup, serve, trace
from ociresolve.cli._common import EXIT_OK


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
    bundles.add_commands(commands)
    lookup.add_commands(commands)
    enrich.add_commands(commands)
    serve.add_commands(commands)
    trace.add_commands(commands)
    deprecations.add_commands(commands)
    return parser
