"""``ociresolve serve`` run as a DaemonSet runs it: a process of its own, started on a node's
runtime state directory and stopped with SIGTERM, for the end-to-end tests and benchmarks.

Its log lines (JSON, on stderr) and its stdout (the tracer's lines, with ``--trace-connect``)
are read as they come. Nothing is looked up or killed by name: the process is the one started
here, stopped by its PID.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from .errors import HarnessError
from .startstop import StartStop

Enter = Callable[[Sequence[str], Path], list[str]]
"""How to run a command line somewhere else: ``(argv, cwd) -> argv`` (``Containerd.command``)."""

READY_MSG = "ready"
START_TIMEOUT = 60.0  # the tracer's BPF program, with --trace-connect, takes up to 2.5 s
STOP_TIMEOUT = 10.0
_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def spawn(command: Sequence[str], cwd: Path, enter: Enter | None) -> subprocess.Popen[str]:
    """``command`` run in ``cwd``, where ``enter`` says (else here), unbuffered, its stdout and
    stderr piped as text."""
    return subprocess.Popen(
        enter(command, cwd) if enter is not None else list(command),
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="backslashreplace",
    )


def next_matching(
    items: queue.Queue[T | None],
    predicate: Callable[[T], bool],
    timeout: float,
    why: Callable[[str], str],
    *,
    item: str,
    process: str,
) -> T:
    """The next of ``items`` (a reader thread's, None once its stream ended) that matches
    ``predicate``; those before it are consumed. Raises ``HarnessError``, explained by ``why``,
    when no ``item`` matched within ``timeout`` seconds or once ``process`` exited."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HarnessError(why(f"no matching {item} within {timeout}s"))
        try:
            found = items.get(timeout=remaining)
        except queue.Empty:
            continue
        if found is None:
            items.put(None)  # keep reporting the end
            raise HarnessError(why(f"{process} exited"))
        if predicate(found):
            return found


class DaemonProcess(StartStop):
    """``python -m ociresolve serve --socket SOCKET --log-format json ARGS``.

    ``enter`` says how to run it where the runtime runs (``Containerd.command``: in the pure
    cgroup v2 view's mount namespace); by default, here. ``start()`` (or ``with``) returns once
    the daemon logged that it is ready: its initial scan is done and its API answers on
    ``socket``. ``stop()`` sends SIGTERM, waits, and raises
    ``HarnessError`` unless it exited with 0; it returns the seconds from the signal to the
    exit. ``logs`` holds the daemon's log records (dicts), ``lines`` its stdout lines.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        enter: Enter | None = None,
    ) -> None:
        self.socket = Path(socket)
        self.enter = enter
        self.command = [
            sys.executable,
            "-m",
            "ociresolve",
            "serve",
            "--socket",
            str(self.socket),
            "--log-format",
            "json",
            *args,
        ]
        self.logs: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._logs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._process: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        if self._process is None:
            raise HarnessError("the daemon is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        if self._process is not None:
            raise HarnessError("the daemon already runs")
        self.returncode = None
        self._logs = queue.Queue()
        self._process = spawn(self.command, _ROOT, self.enter)
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_logs, args=(self._process.stderr,), daemon=True),
            threading.Thread(target=self._read_lines, args=(self._process.stdout,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            self.wait_for_log(lambda record: record.get("msg") == READY_MSG, timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return  # stopped by the caller already
        if exc_type is None:
            self.stop()
        else:
            self.kill()  # the test's error is the one worth reporting

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The next log record matching ``predicate``; records before it are consumed."""
        return next_matching(
            self._logs, predicate, timeout, self._why, item="log record", process="the daemon"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM; the seconds until it exited. Raises unless it exits with 0 in time."""
        process = self._process
        if process is None:
            raise HarnessError("the daemon is not running")
        signalled = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise HarnessError(self._why(f"still running {timeout}s after SIGTERM")) from None
        elapsed = time.monotonic() - signalled
        self._finish()
        if self.returncode != 0:
            raise HarnessError(self._why(f"exited with {self.returncode} after SIGTERM"))
        return elapsed

    def kill(self) -> None:
        """SIGKILL (a failed start, a failed test): no exit status is checked."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._finish()

    def _finish(self) -> None:
        process, self._process = self._process, None
        assert process is not None
        self.returncode = process.returncode
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)

    def _read_logs(self, stream: IO[str]) -> None:
        for raw in stream:
            text = raw.rstrip("\n")
            try:
                record = json.loads(text)
            except ValueError:
                record = {"msg": text, "level": "raw"}  # a traceback, say: keep it for _why
            if not isinstance(record, dict):
                record = {"msg": text, "level": "raw"}
            self.logs.append(record)
            self._logs.put(record)
        stream.close()
        self._logs.put(None)

    def _read_lines(self, stream: IO[str]) -> None:
        for raw in stream:
            self.lines.append(raw.rstrip("\n"))
        stream.close()

    def _why(self, what: str) -> str:
        tail = "\n".join(json.dumps(r) for r in self.logs[-20:])
        return f"{what}: {' '.join(self.command)}\n--- log (tail) ---\n{tail}"
