"""``ociresolve enrich``: a filter that adds the pod and container to another tool's event lines
(JSON lines, logfmt, or text read with a regular expression), from the node daemon's index when
one runs, else from an index of the node made here."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

import ociresolve
from ociresolve.cli._common import EXIT_ERROR, EXIT_OK, Commands
from ociresolve.options import add_cri_options, add_daemon_options, add_node_options, seconds

_EPILOG = """\
The fields added, when the event's process is in a Kubernetes container: PREFIX + namespace,
pod, container (absent for a pod's sandbox) and container_id (12 characters); nothing is added
for a host process. The cgroup id is asked first (it is what the kernel said at the event, and
still names a container whose processes have exited); the pid is read now, from /proc.

A line is passed through unchanged when it cannot be read (not JSON, not logfmt, no regex
match), names neither key, gives a key twice, or holds a value that is not a pid or cgroup id.
At the end (end of input, SIGINT, SIGTERM) one line on stderr counts the lines of each kind.

The tool must print nothing a process chose before the keys, and no name's newline raw:
bpftrace's %s does (a process named "x\\n1 4242 " prints a line "1 4242 " of its own). The
bpftrace program in examples/bpftrace/ prints such names escaped:

  bpftrace -B line examples/bpftrace/containerd-connect.bt |
    ociresolve enrich --regex '^(?P<pid>\\d+) (?P<cgroup_id>\\d+) '
"""


def add_commands(commands: Commands) -> None:
    enrich = commands.add_parser(
        "enrich",
        help="add the pod and container to another tool's event lines (a filter)",
        description="Read event lines on stdin and write each to stdout with the pod and "
        "container of its pid or cgroup id added: JSON lines (the default), logfmt, or any "
        "text with --regex. Exit 2 when no index can be had (no daemon, and the node cannot "
        "be indexed here).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    form = enrich.add_mutually_exclusive_group()
    form.add_argument(
        "--logfmt", action="store_true", help="the lines are logfmt (key=value pairs)"
    )
    form.add_argument(
        "--regex",
        metavar="REGEX",
        help="the lines are text: REGEX's named groups pid and/or cgroup_id hold the keys "
        "(anchor it, before anything a process names, e.g. '^(?P<pid>\\d+) '; see below)",
    )
    enrich.add_argument(
        "--pid-field",
        default="pid",
        metavar="NAME",
        help="JSON: the pid's key, a dotted path for a nested one (event.pid); logfmt: its key; "
        "'' for none (default: pid)",
    )
    enrich.add_argument(
        "--cgroup-field",
        default="cgroup_id",
        metavar="NAME",
        help="the cgroup id's (bpf_get_current_cgroup_id()) key, as --pid-field "
        "(default: cgroup_id)",
    )
    enrich.add_argument(
        "--prefix", default="k8s_", help="the added fields' names begin with it (default: k8s_)"
    )
    enrich.add_argument(
        "--sync-timeout",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for the daemon's index before indexing the node here (default: 2)",
    )
    add_daemon_options(enrich, "mirror")
    add_node_options(enrich)
    add_cri_options(enrich)
    enrich.set_defaults(run=_enrich)


def _enrich(args: argparse.Namespace) -> int:
    from ociresolve.enrich.formats import Format, JsonFormat, LogfmtFormat, TextFormat
    from ociresolve.enrich.lookup import Lookup
    from ociresolve.enrich.stream import Enricher, fd_reader, fd_writer
    from ociresolve.render import logfmt_line

    form: Format
    try:
        if args.regex is not None:
            form = TextFormat(args.regex)
        elif args.logfmt:
            form = LogfmtFormat(args.pid_field, args.cgroup_field)
        else:
            form = JsonFormat(args.pid_field, args.cgroup_field)
    except ValueError as exc:
        _say(str(exc))
        return EXIT_ERROR
    try:
        resolver = _resolver(args)
    except ociresolve.OciresolveError as exc:
        _say(str(exc))
        return EXIT_ERROR
    enricher = Enricher(form, Lookup(resolver, args.prefix))
    sys.stdout.flush()
    try:
        with _stopped_by_sigterm():
            enricher.run(fd_reader(sys.stdin.fileno()), fd_writer(sys.stdout.fileno()))
    except KeyboardInterrupt:
        pass
    finally:
        resolver.close()
    fields = [*enricher.counts.fields(), ("pid_mismatches", enricher.lookup.mismatches)]
    _say(logfmt_line(fields))
    return EXIT_OK


def _resolver(args: argparse.Namespace) -> ociresolve.Resolver | ociresolve.RemoteResolver:
    """The daemon's index, mirrored, when it answers (and is to be asked); else the node's,
    indexed here."""
    asks = not args.no_daemon and (
        args.daemon_socket is not None or (args.host_root == "/" and args.runtime_roots is None)
    )
    if asks:
        remote = ociresolve.RemoteResolver(args.daemon_socket, host_root=args.host_root)
        try:
            if not os.path.exists(remote.client.socket):  # not running: no need to wait
                raise ociresolve.DaemonUnavailable(remote.client.socket, "no such socket")
            remote.start(sync_timeout=args.sync_timeout)
        except ociresolve.DaemonUnavailable as exc:
            _say(f"{exc}; indexing the node here instead")
        else:
            _say(f"resolving through the daemon at {remote.client.socket}")
            return remote
    resolver = ociresolve.Resolver(
        host_root=args.host_root,
        runtime_roots=args.runtime_roots,
        cri=not args.no_cri,
        cri_socket=args.cri_socket,
    )
    resolver.start()
    _say(f"indexed the node here ({len(resolver.containers())} containers)")
    return resolver


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM ends the filter as SIGINT does (with the counts line)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(message: str) -> None:
    """A line on stderr (stdout is the events')."""
    print(f"ociresolve enrich: {message}", file=sys.stderr, flush=True)
