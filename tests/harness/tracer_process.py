"""``ociresolve trace connect`` run as a user runs it: a process whose lines are read as they
come, for the end-to-end tests and the demo."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .daemon_process import Enter, next_matching, spawn
from .errors import HarnessError
from .startstop import StartStop

STARTED_MSG = "containerd socket tracer started"
START_TIMEOUT = 60.0  # compiling and loading the BPF program takes 0.5-2.5 s on busy cores
_ROOT = Path(__file__).resolve().parents[2]


class TracerProcess(StartStop):
    """``python -m ociresolve trace connect ARGS`` with its stdout read line by line (``python``:
    another interpreter, such as a fresh virtual environment's, run from ``cwd``).

    ``start()`` (or ``with``) waits for the start-up line: from then on the probe is attached.
    ``wait_for(predicate)`` returns the first line not yet consumed that matches; ``stop()``
    sends SIGTERM and returns the lines left (the final summary last). ``on_line`` sees every
    line as it arrives (the demo prints them). ``enter`` runs it where the runtime runs, as
    for ``DaemonProcess``.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        on_line: Callable[[str], None] | None = None,
        python: str = sys.executable,
        cwd: Path = _ROOT,
        enter: Enter | None = None,
    ) -> None:
        self.command = [python, "-m", "ociresolve", "trace", "connect", *args]
        self.enter = enter
        self.on_line = on_line
        self.cwd = cwd
        self.lines: list[str] = []  # every line so far
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.stderr = ""

    def start(self, timeout: float = START_TIMEOUT) -> TracerProcess:
        self._process = spawn(self.command, self.cwd, self.enter)
        self._reader = threading.Thread(target=self._read, name="tracer-stdout", daemon=True)
        self._reader.start()
        try:
            self.wait_for(lambda line: STARTED_MSG in line, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The next line matching ``predicate``; lines before it are consumed."""
        return next_matching(
            self._queue, predicate, timeout, self._why, item="tracer line", process="the tracer"
        )

    def stop(self, timeout: float = 20.0) -> list[str]:
        """SIGTERM, then the lines not consumed yet. Raises if it does not exit with 0."""
        process = self._process
        if process is None:
            return []
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        assert process.stderr is not None
        self.stderr = process.stderr.read()
        process.stderr.close()
        rest = []
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            rest.append(line)
        if process.returncode != 0:
            raise HarnessError(
                f"{' '.join(self.command)} exited with {process.returncode}\n{self.stderr}"
            )
        return rest

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)
            self._queue.put(line)
        process.stdout.close()
        self._queue.put(None)

    def _why(self, what: str) -> str:
        process = self._process
        stderr = ""
        if process is not None and process.poll() is not None and process.stderr is not None:
            stderr = process.stderr.read()
        tail = "\n".join(self.lines[-20:])
        return f"{what}: {' '.join(self.command)}\n--- stdout (tail) ---\n{tail}\n{stderr}"
