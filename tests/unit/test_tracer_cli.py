"""``ociresolve trace connect`` wiring, without BPF: options to the probe and the resolver,
SIGTERM to a clean stop with a summary, clear errors, and no BCC for the other commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from fakehost import (
    CONTAINERD_ROOT,
    FakeHost,
    Pod,
    containerd_cgroup_file,
    containerd_spec,
    host_cgroup_file,
    new_id,
)
from tracerfakes import FakeProbeKind, event, parse_logfmt

import ociresolve.tracer.connect
from ociresolve.cli import main

APP_PID, HOST_PID = 4242, 1


@pytest.fixture
def kind(monkeypatch: pytest.MonkeyPatch) -> FakeProbeKind:
    fake = FakeProbeKind()
    monkeypatch.setattr(ociresolve.tracer.connect, "load_probe", lambda: fake)
    monkeypatch.setenv("NODE_NAME", "node-7")
    return fake


def trace(host: FakeHost, *options: str) -> list[str]:
    return [
        "trace",
        "connect",
        *options,
        "--host-root",
        str(host.root),
        "--runtime-root",
        CONTAINERD_ROOT,
        "--no-cri",
    ]


def test_a_container_and_a_host_process_end_to_end(
    host: FakeHost, kind: FakeProbeKind, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = Pod.new("checkout-7d4b9c", "shop")
    app = new_id()
    host.write(host.containerd_bundle(app), containerd_spec(app, pod))
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    host.set_proc_cgroup(HOST_PID, host_cgroup_file())
    kind.batches = [[event(tgid=APP_PID, cgroup_id=99, comm="client"), event(tgid=HOST_PID)]]
    kind.lost = 4
    before = signal.getsignal(signal.SIGTERM)

    assert main(trace(host)) == 0  # the fake probe sends SIGTERM once its batches are out

    assert signal.getsignal(signal.SIGTERM) is before
    (probe,) = kind.made
    assert probe.closed
    assert probe.options == {
        "families": ("unix",),
        "unix_paths": list(kind.DEFAULT_SOCKETS),
        "ports": [],
        "exclude_comms": list(kind.DEFAULT_EXCLUDED_COMMS),
        "include_comms": [],
        "lifetimes": False,
        "activity": False,
        "ignore_tgid": None,
    }
    lines = [dict(parse_logfmt(line)) for line in capsys.readouterr().out.splitlines()]
    started, container, host_line, stopped = lines
    assert started["msg"] == "containerd socket tracer started"
    assert started["node"] == "node-7" and started["cri"] == "off"
    assert started["sockets"] == ",".join(kind.DEFAULT_SOCKETS)
    assert container["pod"] == "shop/checkout-7d4b9c" and container["container"] == "app"
    assert container["container_id"] == app[:12] and container["source"] == "index"
    assert host_line["source"] == "host" and host_line["pid"] == "1"
    assert stopped["msg"] == "containerd socket tracer stopped"
    assert (stopped["events"], stopped["resolved"], stopped["host"], stopped["lost"]) == (
        "2",
        "1",
        "1",
        "4",
    )


def test_filters_reach_the_probe(
    host: FakeHost, kind: FakeProbeKind, capsys: pytest.CaptureFixture[str]
) -> None:
    options = [
        "--socket=/a.sock",
        "--socket=/b/*",
        "--family=all",
        "--port=10250",
        "--exclude-comm=ctr",
        "--exclude-comm=noisy",
        "--include-comm=client",
        "--output=json",
        "--dedup=2.5",
        "--summary-interval=0",
    ]
    assert main(trace(host, *options)) == 0
    assert kind.made[0].options == {
        "families": ("all",),
        "unix_paths": ["/a.sock", "/b/*"],
        "ports": [10250],
        "exclude_comms": [*kind.DEFAULT_EXCLUDED_COMMS, "noisy"],
        "include_comms": ["client"],
        "lifetimes": False,
        "activity": False,
        "ignore_tgid": None,
    }
    started, stopped = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert started["dedup"] == 2.5 and started["ports"] == [10250]
    assert stopped["msg"] == "containerd socket tracer stopped"
    assert main(trace(host, "--exclude-comm=mine", "--no-default-excludes")) == 0
    assert kind.made[1].options["exclude_comms"] == ["mine"]


def test_tracer_unavailable_is_a_clear_error(
    host: FakeHost, kind: FakeProbeKind, capsys: pytest.CaptureFixture[str]
) -> None:
    kind.fail_start = "not enough privileges to load BPF: run as root"
    assert main(trace(host)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "ociresolve trace connect: not enough privileges to load BPF: run as root\n"
    assert kind.made[0].closed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--port=80"], "--port needs --family inet, inet6 or all"),
        (["--port=0", "--family=inet"], "port out of range"),
        (["--dedup=-1"], "must be 0 or more seconds"),
        (["--family=ax25"], "invalid choice"),
        (["--output=xml"], "invalid choice"),
    ],
)
def test_bad_options(
    host: FakeHost,
    kind: FakeProbeKind,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    try:
        code = main(trace(host, *options))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err
    assert kind.made == []


def test_only_the_trace_command_loads_the_probe() -> None:
    script = textwrap.dedent(
        """
        import sys
        from ociresolve.cli import _parser, main
        args = _parser().parse_args(["trace", "connect", "--socket", "/x"])
        assert args.sockets == ["/x"], args
        assert main(["list", "--host-root", "/var/empty"]) == 0
        heavy = ("bcc", "ociresolve.tracer.probe", "ociresolve.tracer.connect")
        loaded = [m for m in heavy if m in sys.modules]
        assert not loaded, loaded
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_help_names_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ociresolve", "trace", "connect", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--socket", "--family", "--port", "--exclude-comm", "--include-comm"):
        assert option in result.stdout
    for option in ("--output", "--dedup", "--summary-interval", "--runtime-root", "--no-cri"):
        assert option in result.stdout
