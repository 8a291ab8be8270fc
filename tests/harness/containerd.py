"""A private containerd for end-to-end tests, started and torn down by the test itself.

Any generation of the table in ``generations`` (1.6, 1.7, 2.x; 2.x on a pure cgroup v2 view):
its own binaries first on ``PATH`` (so that it starts its own shim), the config its version
expects, and, for the unified view, a private mount namespace of its own (``namespace``) for
containerd, its shims and runc.

Everything the daemon writes goes under a private base directory, except what containerd
keeps at fixed host paths: the shims' sockets (``/run/containerd/s/<hash>``, removed when
each shim exits) and the cgroups, which go under a private ``cgroup_parent`` removed by
``stop()``. Nothing is ever looked up or killed by process name: containerd by the PID it was
started with, leftovers by their cgroup or by the private socket on their command line.

Layout of the base directory::

    config.toml  containerd.log
    root/        containerd's root (content, snapshots, metadata)
    state/       containerd's state; task_dir = state/io.containerd.runtime.v2.task
    run/         containerd.sock (CRI and containerd API), containerd.sock.ttrpc; if that
                 path is too long for a unix socket, a short /tmp/ociresolve-e2e-<hex>/ instead
    pods/        pod log directories, <namespace>_<name>_<uid>/
    opt/ cni/    private paths for the opt plugin and the (unused) CNI config
    stage/       an empty directory the unified view's namespace mounts on while it is made
    runc-bundles/  the unified view's bundle copies for runc (see runc_cgroup2)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import grpc

from . import cgroups
from .cri import CriClient, Mount
from .errors import HarnessError
from .generations import DEFAULT, Build, ConfigValue, Generation, locate
from .image import PAUSE_IMAGE, ImageSet, import_images, import_tarball
from .mounts import MountEntry, mount_table
from .namespace import CGROUP_ROOT, UnifiedCgroupNamespace
from .procs import is_alive
from .startstop import StartStop

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# sun_path holds 108 bytes, but containerd refuses socket paths longer than 104.
_MAX_SOCKET_PATH = 104

_RUNC_CGROUP2 = Path(__file__).with_name("runc_cgroup2.py")
# The runc of the unified view: only the commands that read a bundle go through Python.
_RUNC_DISPATCH = """#!/bin/sh
for arg; do case "$arg" in create|run|delete) exec {python} -S {script} "$@";; esac; done
exec {runc} "$@"
"""

CgroupMode = Literal["unified", "hybrid", "legacy"]
"""How the cgroup file systems look to containerd: v2 alone at /sys/fs/cgroup, v1 controllers
with v2 beside them, v1 alone."""


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_string(v) for v in value) + "]"
    return _toml_string(value)


def edit_config(text: str, settings: Mapping[tuple[str, str], ConfigValue]) -> str:
    """Set ``key = value`` lines of a TOML document, addressed by (table, key).

    ``table`` is the header as written between the brackets ("" for the top level), e.g.
    ``plugins."io.containerd.grpc.v1.cri"`` (version 2) or
    ``plugins.'io.containerd.cri.v1.runtime'`` (version 3). Every setting must match an
    existing line, so a containerd whose default config changed shape fails loudly instead of
    being half-configured.
    """
    table = ""
    done: set[tuple[str, str]] = set()
    lines = []
    key_re = re.compile(r"^(\s*)([A-Za-z0-9_.\"-]+)\s*=")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            table = stripped.strip("[]").strip()
        match = key_re.match(line)
        if match and (table, match.group(2)) in settings:
            key = (table, match.group(2))
            line = f"{match.group(1)}{match.group(2)} = {_toml_value(settings[key])}"
            done.add(key)
        lines.append(line)
    missing = set(settings) - done
    if missing:
        raise HarnessError(f"containerd default config has no {sorted(missing)}")
    return "\n".join(lines) + "\n"


class Containerd(StartStop):
    """A containerd daemon of ``generation`` with private root, state, sockets and cgroup parent.

    ``config_overrides`` sets more keys of the default config, by (table, key) as in
    ``edit_config``; the tables of the generation's config version are in
    ``generation.config``, e.g. to let pod annotations through to the OCI spec::

        {(ctrd.generation.config.runc_runtime, "pod_annotations"): ["example.com/*"]}

    ``Containerd(tmp_dir)`` only prepares; ``start()`` (or ``with``) writes the config, starts
    the daemon and waits until CRI answers; ``stop()`` tears down every pod through CRI, stops
    the daemon by its PID and removes the private cgroups. ``stop()`` raises ``HarnessError``
    if it had to clean up by force (a leak the tests should hear about).

    ``stop_daemon()`` stops the daemon alone, as when containerd is restarted or upgraded on a
    node: pods keep running, and ``start()`` runs it again on the same config, root, state and
    socket (``restart()`` does both).

    ``command(argv)`` is how to run a process where containerd runs (in the unified view's
    namespace, else as is): the ociresolve processes under test, to see the cgroups as it does.
    """

    def __init__(
        self,
        tmp_dir: Path,
        *,
        generation: Generation = DEFAULT,
        sandbox_image: str = PAUSE_IMAGE,
        start_timeout: float = START_TIMEOUT,
        config_overrides: Mapping[tuple[str, str], ConfigValue] | None = None,
    ) -> None:
        tag = secrets.token_hex(4)
        self.base_dir = Path(tmp_dir) / f"containerd-{tag}"
        self.config_path = self.base_dir / "config.toml"
        self.log_path = self.base_dir / "containerd.log"
        self.root_dir = self.base_dir / "root"
        self.state_dir = self.base_dir / "state"
        self.task_dir = self.state_dir / "io.containerd.runtime.v2.task"
        self.pods_dir = self.base_dir / "pods"
        self.socket = self.base_dir / "run" / "containerd.sock"
        self._own_socket_dir: Path | None = None
        if len(f"{self.socket}.ttrpc") > _MAX_SOCKET_PATH:
            # Deep tmp dirs make unix socket paths too long: use a short private dir instead.
            self._own_socket_dir = Path(tempfile.gettempdir()) / f"ociresolve-e2e-{tag}"
            self.socket = self._own_socket_dir / "containerd.sock"
        self.cgroup_parent = f"/ociresolve-e2e-{tag}"
        self.sandbox_image = sandbox_image
        self.start_timeout = start_timeout
        self.config_overrides = dict(config_overrides or {})
        self.generation = generation
        self._build: Build | None = None
        self._namespace: UnifiedCgroupNamespace | None = None
        self._imported: set[tuple[Path, int]] = set()
        self._process: subprocess.Popen[bytes] | None = None
        self._client: CriClient | None = None
        self._started = False  # once: a restart reuses the config and the socket directory

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The daemon's PID while it runs (as started by us), else None."""
        return self._process.pid if self._process is not None else None

    @property
    def build(self) -> Build:
        """The binaries: their version, where they came from, their directory."""
        if self._build is None:
            located = locate(self.generation)
            if isinstance(located, str):
                raise HarnessError(located)
            self._build = located
        return self._build

    @property
    def version(self) -> str:
        """The Debian version of the binaries (``1.7.24~ds1-6+deb13u1``)."""
        return self.build.version

    @property
    def ctr(self) -> str:
        """This generation's ``ctr``."""
        return str(self.build.bin_dir / "ctr")

    @property
    def namespace_task_dir(self) -> Path:
        """Where the CRI plugin's bundles go: ``task_dir/k8s.io``."""
        return self.task_dir / "k8s.io"

    def start(self) -> Containerd:
        if self._process is not None:
            raise HarnessError("containerd already started")
        try:
            if not self._started:
                for directory in (self.root_dir, self.state_dir, self.pods_dir):
                    directory.mkdir(parents=True, exist_ok=True)
                self.socket.parent.mkdir(mode=0o700, exist_ok=self._own_socket_dir is None)
                self.config_path.write_text(self._config())
                self._started = True
            elif self._client is not None:
                # A restart: the old channel may be waiting out a reconnect backoff.
                self._client.reconnect()
            if self.generation.cgroups == "unified" and self._namespace is None:
                self._namespace = UnifiedCgroupNamespace(self.base_dir / "stage").start()
            with self.log_path.open("ab") as log:
                containerd = str(self.build.bin_dir / "containerd")
                self._process = subprocess.Popen(
                    self.command([containerd, "--config", str(self.config_path)]),
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # a Ctrl-C of pytest must not kill it before teardown
                )
            self._wait_ready()
        except BaseException:
            # Undo what was made; the start error is the one worth reporting.
            with contextlib.suppress(HarnessError):
                self.stop()
            raise
        return self

    def stop(self) -> None:
        """Tear everything down; idempotent. Raises ``HarnessError`` after forced cleanup."""
        problems: list[str] = []
        if self._process is not None and self._process.poll() is None:
            try:
                self.cri().teardown_all()
            except grpc.RpcError as e:
                problems.append(f"CRI teardown failed: {e.code().name}: {e.details()}")
            except Exception as e:  # still stop the daemon and clean up below
                problems.append(f"CRI teardown failed: {e!r}")
        if self._client is not None:
            self._client.close()
            self._client = None
        exit_status = self._terminate()
        if exit_status is not None and exit_status not in (0, -signal.SIGTERM):
            problems.append(f"containerd exited with status {exit_status}")
        problems += self._force_cleanup()
        if self._namespace is not None:
            self._namespace.stop()
            self._namespace = None
        if self._own_socket_dir is not None:
            shutil.rmtree(self._own_socket_dir, ignore_errors=True)
        if problems:
            raise HarnessError(
                "containerd teardown: "
                + "; ".join(problems)
                + f"\n--- {self.log_path} (tail) ---\n{self.log_tail()}"
            )

    def stop_daemon(self) -> None:
        """Stop the daemon alone, by its PID: SIGTERM, SIGKILL after ``STOP_TIMEOUT``.

        No CRI teardown: the shims and containers keep running, their bundles and cgroups stay,
        as on a node where containerd is restarted. ``start()`` runs it again; it reconnects to
        its shims and its CRI plugin recovers the pods. Until then ``pid`` is None and ``stop()``
        would have to kill the shims by force. Raises ``HarnessError`` if the daemon was not
        running or did not exit cleanly.
        """
        if self._process is None:
            raise HarnessError("containerd is not running")
        status = self._terminate()
        if status not in (0, -signal.SIGTERM):
            raise HarnessError(
                f"containerd exited with status {status} when stopped\n"
                f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
            )

    def restart(self) -> Containerd:
        """``stop_daemon()``, then ``start()``: the same daemon, its pods still running."""
        self.stop_daemon()
        return self.start()

    def command(self, argv: Sequence[str], cwd: str | Path | None = None) -> list[str]:
        """``argv`` run where containerd runs: in its cgroup v2 namespace (in ``cwd``), or as
        it is (``cwd`` is then the caller's business, as for any ``Popen``)."""
        if self._namespace is not None:
            return self._namespace.command(argv, cwd)
        if self.generation.cgroups == "unified":
            raise HarnessError("containerd's cgroup v2 namespace is not running")
        return list(argv)

    def import_images(self, images: ImageSet, *, timeout: float = 60.0) -> None:
        """Import the test images with this generation's ``ctr``."""
        import_images(self.socket, images, timeout=timeout, ctr=self.ctr)

    def import_tarball(self, tarball: Path, *, timeout: float = 60.0) -> None:
        """Import an image tarball with this generation's ``ctr``, once per tarball (its path
        and modification time): the root, hence the images, outlive restarts."""
        key = (Path(tarball).resolve(), Path(tarball).stat().st_mtime_ns)
        if key in self._imported:
            return
        import_tarball(self.socket, tarball, timeout=timeout, ctr=self.ctr)
        self._imported.add(key)

    def cri(self) -> CriClient:
        """A CRI client for this daemon (one, shared, closed by ``stop()``)."""
        if self._client is None:
            self._client = CriClient(
                self.socket, log_root=self.pods_dir, cgroup_parent=self.cgroup_parent
            )
        return self._client

    # -- inspection ----------------------------------------------------------------------------

    def bundle_dir(self, container_id: str) -> Path:
        """The OCI bundle directory of a sandbox or container (holds ``config.json``)."""
        return self.namespace_task_dir / container_id

    def socket_mount(self, container_dir: str = "/run/containerd") -> Mount:
        """A bind mount of the socket's directory: a container then reaches this daemon at
        ``<container_dir>/containerd.sock`` (a socket file itself cannot be bind-mounted
        before it exists, and the directory keeps working if the daemon restarts)."""
        return Mount(host_path=str(self.socket.parent), container_path=container_dir)

    def shim_pids(self) -> list[int]:
        """PIDs of the shims serving this daemon: ``-address <our socket>`` on their cmdline."""
        wanted = str(self.socket).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone, or a kernel thread
            if any(a == b"-address" and b == wanted for a, b in itertools.pairwise(argv)):
                pids.append(int(entry.name))
        return sorted(pids)

    def cgroup_dirs(self) -> list[Path]:
        """The directories of the private cgroup parent that exist, in every hierarchy."""
        return cgroups.subtree_dirs(self.cgroup_parent)

    def mounts(self) -> list[MountEntry]:
        """The mount table as containerd sees it (its namespace's, in the unified view)."""
        return self._namespace.mounts() if self._namespace is not None else mount_table()

    def mounts_below_base(self) -> list[str]:
        """Mount points inside the base directory (rootfs overlays, sandbox shm, ...), where
        containerd sees them."""
        return [str(m.target) for m in self.mounts() if m.target.is_relative_to(self.base_dir)]

    @property
    def cgroup2_mount(self) -> Path:
        """Where containerd sees the cgroup v2 hierarchy (``/sys/fs/cgroup`` in the unified
        view): the host path to bind-mount into one of its containers."""
        for mount in self.mounts():
            if mount.fstype == "cgroup2":
                return mount.target
        raise HarnessError("containerd sees no cgroup v2 hierarchy")

    @property
    def cgroup_mode(self) -> CgroupMode:
        """How containerd (and runc) see the cgroup file systems, from its mount table."""
        kinds = {m.target: m.fstype for m in self.mounts() if m.fstype in ("cgroup", "cgroup2")}
        if kinds.get(CGROUP_ROOT) == "cgroup2":
            return "unified"
        return "hybrid" if "cgroup2" in kinds.values() else "legacy"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """The environment of containerd (and so of its shims): its own binaries first on
        PATH (its shim); in the unified view, what ``runc_cgroup2`` needs."""
        path = os.environ.get("PATH", os.defpath)
        env = dict(os.environ, PATH=f"{self.build.bin_dir}{os.pathsep}{path}")
        if self.generation.cgroups == "unified":
            env["OCIRESOLVE_RUNC"] = shutil.which("runc") or "runc"
            env["OCIRESOLVE_RUNC_BUNDLES"] = str(self.base_dir / "runc-bundles")
        return env

    def _runc_dispatch(self) -> Path:
        """The unified view's runc (see ``runc_cgroup2``), written into the base directory."""
        path = self.base_dir / "runc"
        path.write_text(
            _RUNC_DISPATCH.format(
                python=shlex.quote(sys.executable),
                script=shlex.quote(str(_RUNC_CGROUP2)),
                runc=shlex.quote(shutil.which("runc") or "runc"),
            )
        )
        path.chmod(0o755)
        return path

    def _config(self) -> str:
        """The generation's default config, with the private paths and the settings below."""
        default = subprocess.run(
            [str(self.build.bin_dir / "containerd"), "config", "default"],
            env=self._env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        schema = self.generation.config
        found = tomllib.loads(default).get("version")
        if found != schema.version:
            raise HarnessError(
                f"containerd {self.version} writes config version {found}, the table says "
                f"{schema.version} (tests/harness/generations.py)"
            )
        cni = self.base_dir / "cni"
        settings: dict[tuple[str, str], ConfigValue] = {
            ("", "root"): str(self.root_dir),
            ("", "state"): str(self.state_dir),
            ("", "disabled_plugins"): list(schema.disabled_plugins),
            ("grpc", "address"): str(self.socket),
            ("ttrpc", "address"): f"{self.socket}.ttrpc",
            ("debug", "address"): "",
            ("debug", "level"): "info",
            schema.opt_path: str(self.base_dir / "opt"),
            schema.sandbox_image: self.sandbox_image,
            # The test VMs lack CAP_SYS_RESOURCE: without this every RunPodSandbox fails.
            schema.restrict_oom_score_adj: True,
            schema.cni_bin_dirs: schema.cni_bin_value(str(cni / "bin")),
            schema.cni_conf_dir: str(cni / "net.d"),
            # runc's state; its default (/run/containerd/runc) is shared with a host containerd.
            schema.runc_root: str(self.state_dir / "runc"),
            **dict(schema.fixed),
        }
        if self.generation.cgroups == "unified":
            # The resources a hybrid kernel keeps in cgroup v1 left out (see runc_cgroup2).
            settings[schema.runc_binary] = str(self._runc_dispatch())
        settings.update(self.config_overrides)
        text = edit_config(default, settings)
        tomllib.loads(text)  # still valid TOML
        return text

    def _wait_ready(self) -> None:
        """Poll CRI Version until it answers; fail with the log tail if the daemon dies."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer"
        while True:
            status = self._process.poll()
            if status is not None:
                raise HarnessError(
                    f"containerd exited with status {status} while starting\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            if self.socket.exists():
                try:
                    self.cri().version(timeout=1.0)
                    return
                except grpc.RpcError as e:
                    last_error = f"{e.code().name}: {e.details()}"
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # no CRI plugin: never will
                        raise HarnessError(
                            f"containerd serves no CRI runtime.v1 API ({last_error})\n"
                            f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                        ) from e
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"containerd did not answer CRI Version within {self.start_timeout}s "
                    f"({last_error})\n--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self) -> int | None:
        """SIGTERM the daemon by its PID, SIGKILL after STOP_TIMEOUT; return its exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def _force_cleanup(self) -> list[str]:
        """Kill and remove what teardown left: container processes, shims, mounts, cgroups."""
        problems = []
        stray = cgroups.subtree_pids(self.cgroup_parent)
        if stray:
            problems.append(f"killed container processes {sorted(stray)}")
            _kill_all(stray)
        shims = self.shim_pids()
        if shims:
            problems.append(f"killed shims {shims}")
            _kill_all(set(shims))
        mounts = self.mounts_below_base()
        for target in sorted(mounts, key=len, reverse=True):
            umount = ["umount", "--lazy", target]
            if self._namespace is not None:
                umount = self._namespace.command(umount)
            subprocess.run(umount, capture_output=True, check=False)
        if mounts:
            problems.append(f"unmounted {mounts}")
        left = cgroups.remove_subtree(self.cgroup_parent)
        if left:
            problems.append(f"could not remove cgroups {[str(p) for p in left]}")
        return problems


def _kill_all(pids: set[int], timeout: float = 5.0) -> None:
    """SIGKILL each PID and wait (bounded) until none of them runs any more."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.02)
