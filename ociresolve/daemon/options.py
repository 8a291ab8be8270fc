"""The command line of ``ociresolve serve``; each of the daemon's own options also has an
environment variable (``OCIRESOLVE_*``), which a DaemonSet sets, and a flag given on the command
line wins. The tracer's options (``--trace-*``) are flags only, but for
``OCIRESOLVE_TRACE_CONNECT``. A bad value in the environment is a usage error, as on the command
line.

Only argparse here: ``ociresolve/cli.py`` adds these without importing grpc or BCC.
"""

from __future__ import annotations

import argparse
import functools
import grp
import os
import pwd
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ociresolve.api.client import DEFAULT_SOCKET, SOCKET_ENV
from ociresolve.daemon.logs import LEVELS
from ociresolve.tracer.options import add_connect_arguments

_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text}")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
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
    logs, the tracer and the reporter only."""
    env = os.environ if environ is None else environ
    if api:
        _add_api_arguments(parser, env)
    else:
        parser.set_defaults(socket=None, socket_mode=0o600, socket_owner=None, metrics_address="")
    _add_node_arguments(parser, env)
    _add_operations_arguments(parser, env, metrics=api)
    _add_reporter_arguments(parser, env, always=not api)
    trace = parser.add_argument_group(
        "the connect tracer", "with --trace-connect, the tracer's lines go to stdout"
    )
    trace.add_argument(
        "--trace-connect",
        nargs="?",
        const=True,
        type=_boolean("TRACE_CONNECT"),
        default=_default(env, "TRACE_CONNECT", "false"),
        help="also run the containerd socket tracer (BPF; root or CAP_BPF and CAP_PERFMON) "
        "[OCIRESOLVE_TRACE_CONNECT=1]",
    )
    add_connect_arguments(trace, prefix="trace-")


def _default(env: Mapping[str, str], name: str, fallback: str | None = None) -> str | None:
    return env.get(f"OCIRESOLVE_{name}") or fallback


def _boolean(variable: str) -> Callable[[str], bool]:
    """``--flag`` alone is true; ``--flag=false``, or the environment's ``variable``, say which."""

    def parse(text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise argparse.ArgumentTypeError(
            f"not true or false: {text!r} (the flag's value, or OCIRESOLVE_{variable})"
        )

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    """A ``type`` that checks a value against ``choices``: argparse checks ``choices=`` only on
    the command line, and the environment's values are defaults."""

    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(choices)})"
            )
        return text

    return check


class _ReplaceAppend(argparse.Action):
    """``append`` whose first use on the command line replaces the default (the
    environment's list) instead of adding to it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            current = []
        setattr(namespace, self.dest, [*current, values])


def _add_api_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    default = functools.partial(_default, env)

    api = parser.add_argument_group("the API")
    api.add_argument(
        "--socket",
        default=env.get(SOCKET_ENV) or DEFAULT_SOCKET,
        metavar="PATH",
        help=f"the API's unix socket [{SOCKET_ENV}] (default: {DEFAULT_SOCKET})",
    )
    api.add_argument(
        "--socket-mode",
        type=_mode,
        default=default("SOCKET_MODE", "600"),  # argparse converts a str default with `type`
        metavar="OCTAL",
        help="the socket's permissions [OCIRESOLVE_SOCKET_MODE] (default: 600, root only)",
    )
    api.add_argument(
        "--socket-owner",
        type=_owner,
        default=default("SOCKET_OWNER"),
        metavar="USER[:GROUP]",
        help="give the socket to this user and group [OCIRESOLVE_SOCKET_OWNER] (needs CAP_CHOWN)",
    )


def _add_node_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    default = functools.partial(_default, env)

    node = parser.add_argument_group("the node")
    node.add_argument(
        "--host-root",
        default=default("HOST_ROOT", "/"),
        metavar="DIR",
        help="where the host's file systems are mounted [OCIRESOLVE_HOST_ROOT] (default: /)",
    )
    roots = default("RUNTIME_ROOTS")
    node.add_argument(
        "--runtime-root",
        action=_ReplaceAppend,
        dest="runtime_roots",
        default=[r for r in roots.split(",") if r] if roots else None,
        metavar="DIR",
        help="a runtime state directory, on the host (repeatable) [OCIRESOLVE_RUNTIME_ROOTS, "
        "comma-separated] (default: containerd, k3s, cri-o and podman's)",
    )
    node.add_argument(
        "--grace-period",
        type=_seconds,
        default=default("GRACE_PERIOD", "5"),
        metavar="SECONDS",
        help="how long a removed container still resolves [OCIRESOLVE_GRACE_PERIOD] (default: 5)",
    )
    node.add_argument(
        "--cri-socket",
        default=default("CRI_SOCKET"),
        metavar="PATH",
        help="the CRI endpoint for what the bundles do not tell, on the host "
        "[OCIRESOLVE_CRI_SOCKET] (default: the first of containerd's, k3s', cri-o's and "
        "cri-dockerd's sockets that exists)",
    )
    node.add_argument(
        "--no-cri",
        nargs="?",
        const=True,
        type=_boolean("NO_CRI"),
        default=_default(env, "NO_CRI", "false"),
        help="never ask the runtime over CRI [OCIRESOLVE_NO_CRI=1]",
    )


def _add_operations_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, metrics: bool
) -> None:
    default = functools.partial(_default, env)

    ops = parser.add_argument_group("operations")
    if metrics:
        ops.add_argument(
            "--metrics-address",
            default=default("METRICS_ADDRESS", ""),
            metavar="HOST:PORT",
            help="serve /metrics, /healthz and /readyz here [OCIRESOLVE_METRICS_ADDRESS] "
            "(default: off)",
        )
    ops.add_argument(
        "--log-format",
        type=_choice("logfmt", "json"),
        metavar="{logfmt,json}",
        default=default("LOG_FORMAT", "logfmt"),
        help="the daemon's own log lines, on stderr [OCIRESOLVE_LOG_FORMAT] (default: logfmt)",
    )
    ops.add_argument(
        "--log-level",
        type=_choice(*LEVELS),
        metavar="{" + ",".join(LEVELS) + "}",
        default=default("LOG_LEVEL", "info"),
        help="[OCIRESOLVE_LOG_LEVEL] (default: info)",
    )


def _add_reporter_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, always: bool
) -> None:
    default = functools.partial(_default, env)

    report = parser.add_argument_group(
        "the deprecation reporter",
        "containerd's deprecation warnings (containerd >= 1.7), attributed to the clients that "
        "cause them when the connect tracer runs too; its lines go to stdout",
    )
    if always:
        parser.set_defaults(report_deprecations=True)
    else:
        report.add_argument(
            "--report-deprecations",
            nargs="?",
            const=True,
            type=_boolean("REPORT_DEPRECATIONS"),
            default=_default(env, "REPORT_DEPRECATIONS", "false"),
            help="poll containerd's deprecation warnings and report each new occurrence "
            "[OCIRESOLVE_REPORT_DEPRECATIONS=1]",
        )
    report.add_argument(
        "--containerd-socket",
        default=default("CONTAINERD_SOCKET"),
        metavar="PATH",
        help="containerd's API socket, on the host [OCIRESOLVE_CONTAINERD_SOCKET] (default: "
        "the first of containerd's and k3s' sockets that exists)",
    )
    report.add_argument(
        "--deprecations-interval",
        type=_interval,
        default=default("DEPRECATIONS_INTERVAL", "5"),
        metavar="SECONDS",
        help="how often to poll the warnings [OCIRESOLVE_DEPRECATIONS_INTERVAL] (default: 5)",
    )
