"""Process liveness, as the harness and its tests need it."""

from __future__ import annotations

from pathlib import Path


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs; a zombie counts as gone.

    Shims and container processes are reparented to PID 1 when they exit; some minimal init
    processes reap them seconds later, so their zombies linger in ``ps`` without running.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3, after the parenthesised command name (which may itself contain ") ").
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
