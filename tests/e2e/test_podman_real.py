"""podman for real (Debian 12's podman 4.3, runc, cgroupfs): its containers are never
Kubernetes containers, and ociresolve says so, from where it found them.

One private podman per module (``harness.podman``) runs the three kinds of podman containers a
node can have: a plain ``podman run -d``, a podman pod (``podman pod create`` and ``podman run
--pod``: an infra container and a member) and a ``podman kube play`` of a Kubernetes Pod (an
infra container and ``app``). podman writes each container's ``config.json`` only in its graph
root and its ``pidfile`` only in its run root, so ociresolve is given both roots, as
``--runtime-root`` twice (``ociresolve.hostpaths.LAYOUTS``: ``overlay-containers/<id>/userdata``
below either). What is checked, for each of the five:

* ``ociresolve list`` and a live ``Resolver`` never show it as a Kubernetes pod; the index
  holds it as podman, with the init PID joined from the run root's ``pidfile``;
* ``ociresolve lookup <its init PID>`` exits 1 saying it is a podman container, and
  ``--explain`` names the bundle in the graph root where that was found;
* once indexed, the watcher keeps no inotify watch on its directories in either root (counted
  from the kernel's view, ``/proc/self/fdinfo`` of the watcher's inotify fd).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import WORKLOAD_IMAGE, ImageSet
from harness.podman import Podman, podman_requirements

from ociresolve import Resolver

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SLEEP = ["sleep", "3600"]
TIMEOUT = 10.0  # seconds any one expected change may take to show; never reached when all is well
KINDS = ("run", "pod-infra", "pod-member", "kube-infra", "kube-app")
# The Pod of `podman kube play`: a Kubernetes manifest, yet no Kubernetes pod on this node.
KUBE_YAML = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: kubepod
  namespace: kns
  labels:
    app: kubepod
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {WORKLOAD_IMAGE}
    imagePullPolicy: Never
    command: {json.dumps(SLEEP)}
"""
# What only a Kubernetes pod has: a podman container carries none of them.
POD_FIELDS = ("pod_name", "pod_namespace", "pod_uid")


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1":
        pytest.fail(f"e2e: {reason} (OCIRESOLVE_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(f"e2e: {reason}")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, test_images: ImageSet) -> Iterator[Podman]:
    """One private podman for the module, with the test images; its teardown fails the last
    test if anything had to be cleaned up by force."""
    _require(podman_requirements())
    with Podman(tmp_path_factory.mktemp("podman", numbered=True)) as daemonless:
        daemonless.load(test_images)
        yield daemonless


@pytest.fixture(scope="module")
def made(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The five podman containers, running: kind (``KINDS``) -> container id."""
    run = podman.run_detached(WORKLOAD_IMAGE, SLEEP, name="pm-run")
    pod = podman.create_pod("pm-pod")
    member = podman.run_detached(WORKLOAD_IMAGE, SLEEP, name="pm-podctr", pod=pod.id)
    manifest = tmp_path_factory.mktemp("kube") / "pm-kube.yaml"
    manifest.write_text(KUBE_YAML)
    kube = podman.play_kube(manifest)
    ids = {
        "run": run,
        "pod-infra": pod.infra_id,
        "pod-member": member,
        "kube-infra": kube.infra_id,
        "kube-app": kube.containers["kubepod-app"],
    }
    assert set(ids) == set(KINDS)
    return ids


@dataclass(frozen=True)
class Watched:
    """A started ``Resolver`` and the inotify fd its watcher opened."""

    resolver: Resolver
    inotify_fd: int


@pytest.fixture
def watched(podman: Podman) -> Iterator[Callable[[], Watched]]:
    """Starts a ``Resolver`` (no CRI) on the podman roots; closes it at the end."""
    started: list[Resolver] = []

    def start() -> Watched:
        resolver = Resolver(runtime_roots=podman.runtime_roots, cri=False, grace_period=30.0)
        started.append(resolver)
        before = inotify_fds()
        resolver.start()
        new = inotify_fds() - before
        assert len(new) == 1, f"expected the watcher's one new inotify fd, found {sorted(new)}"
        return Watched(resolver, new.pop())

    yield start
    for resolver in started:
        resolver.close()


# -- helpers -----------------------------------------------------------------------------------


def inotify_fds() -> set[int]:
    """This process's inotify file descriptors."""
    fds = set()
    for entry in os.scandir("/proc/self/fd"):
        try:
            if os.readlink(entry.path) == "anon_inode:inotify":
                fds.add(int(entry.name))
        except OSError:
            continue  # closed meanwhile (scandir's own fd, another thread's)
    return fds


def watched_inodes(fd: int) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every directory an inotify fd watches, from the kernel's fdinfo.

    Each watch is a line ``inotify wd:<n> ino:<hex> sdev:<hex> ...``; ``sdev`` is the kernel's
    dev_t (major in the bits above 20), not userspace's.
    """
    found = set()
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if not line.startswith("inotify wd:"):
            continue
        fields = dict(part.split(":", 1) for part in line.split()[1:] if ":" in part)
        sdev = int(fields["sdev"], 16)
        found.add((os.makedev(sdev >> 20, sdev & 0xFFFFF), int(fields["ino"], 16)))
    return found


def container_dirs(podman: Podman, container_id: str) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) -> name of a container's directories in both roots that exist:
    ``overlay-containers/<id>`` and its ``userdata``, e.g. ``run root .../<id>/userdata``."""
    dirs = {}
    for root, userdata in (
        ("graph root", podman.bundle_dir(container_id)),
        ("run root", podman.state_dir(container_id)),
    ):
        for path, name in ((userdata.parent, ""), (userdata, "/userdata")):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            dirs[(st.st_dev, st.st_ino)] = f"{root} overlay-containers/{container_id[:12]}{name}"
    return dirs


def watched_dirs_of(podman: Podman, fd: int, container_id: str) -> list[str]:
    """The container's directories the inotify fd still watches."""
    dirs = container_dirs(podman, container_id)
    return sorted(dirs[key] for key in watched_inodes(fd) & dirs.keys())


def standalone_fields(record: object) -> dict[str, object]:
    """What the index says of a container that is not a Kubernetes one."""
    fields = ("runtime", "container_id", "bundle", "config", "pid")
    return {field: getattr(record, field, None) for field in fields}


def expected_standalone(podman: Podman, container_id: str) -> dict[str, object]:
    """``standalone_fields`` of a podman container: its run-root directory (with the pidfile)
    joined to its graph root's ``config.json``."""
    return {
        "runtime": "podman",
        "container_id": container_id,
        "bundle": str(podman.state_dir(container_id)),
        "config": str(podman.bundle_dir(container_id) / "config.json"),
        "pid": podman.init_pid(container_id),
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ociresolve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def roots(podman: Podman) -> list[str]:
    """``--runtime-root`` for the graph root and the run root."""
    return [arg for root in podman.runtime_roots for arg in ("--runtime-root", root)]


def poll(
    condition: Callable[[], object], what: str | Callable[[], str], timeout: float = TIMEOUT
) -> None:
    """Wait until ``condition()`` is true; ``what`` (or what it returns then) names it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            pytest.fail(f"timed out after {timeout}s waiting for {said}", pytrace=False)
        time.sleep(0.01)


# -- the real thing ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_podman_writes_what_the_issue_describes(
    podman: Podman, made: dict[str, str], kind: str
) -> None:
    """The premise of every other test, checked on the real thing: ``config.json`` only in the
    graph root, ``pidfile`` only in the run root, the process in ``libpod-<id>``, podman's
    manager annotation and no ``io.kubernetes.pod.*`` key (even for ``kube play``)."""
    container_id = made[kind]
    bundle, state = podman.bundle_dir(container_id), podman.state_dir(container_id)
    assert (bundle / "config.json").is_file()
    assert not (state / "config.json").exists()
    assert (state / "pidfile").is_file()
    assert not (bundle / "pidfile").exists()
    spec = json.loads((bundle / "config.json").read_bytes())
    annotations = spec["annotations"]
    assert annotations.get("io.container.manager") == "libpod"
    assert not [key for key in annotations if key.startswith("io.kubernetes.pod.")]
    cgroup = Path(f"/proc/{podman.init_pid(container_id)}/cgroup").read_text()
    assert f"/libpod-{container_id}\n" in cgroup, cgroup
    assert spec["linux"]["cgroupsPath"].endswith(f"/libpod-{container_id}")


# -- ociresolve list and the index -------------------------------------------------------------


def test_list_shows_no_podman_container_as_kubernetes(podman: Podman, made: dict[str, str]) -> None:
    """``ociresolve list --json`` over both roots, no daemon: a podman container is either
    absent or a podman row without a pod."""
    result = cli("list", "--json", "--no-daemon", *roots(podman))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    ours = {container_id: kind for kind, container_id in made.items()}
    wrong = {}
    for row in rows:
        kind = ours.get(row.get("container_id"))
        if kind is None:
            continue
        problems = ["runtime " + repr(row.get("runtime"))] if row.get("runtime") != "podman" else []
        problems += [f"{field}={row[field]!r}" for field in POD_FIELDS if row.get(field)]
        if problems:
            wrong[kind] = problems
    assert not wrong, f"listed as Kubernetes: {wrong}\n{result.stdout}"


@pytest.mark.parametrize("kind", KINDS)
def test_the_index_holds_it_as_podman_with_its_init_pid(
    podman: Podman, made: dict[str, str], watched: Callable[[], Watched], kind: str
) -> None:
    """A ``Resolver`` started on both roots holds the container apart from the Kubernetes ones
    (``Index.standalone``): podman's, its run-root directory (with the ``pidfile``) joined to
    the graph root's ``config.json``, its init PID known. No lookup answers with a Kubernetes
    record for it."""
    container_id = made[kind]
    resolver = watched().resolver
    pid = podman.init_pid(container_id)
    assert resolver.container(container_id) is None, "indexed as a Kubernetes container"
    assert resolver.lookup_container(container_id) is None
    assert resolver.lookup_pid(pid) is None
    record = resolver.index.standalone.get(container_id)
    assert record is not None, f"{kind} {container_id[:12]}: not in the index"
    assert standalone_fields(record) == expected_standalone(podman, container_id)


# -- ociresolve lookup -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_lookup_says_podman_not_kubernetes(podman: Podman, made: dict[str, str], kind: str) -> None:
    """``lookup <init PID> --runtime-root <graph> --runtime-root <run> --no-cri --no-daemon``
    exits 1 and says the process is in a podman container."""
    container_id = made[kind]
    pid = podman.init_pid(container_id)
    result = cli("lookup", str(pid), *roots(podman), "--no-cri", "--no-daemon")
    assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr
    names_it = container_id[:12] in result.stderr
    says_podman = "podman" in result.stderr.lower()
    assert names_it and says_podman, result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_lookup_explain_shows_where_podman_was_found(
    podman: Podman, made: dict[str, str], kind: str
) -> None:
    """With ``--explain``, the steps name the bundle in podman's graph root where the container
    was found, not "none under the runtime roots"."""
    container_id = made[kind]
    pid = podman.init_pid(container_id)
    result = cli("lookup", str(pid), *roots(podman), "--no-cri", "--no-daemon", "--explain")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "none under the runtime roots" not in result.stderr, result.stderr
    assert str(podman.bundle_dir(container_id)) in result.stderr, result.stderr


# -- inotify watches ---------------------------------------------------------------------------


def test_no_watch_is_kept_per_podman_container_found_at_start(
    podman: Podman, made: dict[str, str], watched: Callable[[], Watched]
) -> None:
    """After the start-up scan, the watcher's inotify fd watches no directory of any podman
    container (``overlay-containers/<id>`` or its ``userdata``, in either root): the
    containers' removal is seen from ``overlay-containers`` itself."""
    fd = watched().inotify_fd
    kept = {kind: watched_dirs_of(podman, fd, cid) for kind, cid in made.items()}
    kept = {kind: dirs for kind, dirs in kept.items() if dirs}
    total = len(watched_inodes(fd))
    assert not kept, f"{total} watches in all, still watched per container: {kept}"


def test_a_podman_container_started_while_watching(
    podman: Podman, made: dict[str, str], watched: Callable[[], Watched]
) -> None:
    """A container run after the watcher started: indexed as podman with its init PID (the run
    root's ``pidfile`` joined to the graph root's bundle), then no watch is left for it; its
    removal is still seen."""
    live = watched()
    resolver = live.resolver
    container_id = podman.run_detached(WORKLOAD_IMAGE, SLEEP, name="pm-live")
    pid = podman.init_pid(container_id)

    def indexed() -> bool:
        record = resolver.index.standalone.get(container_id)
        return record is not None and record.pid == pid

    poll(indexed, f"the index to hold {container_id[:12]} with init PID {pid}")
    record = resolver.index.standalone[container_id]
    assert standalone_fields(record) == expected_standalone(podman, container_id)
    assert resolver.container(container_id) is None, "indexed as a Kubernetes container"
    poll(
        lambda: not watched_dirs_of(podman, live.inotify_fd, container_id),
        lambda: f"the watches on {watched_dirs_of(podman, live.inotify_fd, container_id)} to go",
    )

    podman.remove(container_id)

    poll(
        lambda: container_id not in resolver.index.standalone,
        f"the index to see {container_id[:12]} removed",
    )
