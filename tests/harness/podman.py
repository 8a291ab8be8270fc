"""A private podman for end-to-end tests: its own graph root, run root and tmpdir.

Every podman command of a ``Podman`` runs with ``--root``, ``--runroot`` and ``--tmpdir`` set to
private directories and with private ``containers.conf``, ``storage.conf`` and
``registries.conf`` (env ``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``,
``CONTAINERS_REGISTRIES_CONF``): runc, the cgroupfs manager (no systemd), file locks and a file
events log, no network, nothing pulled from a registry (images come from the test image
tarball). There is no daemon: each command is a process of its own, and each container has a
``conmon`` whose exit command (``podman container cleanup``) runs with the same roots.

What podman 4.3 keeps at fixed host paths: runc's state (``/run/runc/<id>``, removed with the
container), the cgroups (``/libpod_parent/libpod-<id>``, pods ``/libpod_parent/<pod id>/``,
conmon ``/libpod_parent/conmon``) and its blob-info cache (``/var/lib/containers/cache``,
written by every image copy, harmless). ``stop()`` removes every pod and container through
podman, then what podman leaves behind on a hybrid cgroup host (its pods' cgroups in the
unified and named hierarchies), then the storage. Nothing is ever looked up or killed by
process name: leftovers are found by their container's cgroup, or by the private base
directory on their command line.

Layout of the base directory::

    containers.conf  storage.conf  registries.conf  events.log
    graph/       the graph root: images, layers, libpod's database, and each container's
                 bundle, graph/overlay-containers/<id>/userdata/config.json
    run/         the run root: run/overlay-containers/<id>/userdata/{pidfile,conmon.pid};
                 podman refuses one longer than 50 characters, so below a deep tmp dir it is a
                 short /tmp/ociresolve-podman-<hex>/run instead
    tmp/         podman's tmpdir (exit files, file locks)
    network/     a private network config dir (unused: containers run without a network)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cgroups
from .errors import HarnessError
from .image import PAUSE_IMAGE, ImageSet
from .mounts import mount_table
from .procs import is_alive
from .requirements import INSTALL_HINT, root_requirements
from .startstop import StartStop

COMMAND_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# What the harness runs: podman, which runs conmon, which runs runc.
_TOOLS = ("podman", "conmon", "runc")

# runc's state directory when podman runs it as root without --runtime-flag root=...: passing
# one would not reach conmon's exit command, whose cleanup would then look in the default.
_RUNC_ROOT = Path("/run/runc")

_ID = re.compile(r"[0-9a-f]{64}")

# podman 4 refuses a longer run root ("the specified runroot is longer than 50 characters").
_MAX_RUN_ROOT = 50


@functools.cache
def podman_requirements() -> str | None:
    """What the podman tests need: root, podman, conmon and runc (``None`` when all there)."""
    reason = root_requirements()
    if reason is not None:
        return reason
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian's podman package): {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class PodmanPod:
    """A podman pod: its id and name, its infra container, its other containers by name, and
    its cgroup (``/libpod_parent/<id>`` by default)."""

    id: str
    name: str
    infra_id: str
    containers: Mapping[str, str]
    cgroup_path: str


class Podman(StartStop):
    """A private podman (see the module docstring). ``Podman(tmp_dir)`` only prepares;
    ``start()`` (or ``with``) writes the configs and checks that podman accepts them;
    ``stop()`` tears everything down and raises ``HarnessError`` if it had to clean up by force
    (a leak the tests should hear about)."""

    def __init__(self, tmp_dir: Path) -> None:
        tag = secrets.token_hex(4)
        self.base_dir = Path(tmp_dir) / f"podman-{tag}"
        self.graph_root = self.base_dir / "graph"
        self.run_root = self.base_dir / "run"
        self._own_run_dir: Path | None = None
        if len(str(self.run_root)) > _MAX_RUN_ROOT:
            # Deep tmp dirs make the run root too long for podman: a short private dir instead.
            self._own_run_dir = Path(tempfile.gettempdir()) / f"ociresolve-podman-{tag}"
            self.run_root = self._own_run_dir / "run"
        self.tmp_dir = self.base_dir / "tmp"
        self.network_dir = self.base_dir / "network"
        self.containers_conf = self.base_dir / "containers.conf"
        self.storage_conf = self.base_dir / "storage.conf"
        self.registries_conf = self.base_dir / "registries.conf"
        self.events_log = self.base_dir / "events.log"
        self._started = False
        self._pod_cgroups: set[str] = set()  # of every pod made, for the teardown

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Podman:
        if self._started:
            raise HarnessError("podman already started")
        for directory in (self.graph_root, self.run_root, self.tmp_dir, self.network_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.containers_conf.write_text(self._containers_conf())
        self.storage_conf.write_text(self._storage_conf())
        self.registries_conf.write_text("unqualified-search-registries = []\n")
        self._started = True
        try:
            info = json.loads(self.podman("info", "--format", "json").stdout)
            host, store = info["host"], info["store"]
            found = (
                host["cgroupManager"],
                host["ociRuntime"]["name"],
                store["graphDriverName"],
                os.path.realpath(store["graphRoot"]),
            )
            wanted = ("cgroupfs", "runc", "overlay", os.path.realpath(self.graph_root))
            if found != wanted:
                raise HarnessError(f"podman ignored its private config: {found}, not {wanted}")
        except BaseException:
            with contextlib.suppress(HarnessError):
                self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove every pod and container, then the storage; idempotent. Raises
        ``HarnessError`` after forced cleanup."""
        if not self._started:
            return
        problems: list[str] = []
        containers = self._container_cgroups()
        pods = self._pod_cgroups | self._live_pod_cgroups()
        # Pods stopped before they are removed: `pod rm --force` of running pods kills them
        # and removes their cgroups at once, which are still busy, and retries for seconds.
        commands = (
            ("pod", "stop", "--all", "--time", "0"),
            ("pod", "rm", "--all", "--force", "--time", "0"),
            ("rm", "--all", "--force", "--time", "0"),
        )
        try:
            for command in commands:
                result = self.podman(*command, check=False, timeout=STOP_TIMEOUT)
                if result.returncode != 0:
                    problems.append(f"podman {' '.join(command)}: {result.stderr.strip()}")
        except HarnessError as e:  # timed out: still clean up below
            problems.append(str(e))
        finally:
            self._started = False
        problems += self._force_cleanup(containers, pods)
        for directory in (self.graph_root, self.run_root, self.tmp_dir, self._own_run_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        if problems:
            raise HarnessError("podman teardown: " + "; ".join(problems))

    # -- commands ------------------------------------------------------------------------------

    def podman(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman <args>`` on this instance's roots and configs."""
        if not self._started:
            raise HarnessError("podman not started")
        command = [
            "podman",
            "--root",
            str(self.graph_root),
            "--runroot",
            str(self.run_root),
            "--tmpdir",
            str(self.tmp_dir),
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINER_")}
        env.update(
            CONTAINERS_CONF=str(self.containers_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
        )
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"podman {' '.join(args)} timed out after {timeout}s") from e
        if check and result.returncode != 0:
            raise HarnessError(
                f"podman {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    @functools.cached_property
    def version(self) -> str:
        """podman's version, e.g. ``4.3.1``."""
        return self.podman("version", "--format", "{{.Client.Version}}").stdout.strip()

    def load(self, images: ImageSet) -> None:
        """Copy the pause and workload images out of the test image tarball (an OCI layout
        holding both: ``podman load`` takes single-image archives only)."""
        for ref in (images.pause, images.workload):
            self.podman("pull", "--quiet", f"oci-archive:{images.tarball}:{ref}")

    def run_detached(
        self, image: str, command: Sequence[str], *, name: str, pod: str | None = None
    ) -> str:
        """``podman run -d`` (in ``pod`` if given); returns the container id."""
        args = ["run", "--detach", "--name", name]
        args += ["--pod", pod] if pod else ["--network", "none"]
        return _one_id(self.podman(*args, image, *command).stdout)

    def create_pod(self, name: str) -> PodmanPod:
        """``podman pod create`` (its infra container runs the pause image), started."""
        pod_id = _one_id(self.podman("pod", "create", "--name", name, "--network", "none").stdout)
        self.podman("pod", "start", pod_id)
        return self.pod(pod_id)

    def play_kube(self, yaml_file: Path) -> PodmanPod:
        """``podman kube play`` of a file holding one Pod; returns that pod."""
        out = self.podman("kube", "play", "--network", "none", str(yaml_file)).stdout
        lines = out.split()
        if "Pod:" not in lines or not _ID.fullmatch(lines[lines.index("Pod:") + 1]):
            raise HarnessError(f"podman kube play: no pod id in its output:\n{out}")
        return self.pod(lines[lines.index("Pod:") + 1])

    def pod(self, pod_id: str) -> PodmanPod:
        """A pod as ``podman pod inspect`` describes it now."""
        data: Any = json.loads(self.podman("pod", "inspect", pod_id).stdout)
        if isinstance(data, list):  # an object up to podman 4, a list of them from 5
            (data,) = data
        infra_id = data["InfraContainerID"]
        pod = PodmanPod(
            id=data["Id"],
            name=data["Name"],
            infra_id=infra_id,
            containers={c["Name"]: c["Id"] for c in data["Containers"] if c["Id"] != infra_id},
            cgroup_path=data["CgroupPath"],
        )
        self._pod_cgroups.add(pod.cgroup_path)
        return pod

    def remove(self, container_id: str) -> None:
        """``podman rm --force`` of one container."""
        self.podman("rm", "--force", "--time", "0", container_id)

    # -- inspection ----------------------------------------------------------------------------

    @property
    def runtime_roots(self) -> tuple[str, str]:
        """The graph root and the run root: what ociresolve's ``--runtime-root`` takes."""
        return str(self.graph_root), str(self.run_root)

    def bundle_dir(self, container_id: str) -> Path:
        """The container's bundle directory, in the graph root: holds ``config.json``."""
        return self.graph_root / "overlay-containers" / container_id / "userdata"

    def state_dir(self, container_id: str) -> Path:
        """The container's directory in the run root: holds ``pidfile`` and ``conmon.pid``."""
        return self.run_root / "overlay-containers" / container_id / "userdata"

    def init_pid(self, container_id: str) -> int:
        """The container's first process, from the pidfile conmon's runc wrote."""
        return int((self.state_dir(container_id) / "pidfile").read_text())

    def helper_pids(self) -> list[int]:
        """conmons and ``podman container cleanup`` runs of this instance: the processes
        whose command line names the private base directory (never matched by name)."""
        bases = [str(self.base_dir), str(self.run_root)]
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue  # gone, or a kernel thread
            if any(base in arg for base in bases for arg in argv):
                pids.append(int(entry.name))
        return sorted(pids)

    def mounts_below_base(self) -> list[str]:
        """Host mount points inside the base directory and the run root (overlays, the graph
        root's own bind mount, each container's ``shm``)."""
        bases = [self.base_dir, self.run_root]
        return [
            str(m.target) for m in mount_table() if any(m.target.is_relative_to(b) for b in bases)
        ]

    # -- internals -----------------------------------------------------------------------------

    def _containers_conf(self) -> str:
        return "\n".join(
            [
                "[containers]",
                # This machine kind lacks CAP_SYS_RESOURCE: podman's default (the hard limit
                # raised to the maximum) fails every container.
                'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]',
                'netns = "none"',
                'log_driver = "k8s-file"',
                "[network]",
                f"network_config_dir = {_toml(self.network_dir)}",
                "[engine]",
                'cgroup_manager = "cgroupfs"',
                'events_logger = "file"',
                f"events_logfile_path = {_toml(self.events_log)}",
                'runtime = "runc"',
                # File locks under tmp_dir; the default ("shm") shares /dev/shm/libpod_lock.
                'lock_type = "file"',
                # The test pause image: podman's own is built from catatonit, not installed.
                f"infra_image = {_toml(PAUSE_IMAGE)}",
                'pull_policy = "never"',
                f"static_dir = {_toml(self.graph_root / 'libpod')}",
                f"volume_path = {_toml(self.graph_root / 'volumes')}",
                f"tmp_dir = {_toml(self.tmp_dir)}",
                f"image_copy_tmp_dir = {_toml(self.tmp_dir)}",
                "",
            ]
        )

    def _storage_conf(self) -> str:
        return "\n".join(
            [
                "[storage]",
                'driver = "overlay"',
                f"runroot = {_toml(self.run_root)}",
                f"graphroot = {_toml(self.graph_root)}",
                "",
            ]
        )

    def _container_cgroups(self) -> dict[str, str]:
        """Container id -> ``linux.cgroupsPath`` of every bundle in the graph root."""
        found = {}
        for bundle in self.graph_root.glob("overlay-containers/*/userdata"):
            try:
                spec = json.loads((bundle / "config.json").read_bytes())
                found[bundle.parent.name] = str(spec["linux"]["cgroupsPath"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def _live_pod_cgroups(self) -> set[str]:
        result = self.podman("pod", "ps", "--quiet", "--no-trunc", check=False)
        paths = set()
        for pod_id in result.stdout.split() if result.returncode == 0 else ():
            with contextlib.suppress(HarnessError, ValueError, KeyError):
                paths.add(self.pod(pod_id).cgroup_path)
        return paths

    def _force_cleanup(self, containers: Mapping[str, str], pods: set[str]) -> list[str]:
        """Kill and remove what the teardown left: container processes, then conmons and their
        cleanup runs, runc state, mounts, cgroups. Only what is this instance's: cgroups and
        runc state named by its own containers' ids, processes by its base directory or its
        containers' cgroups."""
        problems = []
        leaves = [path for cid, path in containers.items() if path.rstrip("/").endswith(cid)]
        stray = set().union(*(cgroups.subtree_pids(path) for path in leaves))
        if stray:
            problems.append(f"killed container processes {sorted(stray)}")
            _kill_all(stray)
        # conmon's exit command runs on its own after each container exits: let it finish.
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.helper_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        helpers = self.helper_pids()
        if helpers:
            problems.append(f"killed conmon/cleanup processes {helpers}")
            _kill_all(set(helpers))
        for container_id in containers:
            if (_RUNC_ROOT / container_id).exists():
                problems.append(f"deleted runc state of {container_id[:12]}")
                subprocess.run(
                    ["runc", "delete", "--force", container_id], capture_output=True, check=False
                )
        mounts = self.mounts_below_base()
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", target], capture_output=True, check=False)
        if mounts:
            problems.append(f"unmounted {mounts}")
        left_leaves = [path for path in leaves if cgroups.subtree_dirs(path)]
        if left_leaves:
            problems.append(f"container cgroups left {left_leaves}")
        # podman removes a pod's cgroup only in the v1 hierarchies it manages: on a hybrid
        # host the unified and named ones keep it. Expected, so not a problem; removed here.
        own_pods = [path for path in pods if _ID.fullmatch(path.rstrip("/").rpartition("/")[2])]
        left = []
        for path in [*left_leaves, *own_pods]:
            left += cgroups.remove_subtree(path)
        if left:
            problems.append(f"could not remove cgroups {[str(p) for p in left]}")
        return problems


def _toml(value: str | Path) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string for these paths


def _one_id(output: str) -> str:
    """The container or pod id a podman command printed as its last line."""
    lines = output.split()
    if not lines or not _ID.fullmatch(lines[-1]):
        raise HarnessError(f"expected an id from podman, got {output!r}")
    return lines[-1]


def _kill_all(pids: set[int], timeout: float = 5.0) -> None:
    """SIGKILL each PID and wait (bounded) until none of them runs any more."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.02)
