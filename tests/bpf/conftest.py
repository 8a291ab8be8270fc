"""Fixtures of the BPF probe tests: ``tracer`` importable, the storm helper built once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# `tracer` lives at the repository root, outside the installed `ociresolve` package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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
