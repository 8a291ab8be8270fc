"""``ociresolve serve``'s options: each flag's ``OCIRESOLVE_*`` variable, the command line
winning over it, and bad values as argparse errors (exit 2), never tracebacks."""

from __future__ import annotations

import argparse
import os
import pwd
import re
from collections.abc import Mapping

import pytest

from ociresolve.api.client import DEFAULT_SOCKET
from ociresolve.daemon.options import add_serve_arguments


def parse(argv: list[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ociresolve serve")
    add_serve_arguments(parser, environ={} if environ is None else environ)
    return parser.parse_args(argv)


def parse_error(
    argv: list[str], environ: Mapping[str, str], capsys: pytest.CaptureFixture[str]
) -> str:
    with pytest.raises(SystemExit) as caught:
        parse(argv, environ)
    assert caught.value.code == 2
    return capsys.readouterr().err


def test_defaults() -> None:
    args = parse([])
    assert args.socket == DEFAULT_SOCKET
    assert args.socket_mode == 0o600
    assert args.socket_owner is None
    assert args.host_root == "/"
    assert args.runtime_roots is None
    assert args.grace_period == 5.0
    assert args.cri_socket is None
    assert args.no_cri is False
    assert args.metrics_address == ""
    assert (args.log_format, args.log_level) == ("logfmt", "info")
    assert args.trace_connect is False


ROOT_USER = pwd.getpwuid(0).pw_name

# (variable, value, attribute, parsed value)
ENVIRONMENT = [
    ("OCIRESOLVE_SOCKET", "/run/x/api.sock", "socket", "/run/x/api.sock"),
    ("OCIRESOLVE_SOCKET_MODE", "660", "socket_mode", 0o660),
    ("OCIRESOLVE_SOCKET_OWNER", "0:0", "socket_owner", (0, 0)),
    ("OCIRESOLVE_HOST_ROOT", "/host", "host_root", "/host"),
    ("OCIRESOLVE_RUNTIME_ROOTS", "/run/containerd,/run/crio", "runtime_roots", None),
    ("OCIRESOLVE_GRACE_PERIOD", "2.5", "grace_period", 2.5),
    ("OCIRESOLVE_CRI_SOCKET", "/run/cri.sock", "cri_socket", "/run/cri.sock"),
    ("OCIRESOLVE_NO_CRI", "true", "no_cri", True),
    ("OCIRESOLVE_METRICS_ADDRESS", ":9090", "metrics_address", ":9090"),
    ("OCIRESOLVE_LOG_FORMAT", "json", "log_format", "json"),
    ("OCIRESOLVE_LOG_LEVEL", "debug", "log_level", "debug"),
    ("OCIRESOLVE_TRACE_CONNECT", "1", "trace_connect", True),
]


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), ENVIRONMENT)
def test_each_variable(variable: str, value: str, attribute: str, expected: object) -> None:
    args = parse([], {variable: value})
    if attribute == "runtime_roots":
        expected = ["/run/containerd", "/run/crio"]
    assert getattr(args, attribute) == expected


def test_the_help_names_every_variable() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, environ={})
    text = parser.format_help()
    for variable, *_ in ENVIRONMENT:
        assert variable in text.replace("\n", " ").replace("  ", ""), variable


