"""inotify exhausted, by fault injection: no instance left (``fs.inotify.max_user_instances``)
is a typed error at start-up and a clear exit of ``serve``; no watch left
(``fs.inotify.max_user_watches``) loses no container, is counted and shows in health, and heals
once watches can be added again. ``tests/e2e/test_inotify_exhaustion_real.py`` does the same
with the kernel's own limits."""

from __future__ import annotations

import errno
import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import free_port
from fakehost import (
    CONTAINERD_ROOT,
    CRIO_ROOT,
    FakeHost,
    Pod,
    containerd_spec,
    crio_spec,
    live_ids,
    new_id,
    wait_until,
)
from inotify_simple import INotify

from ociresolve import InotifyLimitReached, OciresolveError, Resolver
from ociresolve.cli import _parser
from ociresolve.daemon.serve import Daemon

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CONTAINERS = 30
HEALS_WITHIN = 20.0  # seconds: the retries' backoff starts small; only guards against a hang


class Exhaustible(INotify):
    """An inotify instance with no watch left while ``full`` is set: a new watch fails with
    ENOSPC, as the kernel's does at ``fs.inotify.max_user_watches``; one that exists already is
    updated, as the kernel's is."""

    full = threading.Event()
    refused = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._paths: dict[str, int] = {}

    def add_watch(self, path: str | bytes | os.PathLike[str], mask: int) -> int:
        key = os.fsdecode(path)
        if self.full.is_set() and key not in self._paths:
            type(self).refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        wd: int = super().add_watch(path, mask)
        self._paths[key] = wd
        return wd

    def rm_watch(self, wd: int) -> None:
        self._paths = {path: w for path, w in self._paths.items() if w != wd}
        super().rm_watch(wd)


@pytest.fixture
def exhaustible(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Exhaustible]]:
    monkeypatch.setattr("ociresolve.watcher.INotify", Exhaustible)
    Exhaustible.full.clear()
    Exhaustible.refused = 0
    yield Exhaustible
    Exhaustible.full.clear()


def no_instance_left(*args: object, **kwargs: object) -> INotify:
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


# -- no inotify instance left ----------------------------------------------------------------------


