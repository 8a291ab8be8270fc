"""The command line of ``ociresolve trace connect``: the tracer's own options.

The options it shares with other commands (the node's, the CRI's, ``--daemon-socket``) are
``ociresolve.options``' groups, which the CLI adds to the same parser: the tracer imports only
the library's public API. Only argparse here: the CLI adds these options to its parser without
importing the probe (or BCC), which ``tracer.connect`` loads only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Final

# --family to the probe's families.
FAMILIES: Final[dict[str, tuple[str, ...]]] = {
    "unix": ("unix",),
    "inet": ("inet",),
    "inet6": ("inet6",),
    "all": ("all",),  # every family, those without an address included
}


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text}")
    return seconds


def add_connect_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = ""
) -> None:
    """The tracer's own options (the CLI adds the shared node, CRI and daemon options).

    ``prefix`` goes before each option's name (``ociresolve serve`` has ``--trace-socket``,
    its own ``--socket`` being the API's); the attributes are named the same either way.
    """

    def option(name: str) -> str:
        return f"--{prefix}{name}"

    parser.add_argument(
        option("socket"),
        action="append",
        dest="sockets",
        metavar="PATH",
        help="a unix socket path to trace, as the connecting process names it (repeatable; "
        "default: containerd's and k3s' containerd sockets). A process in a container names "
        "the path it sees, e.g. /run/containerd/containerd.sock through a bind mount",
    )
    parser.add_argument(
        option("family"),
        dest="family",
        choices=sorted(FAMILIES),
        default="unix",
        help="the address families to trace (default: unix)",
    )
    parser.add_argument(
        option("port"),
        action="append",
        dest="ports",
        type=_port,
        metavar="N",
        help="with --family inet, inet6 or all: only TCP/UDP connects to this port (repeatable)",
    )
    parser.add_argument(
        option("exclude-comm"),
        action="append",
        dest="exclude_comms",
        default=[],
        metavar="COMM",
        help="do not report host processes (outside containers) with this name, in addition to "
        "the node's own components (kubelet, containerd, containerd-shim*, ctr, crictl); a "
        "process in a container is reported whatever its name (repeatable)",
    )
    parser.add_argument(
        option("no-default-excludes"),
        dest="no_default_excludes",
        action="store_true",
        help="report the node's own components running on the host too (in containers they "
        "are always reported)",
    )
    parser.add_argument(
        option("include-comm"),
        action="append",
        dest="include_comms",
        default=[],
        metavar="COMM",
        help="report only processes with this name (repeatable)",
    )
    parser.add_argument(
        option("output"),
        dest="output",
        choices=("logfmt", "json"),
        default="logfmt",
        help="logfmt lines (default) or one JSON object per line",
    )
    parser.add_argument(
        option("dedup"),
        dest="dedup",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="write one line per (pid, container, address) per SECONDS; repeats are counted "
        "in the summary (default: 0, every connection)",
    )
    parser.add_argument(
        option("summary-interval"),
        dest="summary_interval",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="a summary line (events, resolved, host, unresolved, lost, excluded) every SECONDS "
        "(default: 60; 0: only at exit)",
    )
