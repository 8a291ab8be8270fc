"""Fixtures of the BPF probe tests: the storm helper, built once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

STORM_SOURCE = Path(__file__).with_name("connect_storm.c")


@pytest.fixture(scope="session")
def connect_storm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``connect_storm``, compiled with gcc (see its header for the arguments)."""
    binary = tmp_path_factory.mktemp("storm") / "connect_storm"
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(binary), str(STORM_SOURCE)],
        check=True,
        capture_output=True,
    )
    return binary