def test_start_raises_a_typed_error_naming_the_instances_sysctl(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.make_roots()
    monkeypatch.setattr("ociresolve.watcher.INotify", no_instance_left)
    resolver = Resolver(host_root=str(host.root), runtime_roots=[CONTAINERD_ROOT], cri=False)
    with pytest.raises(OciresolveError) as raised:
        resolver.start()
    assert isinstance(raised.value, InotifyLimitReached)
    assert "fs.inotify.max_user_instances" in str(raised.value)
    assert raised.value.sysctl == "fs.inotify.max_user_instances"
    assert isinstance(raised.value.__cause__, OSError)
    assert resolver.watcher is None
    resolver.close()


_SERVE_WITHOUT_INSTANCES = """
import errno, os, sys
import ociresolve.watcher

def no_instance_left(*args, **kwargs):
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

ociresolve.watcher.INotify = no_instance_left
from ociresolve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_exits_with_a_message_naming_the_sysctl_not_a_traceback(
    host: FakeHost, sockets: Path
) -> None:
    host.make_roots()
    args = ["serve", "--host-root", str(host.root), "--runtime-root", CONTAINERD_ROOT]
    args += ["--socket", str(sockets / "api.sock"), "--no-cri"]
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_INSTANCES, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Traceback" not in done.stderr
    assert "fs.inotify.max_user_instances" in done.stderr
    assert done.returncode == 3, done.stderr
    assert not (sockets / "api.sock").exists()


# -- no inotify watch left -------------------------------------------------------------------------


def create_containers(host: FakeHost, with_pid: bool) -> dict[str, Path]:
    """Containers as a runtime creates them: the directory, then ``config.json``, then (for
    some) the pid file. Returns their bundles by id."""
    bundles: dict[str, Path] = {}
    pod = Pod.new()
    for n in range(CONTAINERS):
        container_id = new_id()
        if n % 5 == 4:  # cri-o's layout
            bundle, spec = host.crio_bundle(container_id), crio_spec(container_id, pod)
        else:  # containerd's, some in a namespace directory that did not exist before
            namespace = "k8s.io" if n % 5 < 2 else "moby"
            bundle = host.containerd_bundle(container_id, namespace)
            spec = containerd_spec(container_id, pod)
        bundle.mkdir(parents=True)
        host.write(bundle, spec)
        if with_pid and n % 2:
            host.write_pid(bundle, 1000 + n, pid_file(bundle))
        bundles[container_id] = bundle
    return bundles


def unindexed(resolver: Resolver, host: FakeHost) -> set[str]:
    return host.truth() - live_ids(resolver.containers())


def pid_of(resolver: Resolver, container_id: str) -> int | None:
    record = resolver.container(container_id)
    return None if record is None else record.pid


def pid_file(bundle: Path) -> str:
    return "pidfile" if bundle.name == "userdata" else "init.pid"


def test_containers_created_while_no_watch_is_left_are_all_indexed_and_heal(
    host: FakeHost, exhaustible: type[Exhaustible]
) -> None:
    host.make_roots()
    resolver = Resolver(host_root=str(host.root), runtime_roots=[CONTAINERD_ROOT, CRIO_ROOT])
    with resolver:
        watcher = resolver.watcher
        assert watcher is not None
        exhaustible.full.set()
        bundles = create_containers(host, with_pid=True)
        assert len(host.truth()) == CONTAINERS
        try:
            wait_until(lambda: not unindexed(resolver, host), HEALS_WITHIN, "every container")
        except AssertionError:
            missed = unindexed(resolver, host)
            pytest.fail(f"{len(missed)} of {CONTAINERS} containers never indexed")
        pids = {r.meta.container_id: r.pid for r in resolver.containers()}
        assert sum(pid is not None for pid in pids.values()) == CONTAINERS // 2
        # Loud: counted, and degraded while a directory that needs a watch has none.
        assert watcher.watch_errors > 0
        assert exhaustible.refused > 0
        assert watcher.missing_watches > 0
        # A pid file written meanwhile is found by a rescan.
        late = next(cid for cid, pid in pids.items() if pid is None)
        host.write_pid(bundles[late], 4242, pid_file(bundles[late]))
        wait_until(lambda: pid_of(resolver, late) == 4242, HEALS_WITHIN, "the late pid")

        exhaustible.full.clear()  # watches can be added again
        wait_until(lambda: watcher.missing_watches == 0, HEALS_WITHIN, "healed")
        # Watched again: what comes now is seen by its events.
        rescans = watcher.rescans
        more = create_containers(host, with_pid=False)
        wait_until(lambda: not unindexed(resolver, host), HEALS_WITHIN, "the new containers")
        cid, bundle = next(iter(more.items()))
        host.write_pid(bundle, 777, pid_file(bundle))
        wait_until(lambda: pid_of(resolver, cid) == 777, HEALS_WITHIN, "the pid")
        assert watcher.rescans == rescans  # events, not retries
        assert watcher.missing_watches == 0


def test_a_watch_that_cannot_be_added_at_start_is_retried(
    host: FakeHost, exhaustible: type[Exhaustible]
) -> None:
    host.make_roots()
    exhaustible.full.set()  # no watch at all: not even the roots
    resolver = Resolver(host_root=str(host.root), runtime_roots=[CONTAINERD_ROOT, CRIO_ROOT])
    with resolver:
        watcher = resolver.watcher
        assert watcher is not None
        assert watcher.missing_watches > 0
        exhaustible.full.clear()
        wait_until(lambda: watcher.missing_watches == 0, HEALS_WITHIN, "healed")
        rescans = watcher.rescans
        create_containers(host, with_pid=False)
        wait_until(lambda: not unindexed(resolver, host), HEALS_WITHIN, "the new containers")
        assert watcher.rescans == rescans


# -- metrics and health ----------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def test_metrics_count_watch_failures_and_health_shows_degraded_until_healed(
    host: FakeHost, exhaustible: type[Exhaustible], sockets: Path
) -> None:
    host.make_roots()
    port = free_port()
    args = _parser().parse_args(
        [
            "serve",
            "--host-root",
            str(host.root),
            "--runtime-root",
            CONTAINERD_ROOT,
            "--runtime-root",
            CRIO_ROOT,
            "--socket",
            str(sockets / "api.sock"),
            "--no-cri",
            "--metrics-address",
            f"127.0.0.1:{port}",
        ]
    )
    daemon = Daemon(args)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), name="test-daemon")
    thread.start()
    try:
        wait_until(lambda: daemon.ready.is_set(), HEALS_WITHIN, "ready")
        assert get(port, "/healthz") == (200, "ok\n")
        exhaustible.full.set()
        create_containers(host, with_pid=False)
        wait_until(lambda: not unindexed(daemon.resolver, host), HEALS_WITHIN, "every container")
        status, body = get(port, "/healthz")
        assert status == 200  # alive: a restart would not give it watches
        assert body.startswith("degraded:") and "fs.inotify.max_user_watches" in body, body
        text = get(port, "/metrics")[1]
        assert (sample(text, "ociresolve_watch_errors_total") or 0) > 0
        assert (sample(text, "ociresolve_watches_missing") or 0) > 0

        exhaustible.full.clear()
        wait_until(lambda: get(port, "/healthz") == (200, "ok\n"), HEALS_WITHIN, "healthy")
        text = get(port, "/metrics")[1]
        assert sample(text, "ociresolve_watches_missing") == 0
    finally:
        stop.set()
        thread.join(10)
