"""The shared option groups (``ociresolve.options``): each option means the same in every command
that takes it, and only ``serve`` and ``report-deprecations`` read ``OCIRESOLVE_*`` variables."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from ociresolve.cli import _parser

# The words before each command's options.
COMMANDS: dict[str, list[str]] = {
    "inspect": ["inspect", "/x"],
    "lookup": ["lookup", "42"],
    "list": ["list"],
    "serve": ["serve"],
    "trace connect": ["trace", "connect"],
    "deprecations": ["deprecations"],
    "report-deprecations": ["report-deprecations"],
}
# The commands that take each shared option.
TAKEN_BY: dict[str, set[str]] = {
    "--host-root": {
        "lookup",
        "list",
        "serve",
        "trace connect",
        "deprecations",
        "report-deprecations",
    },
    "--runtime-root": {"lookup", "list", "serve", "trace connect", "report-deprecations"},
    "--grace-period": {"serve", "report-deprecations"},
    "--cri-socket": {"lookup", "serve", "trace connect", "report-deprecations"},
    "--no-cri": {"lookup", "serve", "trace connect", "report-deprecations"},
    "--daemon-socket": {"lookup", "list", "trace connect", "deprecations"},
    "--no-daemon": {"lookup", "list"},
    "--containerd-socket": {"deprecations", "serve", "report-deprecations"},
    "--json": {"inspect", "lookup", "list", "deprecations"},
}
# Those whose defaults come from the environment first.
WITH_VARIABLES = {"serve", "report-deprecations"}


@pytest.fixture(autouse=True)
def no_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parsers read the real environment when built (serve's defaults)."""
    for name in [n for n in os.environ if n.startswith("OCIRESOLVE_")]:
        monkeypatch.delenv(name)


def parse(command: str, *argv: str) -> argparse.Namespace:
    return _parser().parse_args([*COMMANDS[command], *argv])


