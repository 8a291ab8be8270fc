"""Importing ociresolve has no side effects: no thread, no file, no socket, no grpc."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_has_no_side_effects() -> None:
    probe = textwrap.dedent(
        """
        import os, sys, threading
        before = set(os.listdir("/proc/self/fd"))
        import ociresolve
        after = set(os.listdir("/proc/self/fd"))
        assert threading.active_count() == 1, threading.enumerate()
        assert before == after, (before, after)
        lazy = ("grpc", "google.protobuf", "bcc")
        heavy = [m for m in lazy if m in sys.modules]
        assert not heavy, heavy
        print(sorted(ociresolve.__all__))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