def test_every_serve_flag_has_a_variable() -> None:
    """The module promises an OCIRESOLVE_* variable for each of the daemon's own options (a
    DaemonSet sets them); the tracer's --trace-* options are flags, but for --trace-connect."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, environ={})
    missing = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings
        and action.dest != "help"
        and not (action.option_strings[0].startswith("--trace-") and action.dest != "trace_connect")
        and not re.search(r"\[OCIRESOLVE_[A-Z_]+", action.help or "")
    ]
    assert missing == []


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " 1 "])
def test_true_values(value: str) -> None:
    assert parse([], {"OCIRESOLVE_NO_CRI": value}).no_cri is True


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_false_values(value: str) -> None:
    assert parse([], {"OCIRESOLVE_NO_CRI": value}).no_cri is False


def test_an_unknown_boolean_is_an_error_not_false(capsys: pytest.CaptureFixture[str]) -> None:
    """OCIRESOLVE_NO_CRI=enabled must not quietly mean "ask the CRI"."""
    err = parse_error([], {"OCIRESOLVE_NO_CRI": "enabled"}, capsys)
    assert "OCIRESOLVE_NO_CRI" in err


def test_the_command_line_wins() -> None:
    environ = {
        "OCIRESOLVE_SOCKET": "/env.sock",
        "OCIRESOLVE_SOCKET_MODE": "666",
        "OCIRESOLVE_HOST_ROOT": "/env-host",
        "OCIRESOLVE_GRACE_PERIOD": "9",
        "OCIRESOLVE_CRI_SOCKET": "/env-cri.sock",
        "OCIRESOLVE_METRICS_ADDRESS": ":1",
        "OCIRESOLVE_LOG_FORMAT": "json",
        "OCIRESOLVE_LOG_LEVEL": "error",
    }
    args = parse(
        [
            "--socket=/cli.sock",
            "--socket-mode=640",
            "--host-root=/cli-host",
            "--grace-period=1",
            "--cri-socket=/cli-cri.sock",
            "--metrics-address=127.0.0.1:2",
            "--log-format=logfmt",
            "--log-level=warning",
        ],
        environ,
    )
    assert args.socket == "/cli.sock"
    assert args.socket_mode == 0o640
    assert args.host_root == "/cli-host"
    assert args.grace_period == 1.0
    assert args.cri_socket == "/cli-cri.sock"
    assert args.metrics_address == "127.0.0.1:2"
    assert (args.log_format, args.log_level) == ("logfmt", "warning")


def test_runtime_roots_on_the_command_line_replace_the_variable() -> None:
    environ = {"OCIRESOLVE_RUNTIME_ROOTS": "/env/a,/env/b"}
    args = parse(["--runtime-root", "/cli/a"], environ)
    assert args.runtime_roots == ["/cli/a"]


def test_parsing_twice_does_not_accumulate_runtime_roots() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, environ={"OCIRESOLVE_RUNTIME_ROOTS": "/env/a"})
    parser.parse_args(["--runtime-root", "/one"])
    assert parser.parse_args([]).runtime_roots == ["/env/a"]


def test_an_empty_variable_is_the_default() -> None:
    args = parse([], {"OCIRESOLVE_SOCKET_MODE": "", "OCIRESOLVE_RUNTIME_ROOTS": ""})
    assert args.socket_mode == 0o600
    assert args.runtime_roots is None


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--socket-mode=rw"], {}, "not an octal mode"),
        (["--socket-mode=1777"], {}, "mode out of range"),
        (["--socket-mode=-1"], {}, "mode out of range"),
        ([], {"OCIRESOLVE_SOCKET_MODE": "0x1ff"}, "not an octal mode"),
        (["--socket-owner=no-such-user-here"], {}, "no such user"),
        (["--socket-owner=0:no-such-group-here"], {}, "no such group"),
        ([], {"OCIRESOLVE_SOCKET_OWNER": "no-such-user-here"}, "no such user"),
        (["--grace-period=soon"], {}, "not a number of seconds"),
        (["--grace-period=-1"], {}, "must be 0 or more seconds"),
        (["--grace-period=inf"], {}, "must be 0 or more seconds"),
        (["--grace-period=nan"], {}, "must be 0 or more seconds"),
        ([], {"OCIRESOLVE_GRACE_PERIOD": "-5"}, "must be 0 or more seconds"),
        (["--log-format=xml"], {}, "invalid choice"),
        (["--log-level=verbose"], {}, "invalid choice"),
        (["--trace-port=0"], {}, "port out of range"),
    ],
)
def test_bad_values_are_usage_errors(
    argv: list[str],
    environ: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert message in parse_error(argv, environ, capsys)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OCIRESOLVE_LOG_FORMAT", "xml"), ("OCIRESOLVE_LOG_LEVEL", "verbose")],
)
def test_bad_choices_in_the_environment_are_usage_errors(
    variable: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse checks ``choices`` against the command line only, not against a default."""
    err = parse_error([], {variable: value}, capsys)
    assert value in err


@pytest.mark.parametrize(
    ("text", "owner"),
    [
        (f"{ROOT_USER}", (0, 0)),
        ("0", (0, 0)),
        ("12345", (12345, 12345)),  # a number nobody is named: the user's own group number
        ("12345:54321", (12345, 54321)),
        (f"{ROOT_USER}:0", (0, 0)),
    ],
)
def test_socket_owner(text: str, owner: tuple[int, int]) -> None:
    assert parse(["--socket-owner", text]).socket_owner == owner


def test_the_real_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIRESOLVE_GRACE_PERIOD", "3")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args([]).grace_period == 3.0
    assert os.environ["OCIRESOLVE_GRACE_PERIOD"] == "3"


def test_tracer_options_under_their_own_names() -> None:
    args = parse(["--trace-connect", "--trace-socket=/x.sock", "--trace-output=json"])
    assert args.trace_connect is True
    assert args.sockets == ["/x.sock"]
    assert args.output == "json"
    assert args.socket == DEFAULT_SOCKET  # --socket stays the API's
