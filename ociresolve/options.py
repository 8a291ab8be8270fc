"""The option groups several commands share, each defined once, with one meaning everywhere.

- the node: ``--host-root``, ``--runtime-root`` (repeatable; the directories given replace the
  default list), ``--grace-period``;
- the CRI: ``--cri-socket``, ``--no-cri``;
- the node daemon, for its clients: ``--daemon-socket``, ``--no-daemon``;
- containerd: ``--containerd-socket``;
- output: ``--json``.

A command takes its defaults from ``Defaults``: the built-in values, or, for ``ociresolve serve``
and ``report-deprecations`` only, the ``OCIRESOLVE_*`` environment variables first (a DaemonSet
sets them). A bad value, in the environment too, is a usage error (exit 2).

Only argparse here: the CLI adds these without importing grpc or BCC.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

from ociresolve.api.client import DEFAULT_SOCKET, SOCKET_ENV

_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")
_PREFIX: Final = "OCIRESOLVE_"

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


class Defaults:
    """Where a command's defaults come from: the built-in values, and with ``environ`` (only
    ``serve`` and ``report-deprecations`` pass one) each option's ``OCIRESOLVE_*`` variable
    first. An empty variable is the built-in default."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    def value(self, name: str, fallback: str | None = None) -> str | None:
        """``$OCIRESOLVE_<name>``, else ``fallback``."""
        if self.environ is None:
            return fallback
        return self.environ.get(_PREFIX + name) or fallback

    def variable(self, name: str, suffix: str = "") -> str:
        """`` [OCIRESOLVE_<name><suffix>]`` for the help text, or nothing without variables."""
        return "" if self.environ is None else f" [{_PREFIX}{name}{suffix}]"


BUILT_IN: Final = Defaults()


# -- value types ---------------------------------------------------------------------------------


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text}")
    return value


def deadline(text: str) -> float:
    """Seconds a call may take: more than 0 (every call has a deadline) and finite."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text}")
    return value


def boolean(variable: str) -> Callable[[str], bool]:
    """``--flag`` alone is true; ``--flag=false``, or the environment's ``variable``, say which."""

    def parse(text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise argparse.ArgumentTypeError(
            f"not true or false: {text!r} (the flag's value, or {_PREFIX}{variable})"
        )

    return parse


def choice(*choices: str) -> Callable[[str], str]:
    """A ``type`` that checks a value against ``choices``: argparse checks ``choices=`` only on
    the command line, and the environment's values are defaults."""

    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(choices)})"
            )
        return text

    return check


def add_flag(
    parser: Parser, option: str, defaults: Defaults, variable: str, help_text: str
) -> None:
    """A boolean flag, false by default. With variables, ``--flag[=BOOL]`` (so the command line
    can undo the variable); without, a plain ``--flag`` (which never takes the next word, a
    positional argument, for its value)."""
    if defaults.environ is None:
        parser.add_argument(option, action="store_true", help=help_text)
        return
    parser.add_argument(
        option,
        nargs="?",
        const=True,
        type=boolean(variable),
        default=defaults.value(variable, "false"),  # argparse converts a str default with `type`
        help=help_text + defaults.variable(variable, "=1"),
    )


class ReplaceList(argparse.Action):
    """A repeatable option whose values replace its default list (the built-in one, or the
    environment's) instead of adding to it: the first use starts a new list."""

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


# -- the groups -----------------------------------------------------------------------------------