def subparser(command: str) -> argparse.ArgumentParser:
    parser = _parser()
    for word in command.split():
        (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[word]
    return parser


def options_of(command: str) -> dict[str, argparse.Action]:
    return {
        option: action
        for action in subparser(command)._actions
        for option in action.option_strings
        if option.startswith("--")
    }


def takers(option: str) -> list[str]:
    return sorted(TAKEN_BY[option])


def test_the_table_is_complete() -> None:
    for command in COMMANDS:
        have = {option for option in options_of(command) if option in TAKEN_BY}
        assert have == {option for option, users in TAKEN_BY.items() if command in users}, command


@pytest.mark.parametrize("command", takers("--runtime-root"))
def test_runtime_roots_replace_the_default_list(command: str) -> None:
    assert parse(command).runtime_roots is None  # the built-in list (HostPaths' defaults)
    args = parse(command, "--runtime-root", "/a", "--runtime-root=/b")
    assert args.runtime_roots == ["/a", "/b"]


@pytest.mark.parametrize("command", sorted(WITH_VARIABLES))
def test_runtime_roots_replace_the_variables_list(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCIRESOLVE_RUNTIME_ROOTS", "/env/a,/env/b")
    assert parse(command).runtime_roots == ["/env/a", "/env/b"]
    assert parse(command, "--runtime-root", "/cli").runtime_roots == ["/cli"]


@pytest.mark.parametrize("command", takers("--runtime-root"))
def test_parsing_twice_does_not_accumulate(command: str) -> None:
    parser = _parser()
    parser.parse_args([*COMMANDS[command], "--runtime-root", "/one"])
    assert parser.parse_args(COMMANDS[command]).runtime_roots is None


@pytest.mark.parametrize("command", takers("--host-root"))
def test_host_root(command: str) -> None:
    assert parse(command).host_root == "/"
    assert parse(command, "--host-root", "/host").host_root == "/host"


@pytest.mark.parametrize("command", takers("--no-cri"))
def test_cri(command: str) -> None:
    args = parse(command)
    assert (args.cri_socket, args.no_cri) == (None, False)
    args = parse(command, "--cri-socket", "/run/x.sock", "--no-cri")
    assert (args.cri_socket, args.no_cri) == ("/run/x.sock", True)


def test_list_never_asks_the_cri() -> None:
    args = parse("list")
    assert (args.cri_socket, args.no_cri) == (None, True)


@pytest.mark.parametrize("command", takers("--daemon-socket"))
def test_daemon_socket(command: str) -> None:
    assert parse(command).daemon_socket is None
    assert parse(command, "--daemon-socket", "/run/d.sock").daemon_socket == "/run/d.sock"


@pytest.mark.parametrize("command", takers("--no-daemon"))
def test_no_daemon(command: str) -> None:
    assert parse(command).no_daemon is False
    assert parse(command, "--no-daemon").no_daemon is True


@pytest.mark.parametrize("command", takers("--containerd-socket"))
def test_containerd_socket(command: str) -> None:
    assert parse(command).containerd_socket is None
    assert parse(command, "--containerd-socket", "/c.sock").containerd_socket == "/c.sock"


@pytest.mark.parametrize("command", takers("--json"))
def test_json(command: str) -> None:
    assert parse(command).json is False
    assert parse(command, "--json").json is True


@pytest.mark.parametrize("option", sorted(set(TAKEN_BY) - {"--daemon-socket", "--json"}))
def test_one_help_text_per_option(option: str) -> None:
    """The same words everywhere; serve's also name the variable. (``--daemon-socket`` says how
    each command uses the daemon, ``--json`` whether it writes one line or many.)"""
    texts = {
        re.sub(r" \[OCIRESOLVE_[^\]]*\]", "", options_of(command)[option].help or "")
        for command in TAKEN_BY[option]
    }
    assert len(texts) == 1, texts
    for command in TAKEN_BY[option] & WITH_VARIABLES:
        assert "[OCIRESOLVE_" in (options_of(command)[option].help or ""), command


def test_the_runtime_root_help_says_it_replaces() -> None:
    assert "replace the default list" in (options_of("lookup")["--runtime-root"].help or "")


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - WITH_VARIABLES))
def test_only_the_daemon_reads_variables(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OCIRESOLVE_HOST_ROOT=/host`` is the DaemonSet's, for ``serve``: a ``lookup`` run in the
    same pod still asks the daemon for the node as it is."""
    monkeypatch.setenv("OCIRESOLVE_HOST_ROOT", "/env-host")
    monkeypatch.setenv("OCIRESOLVE_RUNTIME_ROOTS", "/env/a")
    monkeypatch.setenv("OCIRESOLVE_NO_CRI", "1")
    monkeypatch.setenv("OCIRESOLVE_CONTAINERD_SOCKET", "/env/c.sock")
    args = parse(command)
    assert getattr(args, "host_root", "/") == "/"
    assert getattr(args, "runtime_roots", None) is None
    if command != "list":
        assert getattr(args, "no_cri", False) is False
    assert getattr(args, "containerd_socket", None) is None
    for option in options_of(command).values():
        assert "[OCIRESOLVE_" not in (option.help or "") or option.dest == "daemon_socket"


@pytest.mark.parametrize("command", sorted(WITH_VARIABLES))
def test_the_daemon_reads_variables(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIRESOLVE_HOST_ROOT", "/env-host")
    monkeypatch.setenv("OCIRESOLVE_NO_CRI", "1")
    monkeypatch.setenv("OCIRESOLVE_CONTAINERD_SOCKET", "/env/c.sock")
    args = parse(command)
    assert (args.host_root, args.no_cri, args.containerd_socket) == (
        "/env-host",
        True,
        "/env/c.sock",
    )
    assert parse(command, "--no-cri=false").no_cri is False  # the command line undoes it


def test_no_cri_never_takes_the_pid() -> None:
    """Without a variable to undo, ``--no-cri`` is a plain flag: the next word stays the PID."""
    args = parse("lookup", "--no-cri")
    assert (args.pid, args.no_cri) == (42, True)
    args = _parser().parse_args(["lookup", "--no-cri", "7"])
    assert (args.pid, args.no_cri) == (7, True)


@pytest.mark.parametrize("command", takers("--grace-period"))
def test_bad_values_are_usage_errors(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(command, "--grace-period", "soon")
    assert caught.value.code == 2
    assert "not a number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "soon"])
def test_a_deadline_is_more_than_nothing(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every call has a deadline: ``--timeout 0`` is a usage error, not a call without one."""
    with pytest.raises(SystemExit) as caught:
        parse("deprecations", "--timeout", value)
    assert caught.value.code == 2
    assert "--timeout" in capsys.readouterr().err
