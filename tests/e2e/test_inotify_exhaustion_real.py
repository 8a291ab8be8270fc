"""inotify exhausted for real: ``ociresolve serve`` as a process under the kernel's own limits.

The limits are lowered in a user namespace of the daemon's own (``unshare --user
--map-root-user``), whose ``user.max_inotify_instances`` and ``user.max_inotify_watches`` the
kernel enforces like ``fs.inotify.max_user_instances`` and ``fs.inotify.max_user_watches``
(the same counters, one level down): the same EMFILE and ENOSPC, without lowering a limit the
rest of the machine shares. No instance left: used up by another process of the namespace's
root. No watch left: the namespace's limit lowered to exactly what the ready daemon holds, then
raised again (from the namespace, with ``nsenter``) to see it heal.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

pytestmark = pytest.mark.root

REPO: Final = Path(__file__).resolve().parents[2]
TEMPLATE: Final = REPO / "fixtures/bundles/containerd/1.6.20-container-e2e-capture/config.json"
TASKS: Final = "run/containerd/io.containerd.runtime.v2.task"
CONTAINERS: Final = 30
WITHIN: Final = 30.0  # seconds: guards against a hang only
USERNS_LIMITS: Final = "/proc/sys/user"

# Holds inotify instances until EMFILE, says how many and its pid in argv[1], then waits to be
# killed (at most a minute).
_HOLDER: Final = """
import os, sys, time
from inotify_simple import INotify
held = []
try:
    while True:
        held.append(INotify())
except OSError:
    pass
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{os.getpid()} {len(held)}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


def _require_userns() -> None:
    probe = (
        subprocess.run(
            [
                "unshare",
                "--user",
                "--map-root-user",
                "sh",
                "-c",
                f"echo 1 > {USERNS_LIMITS}/max_inotify_instances",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if shutil.which("unshare")
        else None
    )
    if probe is not None and probe.returncode == 0:
        return
    reason = "needs unshare(1) and user namespaces with their own inotify limits"
    if probe is not None:
        reason += f": {probe.stderr.strip()}"
    if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1":
        pytest.fail(f"root: {reason} (OCIRESOLVE_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(f"root: {reason}")


@pytest.fixture
def host() -> Iterator[Path]:
    """A host root on a tmpfs, with containerd's ``k8s.io`` namespace directory."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="ociresolve-inotify-", dir=base))
    (root / TASKS / "k8s.io").mkdir(parents=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ociresolve-in-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def serve_command(host: Path, directory: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ociresolve.cli",
        "serve",
        "--host-root",
        str(host),
        "--runtime-root",
        "/run/containerd",
        "--socket",
        str(directory / "api.sock"),
        "--no-cri",
        *more,
    ]


def in_userns(script: str, *args: str) -> list[str]:
    """``script`` (sh) as root of a new user namespace, with ``args`` as ``$1``..."""
    return ["unshare", "--user", "--map-root-user", "sh", "-ec", script, "sh", *args]


def set_userns_limit(pid: int, name: str, value: int) -> None:
    subprocess.run(
        [
            "nsenter",
            "--user",
            "--target",
            str(pid),
            "sh",
            "-ec",
            f"echo {value} > {USERNS_LIMITS}/{name}",
        ],
        check=True,
        capture_output=True,
    )


def create_container(host: Path, namespace: str, *, pid: int | None) -> str:
    """A container as containerd creates one: its directory, ``config.json``, ``init.pid``."""
    container_id = secrets.token_hex(32)
    spec: dict[str, Any] = copy.deepcopy(json.loads(TEMPLATE.read_bytes()))
    spec["annotations"]["io.kubernetes.cri.sandbox-id"] = secrets.token_hex(32)
    spec["linux"]["cgroupsPath"] = f"/kubepods/besteffort/pod-test/{container_id}"
    bundle = host / TASKS / namespace / container_id
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    if pid is not None:
        (bundle / ".init.pid").write_text(str(pid))
        os.rename(bundle / ".init.pid", bundle / "init.pid")
    return container_id


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def total(text: str, name: str) -> float:
    """The sum of a metric's samples (0 when it has none)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    )


def wait_for(predicate: Callable[[], bool], what: str, within: float = WITHIN) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def inotify_watches(pid: int) -> int:
    """The inotify watches a process holds (its fds' ``fdinfo`` lines)."""
    count = 0
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            count += sum(line.startswith("inotify wd:") for line in fdinfo.read_text().split("\n"))
        except OSError:
            continue
    return count


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serve_with_no_inotify_instance_left_exits_3_naming_the_sysctl(
    host: Path, short_dir: Path
) -> None:
    _require_userns()
    held = short_dir / "held"
    script = (
        f"echo 2 > {USERNS_LIMITS}/max_inotify_instances\n"
        '"$1" -c "$2" "$3" </dev/null >/dev/null 2>&1 &\n'
        'while [ ! -e "$3" ]; do sleep 0.01; done\n'
        'shift 3\nexec "$@"\n'
    )
    process = subprocess.run(
        in_userns(script, sys.executable, _HOLDER, str(held), *serve_command(host, short_dir)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    holder_pid, instances = (int(word) for word in held.read_text().split())
    os.kill(holder_pid, signal.SIGKILL)
    assert instances == 2  # the other process holds every instance there is
    assert "Traceback" not in process.stderr, process.stderr
    assert "fs.inotify.max_user_instances" in process.stderr, process.stderr
    assert process.returncode == 3, process.stderr
    assert not (short_dir / "api.sock").exists()


def test_containers_created_with_no_inotify_watch_left_are_indexed_and_it_heals(
    host: Path, short_dir: Path
) -> None:
    _require_userns()
    port = free_port()
    command = serve_command(host, short_dir, "--metrics-address", f"127.0.0.1:{port}")
    daemon = subprocess.Popen(
        in_userns('exec "$@"', *command),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ready() -> bool:
        assert daemon.poll() is None, daemon.communicate()[1]
        try:
            return get(port, "/readyz")[0] == 200
        except OSError:
            return False

    def indexed() -> float:
        return total(get(port, "/metrics")[1], "ociresolve_containers")

    try:
        assert wait_for(ready, "ready")
        watches = inotify_watches(daemon.pid)
        assert watches > 0
        set_userns_limit(daemon.pid, "max_inotify_watches", watches)  # no watch left
        for n in range(CONTAINERS):
            create_container(host, "k8s.io" if n % 3 else "moby", pid=None if n % 2 else 100 + n)
        if not wait_for(lambda: indexed() == CONTAINERS, "all indexed"):
            pytest.fail(f"{CONTAINERS - indexed():.0f} of {CONTAINERS} containers never indexed")
        metrics = get(port, "/metrics")[1]
        assert total(metrics, "ociresolve_watch_errors_total") > 0
        assert total(metrics, "ociresolve_watches_missing") > 0
        status, body = get(port, "/healthz")
        assert status == 200
        assert body.startswith("degraded:") and "fs.inotify.max_user_watches" in body, body

        set_userns_limit(daemon.pid, "max_inotify_watches", 100_000)  # watches again
        assert wait_for(lambda: get(port, "/healthz") == (200, "ok\n"), "healthy")
        assert total(get(port, "/metrics")[1], "ociresolve_watches_missing") == 0
        create_container(host, "moby", pid=None)
        assert wait_for(lambda: indexed() == CONTAINERS + 1, "the next container")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, err = daemon.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
    assert "Traceback" not in err, err
