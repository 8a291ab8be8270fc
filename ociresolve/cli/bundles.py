"""``ociresolve inspect``: one normalized record per OCI bundle."""

from __future__ import annotations

import argparse
from typing import Any, Final

import msgspec

import ociresolve
from ociresolve.cli._common import EXIT_ERROR, EXIT_NOT_KUBERNETES, EXIT_OK, Commands, error
from ociresolve.options import add_json_option
from ociresolve.render import json_line, short_id, table

_COLUMNS: Final = ("NAMESPACE", "POD", "CONTAINER", "TYPE", "RUNTIME", "ID", "IMAGE", "PATH")


def add_commands(commands: Commands) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="normalize OCI bundles (a bundle dir, a config.json, or a tree to scan)",
        description="Print one normalized record per OCI bundle. Exit 0 when every bundle is a "
        "Kubernetes container, 1 when some are not, 2 on errors.",
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH")
    add_json_option(inspect)
    inspect.set_defaults(run=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    code = EXIT_OK
    rows: list[dict[str, Any]] = []
    for found in ociresolve.inspect_bundles(args.paths):
        if found.error is not None:
            error(found.error)
            code = EXIT_ERROR
            continue
        row: dict[str, Any]
        if found.meta is None:
            code = max(code, EXIT_NOT_KUBERNETES)
            row = {"runtime": found.runtime, "container_id": found.container_id}
        else:
            row = msgspec.structs.asdict(found.meta)
        row.update(path=found.path, kubernetes=found.meta is not None)
        if args.json:
            print(json_line(row), flush=True)
        else:
            rows.append(row)
    if not args.json and rows:
        print(table(_COLUMNS, (_table_row(row) for row in rows)))
    return code


def _table_row(row: dict[str, Any]) -> tuple[object, ...]:
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
