"""The command line of ``ociresolve serve``; each of the daemon's own options also has an
environment variable (``OCIRESOLVE_*``), which a DaemonSet sets, and a flag given on the command
line wins. The tracer's options (``--trace-*``) are flags only, but for
``OCIRESOLVE_TRACE_CONNECT``. A bad value in the environment is a usage error, as on the command
line.

The node, CRI and containerd options are the shared groups of ``ociresolve.options``, with the
same meaning as in the other commands; the API, operations and reporter options are the
daemon's own.

Only argparse here: the CLI adds these without importing grpc or BCC.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
from collections.abc import Mapping
from typing import Final

from ociresolve.api.client import DEFAULT_SOCKET, SOCKET_ENV
from ociresolve.daemon.logs import LEVELS
from ociresolve.options import (
    Defaults,
    add_containerd_options,
    add_cri_options,
    add_flag,
    add_node_options,
    choice,
    seconds,
)
from ociresolve.tracer.options import add_connect_arguments

_SOCKET_VARIABLE: Final = SOCKET_ENV.removeprefix("OCIRESOLVE_")  # what node clients read too
# The deprecation poller backs off up to a minute when the runtime is down.
MAX_INTERVAL: Final = 60.0


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text}")
    return mode


def _owner(text: str) -> tuple[int, int]:
    """``USER[:GROUP]``, by name or number; the group defaults to the user's."""
    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise argparse.ArgumentTypeError(f"no such user: {user!r}") from None
        uid, gid = int(user), int(user)
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise argparse.ArgumentTypeError(f"no such group: {group!r}") from None
    return uid, gid


def _interval(text: str) -> float:
    value = seconds(text)
    if not 0 < value <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_INTERVAL:g} s")
    return value


def add_serve_arguments(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str] | None = None,
    *,
    api: bool = True,
) -> None:
    """``serve``'s options; without ``api`` (``report-deprecations``), those of the node, the
    logs, the tracer and the reporter only. ``environ`` (default: ``os.environ``) gives the
    ``OCIRESOLVE_*`` variables."""
    defaults = Defaults(os.environ if environ is None else environ)
    if api:
        _add_api_arguments(parser, defaults)
    else:
        parser.set_defaults(socket=None, socket_mode=0o600, socket_owner=None, metrics_address="")
    node = parser.add_argument_group("the node")
    add_node_options(node, defaults, grace_period=True)
    add_cri_options(node, defaults)
    _add_operations_arguments(parser, defaults, metrics=api)
    _add_reporter_arguments(parser, defaults, always=not api)
    trace = parser.add_argument_group(
        "the connect tracer", "with --trace-connect, the tracer's lines go to stdout"
    )
    add_flag(
        trace,
        "--trace-connect",
        defaults,
        "TRACE_CONNECT",
        "also run the containerd socket tracer (BPF; root or CAP_BPF and CAP_PERFMON)",
    )
    add_connect_arguments(trace, prefix="trace-")


def _add_api_arguments(parser: argparse.ArgumentParser, defaults: Defaults) -> None:
    api = parser.add_argument_group("the API")
    api.add_argument(
        "--socket",
        default=defaults.value(_SOCKET_VARIABLE, DEFAULT_SOCKET),
        metavar="PATH",
        help=f"the API's unix socket [{SOCKET_ENV}] (default: {DEFAULT_SOCKET})",
    )
    api.add_argument(
        "--socket-mode",
        type=_mode,
        default=defaults.value("SOCKET_MODE", "600"),  # argparse converts a str default
        metavar="OCTAL",
        help="the socket's permissions [OCIRESOLVE_SOCKET_MODE] (default: 600, root only)",
    )
    api.add_argument(
        "--socket-owner",
        type=_owner,
        default=defaults.value("SOCKET_OWNER"),
        metavar="USER[:GROUP]",
        help="give the socket to this user and group [OCIRESOLVE_SOCKET_OWNER] (needs CAP_CHOWN)",
    )


def _add_operations_arguments(
    parser: argparse.ArgumentParser, defaults: Defaults, *, metrics: bool
) -> None:
    ops = parser.add_argument_group("operations")
    if metrics:
        ops.add_argument(
            "--metrics-address",
            default=defaults.value("METRICS_ADDRESS", ""),
            metavar="HOST:PORT",
            help="serve /metrics, /healthz and /readyz here [OCIRESOLVE_METRICS_ADDRESS] "
            "(default: off)",
        )
    ops.add_argument(
        "--log-format",
        type=choice("logfmt", "json"),
        metavar="{logfmt,json}",
        default=defaults.value("LOG_FORMAT", "logfmt"),
        help="the daemon's own log lines, on stderr [OCIRESOLVE_LOG_FORMAT] (default: logfmt)",
    )
    ops.add_argument(
        "--log-level",
        type=choice(*LEVELS),
        metavar="{" + ",".join(LEVELS) + "}",
        default=defaults.value("LOG_LEVEL", "info"),
        help="[OCIRESOLVE_LOG_LEVEL] (default: info)",
    )


def _add_reporter_arguments(
    parser: argparse.ArgumentParser, defaults: Defaults, *, always: bool
) -> None:
    report = parser.add_argument_group(
        "the deprecation reporter",
        "containerd's deprecation warnings (containerd >= 1.7), attributed to the clients that "
        "cause them when the connect tracer runs too; its lines go to stdout",
    )
    if always:
        parser.set_defaults(report_deprecations=True)
    else:
        add_flag(
            report,
            "--report-deprecations",
            defaults,
            "REPORT_DEPRECATIONS",
            "poll containerd's deprecation warnings and report each new occurrence",
        )
    add_containerd_options(report, defaults)
    report.add_argument(
        "--deprecations-interval",
        type=_interval,
        default=defaults.value("DEPRECATIONS_INTERVAL", "5"),
        metavar="SECONDS",
        help="how often to poll the warnings [OCIRESOLVE_DEPRECATIONS_INTERVAL] (default: 5)",
    )
