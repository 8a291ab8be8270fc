"""`ociresolve inspect`: output formats and exit codes, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from contract import META_FIELDS

from ociresolve.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bundles"
CRIO = FIXTURES / "cri-o" / "2023-02-container-coredns-ig-blog"
PODMAN = FIXTURES / "podman" / "2021-09-standalone-container-inspect-docs"


def test_json_lines_for_a_kubernetes_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(CRIO)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == META_FIELDS | {"path", "kubernetes"}
    assert record["kubernetes"] is True
    assert record["pod_name"] == "coredns-6d4b75cb6d-4mtdm"
    assert record["path"] == str(CRIO / "config.json")


def test_not_kubernetes_exits_1_and_says_what_is_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(CRIO), str(PODMAN / "config.json")]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kubernetes"] for r in records] == [True, False]
    assert records[1]["runtime"] == "podman"


def test_a_tree_is_scanned(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(FIXTURES / "cri-o")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == len(list((FIXTURES / "cri-o").glob("*/config.json")))


def test_table_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(CRIO)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["NAMESPACE", "POD", "CONTAINER", "TYPE", "RUNTIME"]
    assert row.split()[:6] == [
        "kube-system",
        "coredns-6d4b75cb6d-4mtdm",
        "coredns",
        "container",
        "cri-o",
        "438e2ba9d597",
    ]


def test_errors_name_the_file_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text("{not json")
    assert main(["inspect", str(tmp_path), str(CRIO)]) == 2
    captured = capsys.readouterr()
    assert str(tmp_path / "config.json") in captured.err
    assert "coredns" in captured.out  # the good bundle is still printed
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no OCI bundle" in capsys.readouterr().err


def test_untrusted_values_cannot_forge_table_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "a" * 64,
            "io.kubernetes.cri.sandbox-name": "evil\nNAMESPACE forged\x1b[2J",
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(spec))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2
    assert "\x1b" not in out
    assert "evil\\nNAMESPACE" in out


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ociresolve", "inspect", "--json", str(CRIO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["container_name"] == "coredns"
