"""The ``ociresolve`` command: parse arguments, call the public API, print."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

import msgspec

import ociresolve
from ociresolve.output import json_line, short_id, table

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
    return parser


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