def add_node_options(
    parser: Parser,
    defaults: Defaults = BUILT_IN,
    *,
    runtime_roots: bool = True,
    grace_period: bool = False,
) -> None:
    """``--host-root``; ``--runtime-root`` (attribute ``runtime_roots``, ``None`` for the built-in
    list); with ``grace_period``, ``--grace-period`` (a node indexed for a while: ``serve``)."""
    parser.add_argument(
        "--host-root",
        default=defaults.value("HOST_ROOT", "/"),
        metavar="DIR",
        help="where the host's file systems are mounted"
        + defaults.variable("HOST_ROOT")
        + " (default: /)",
    )
    if runtime_roots:
        listed = defaults.value("RUNTIME_ROOTS")
        parser.add_argument(
            "--runtime-root",
            action=ReplaceList,
            dest="runtime_roots",
            default=[r for r in listed.split(",") if r] if listed else None,
            metavar="DIR",
            help="a runtime state directory, on the host; repeatable, the directories given "
            "replace the default list"
            + defaults.variable("RUNTIME_ROOTS", ", comma-separated")
            + " (default: containerd's, k3s', cri-o's and podman's)",
        )
    if grace_period:
        parser.add_argument(
            "--grace-period",
            type=seconds,
            default=defaults.value("GRACE_PERIOD", "5"),
            metavar="SECONDS",
            help="how long a removed container still resolves"
            + defaults.variable("GRACE_PERIOD")
            + " (default: 5)",
        )


def add_cri_options(parser: Parser, defaults: Defaults = BUILT_IN) -> None:
    """``--cri-socket``, ``--no-cri`` (attributes ``cri_socket``, ``no_cri``)."""
    parser.add_argument(
        "--cri-socket",
        default=defaults.value("CRI_SOCKET"),
        metavar="PATH",
        help="the CRI endpoint for what the bundles do not tell, on the host"
        + defaults.variable("CRI_SOCKET")
        + " (default: the first of containerd's, k3s', cri-o's and cri-dockerd's sockets that "
        "exists)",
    )
    add_flag(parser, "--no-cri", defaults, "NO_CRI", "never ask the runtime over CRI")


# How each command uses the node daemon it is given: the help after "the ociresolve daemon's
# socket".
DaemonUse = Literal["ask", "mirror", "resolve", "clients"]
_DAEMON_USE: Final[dict[DaemonUse, str]] = {
    # lookup, list
    "ask": f" [{SOCKET_ENV}] (default: {DEFAULT_SOCKET} when no --host-root or --runtime-root "
    "is given): ask it first; when it does not answer, scan the node once instead",
    # enrich
    "mirror": f" [{SOCKET_ENV}] (default: {DEFAULT_SOCKET} when no --host-root or --runtime-root "
    "is given): resolve through a local copy of its index; when it does not answer, index the "
    "node in this process instead",
    # trace connect
    "resolve": ": resolve through the daemon (a local copy of its index) instead of indexing "
    "the node in this process (default: index the node in this process)",
    # deprecations --clients
    "clients": f", with --clients [{SOCKET_ENV}] (default: {DEFAULT_SOCKET})",
}


def add_daemon_options(parser: Parser, use: DaemonUse) -> None:
    """``--daemon-socket`` (attribute ``daemon_socket``, ``None`` when not given); with
    ``ask`` or ``mirror``, also ``--no-daemon``."""
    parser.add_argument(
        "--daemon-socket",
        metavar="PATH",
        help="the ociresolve daemon's socket" + _DAEMON_USE[use],
    )
    if use == "ask":
        parser.add_argument(
            "--no-daemon", action="store_true", help="scan the node once, never ask the daemon"
        )
    elif use == "mirror":
        parser.add_argument(
            "--no-daemon", action="store_true", help="index the node here, never ask the daemon"
        )


def add_containerd_options(parser: Parser, defaults: Defaults = BUILT_IN) -> None:
    """``--containerd-socket`` (attribute ``containerd_socket``)."""
    parser.add_argument(
        "--containerd-socket",
        default=defaults.value("CONTAINERD_SOCKET"),
        metavar="PATH",
        help="containerd's API socket, on the host"
        + defaults.variable("CONTAINERD_SOCKET")
        + " (default: the first of containerd's and k3s' sockets that exists)",
    )


def add_json_option(parser: Parser, *, lines: bool = True) -> None:
    """``--json``: JSON instead of text for people."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line" if lines else "one JSON object",
    )
