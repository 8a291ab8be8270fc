"""The containerd generations the end-to-end tests run on, and what each one does differently.

One row per generation (``GENERATIONS``); every expectation that depends on containerd's version
is a field of its row, and the tests read the field (``generation.v1alpha2``), never a version
number. The rows record what the real binaries did here (Debian's packages: 1.6.20 of
bookworm, 1.7.24 of trixie, 2.1.9 of unstable).

Each generation runs one release series; its binaries come from the cache that
``scripts/fetch-containerd`` (run by ``scripts/install-system``) fills and describes in its
manifest, or, failing that, from the ``containerd`` on ``PATH`` when its version is of the
series. ``2.x-unified`` is 2.x on a pure cgroup v2 view of this machine (see ``namespace``).

Standard library only, no relative imports: ``scripts/fetch-containerd`` loads this file to
learn which series to fetch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ConfigKey = tuple[str, str]
"""A setting of containerd's TOML config: (table header as written, key)."""

ConfigValue = str | bool | list[str]
"""A value the harness writes: TOML string, boolean or array of strings."""

CgroupView = Literal["host", "unified"]
"""``host``: the cgroup file systems as this machine mounts them (hybrid v1 + v2 on the test
machines); ``unified``: a private mount namespace whose ``/sys/fs/cgroup`` is the v2 hierarchy
alone, as on a pure cgroup v2 node."""


@dataclass(frozen=True)
class ConfigSchema:
    """Where the settings the harness writes live in one version of containerd's config.

    ``cni_bin_dirs`` holds a list in version 3 (``bin_dir``, a string, is deprecated there)
    and a string (``bin_dir``) in version 2. ``runc_runtime`` is the table of the runc runtime
    (``pod_annotations``, ...). ``fixed`` are more settings of that version.
    """

    version: int
    sandbox_image: ConfigKey
    restrict_oom_score_adj: ConfigKey
    cni_bin_dirs: ConfigKey
    cni_conf_dir: ConfigKey
    runc_root: ConfigKey
    runc_binary: ConfigKey
    opt_path: ConfigKey
    runc_runtime: str
    disabled_plugins: tuple[str, ...]
    fixed: tuple[tuple[ConfigKey, ConfigValue], ...]

    def cni_bin_value(self, directory: str) -> ConfigValue:
        return [directory] if self.version >= 3 else directory


_V2_CRI: Final = 'plugins."io.containerd.grpc.v1.cri"'
CONFIG_V2: Final = ConfigSchema(
    version=2,
    sandbox_image=(_V2_CRI, "sandbox_image"),
    restrict_oom_score_adj=(_V2_CRI, "restrict_oom_score_adj"),
    cni_bin_dirs=(f"{_V2_CRI}.cni", "bin_dir"),
    cni_conf_dir=(f"{_V2_CRI}.cni", "conf_dir"),
    runc_root=(f"{_V2_CRI}.containerd.runtimes.runc.options", "Root"),
    runc_binary=(f"{_V2_CRI}.containerd.runtimes.runc.options", "BinaryName"),
    opt_path=('plugins."io.containerd.internal.v1.opt"', "path"),
    runc_runtime=f"{_V2_CRI}.containerd.runtimes.runc",
    # Snapshotters the test machines cannot use: disabling them keeps their errors out of the log.
    disabled_plugins=(
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
    ),
    fixed=(),
)

# containerd 2.0 split the CRI plugin (docs/cri/config.md, "Config version 3").
_V3_IMAGES: Final = "plugins.'io.containerd.cri.v1.images'"
_V3_RUNTIME: Final = "plugins.'io.containerd.cri.v1.runtime'"
CONFIG_V3: Final = ConfigSchema(
    version=3,
    sandbox_image=(f"{_V3_IMAGES}.pinned_images", "sandbox"),
    restrict_oom_score_adj=(_V3_RUNTIME, "restrict_oom_score_adj"),
    cni_bin_dirs=(f"{_V3_RUNTIME}.cni", "bin_dirs"),
    cni_conf_dir=(f"{_V3_RUNTIME}.cni", "conf_dir"),
    runc_root=(f"{_V3_RUNTIME}.containerd.runtimes.runc.options", "Root"),
    runc_binary=(f"{_V3_RUNTIME}.containerd.runtimes.runc.options", "BinaryName"),
    opt_path=("plugins.'io.containerd.internal.v1.opt'", "path"),
    runc_runtime=f"{_V3_RUNTIME}.containerd.runtimes.runc",
    disabled_plugins=(
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.erofs",
        "io.containerd.differ.v1.erofs",
    ),
    # NRI is on by default in 2.x, on a socket at a fixed host path (/var/run/nri/nri.sock)
    # that two containerds would share.
    fixed=((("plugins.'io.containerd.nri.v1.nri'", "disable"), True),),
)

# Files of a bundle directory (<state>/io.containerd.runtime.v2.task/<ns>/<id>/).
_BUNDLE_1: Final = frozenset(
    {
        "config.json",
        "init.pid",
        "address",
        "log",  # the shim's log fifo
        "log.json",
        "options.json",
        "rootfs",
        "runtime",
        "shim-binary-path",
        "work",
    }
)
_BUNDLE_2: Final = (_BUNDLE_1 - {"address"}) | {"bootstrap.json"}
# A 2.x container shares its sandbox's shim: it names the sandbox instead of a shim binary.
_CONTAINER_BUNDLE_2: Final = (_BUNDLE_2 - {"shim-binary-path"}) | {"sandbox"}


@dataclass(frozen=True)
class Generation:
    """One containerd generation and what the tests may expect of it.

    ``id`` names it in test ids and in ``OCIRESOLVE_CONTAINERD``; ``series`` is the release
    series its binaries come from (a Debian version ``1.7.24~ds1-6`` is of series ``1.7``).
    """

    id: str
    series: str
    config: ConfigSchema
    # CRI runtime.v1alpha2 served beside runtime.v1 (removed in 2.0: containerd RELEASES.md,
    # "Deprecated features").
    v1alpha2: bool
    # The introspection service's deprecation warnings, with their lastOccurrence (1.7+:
    # containerd pkg/deprecation; `ctr deprecations list`).
    deprecation_service: bool
    # Sandbox bundles carry io.kubernetes.cri.podsandbox.image-name (2.0+: containerd
    # internal/cri/annotations).
    sandbox_image_annotation: bool
    # The files of a sandbox's bundle directory, and of a container's, once its task runs.
    sandbox_bundle_files: frozenset[str]
    container_bundle_files: frozenset[str]
    cgroups: CgroupView = "host"

    @property
    def v1alpha2_deprecation(self) -> bool:
        """Whether a v1alpha2 call shows as containerd's ``cri-api-v1alpha2`` warning."""
        return self.v1alpha2 and self.deprecation_service

    def of_series(self, debian_version: str) -> bool:
        """Whether a Debian version of containerd (``[epoch:]upstream-revision``) is ours."""
        upstream = debian_version.split(":", 1)[-1]
        return upstream.startswith(self.series + ".")


GENERATIONS: Final = (
    Generation(
        id="1.6",
        series="1.6",
        config=CONFIG_V2,
        v1alpha2=True,
        deprecation_service=False,
        sandbox_image_annotation=False,
        sandbox_bundle_files=_BUNDLE_1,
        container_bundle_files=_BUNDLE_1,
    ),
    Generation(
        id="1.7",
        series="1.7",
        config=CONFIG_V2,
        v1alpha2=True,
        deprecation_service=True,
        sandbox_image_annotation=False,
        sandbox_bundle_files=_BUNDLE_1,
        container_bundle_files=_BUNDLE_1,
    ),
    Generation(
        id="2.x",
        series="2",
        config=CONFIG_V3,
        v1alpha2=False,
        deprecation_service=True,
        sandbox_image_annotation=True,
        sandbox_bundle_files=_BUNDLE_2,
        container_bundle_files=_CONTAINER_BUNDLE_2,
    ),
    Generation(
        id="2.x-unified",
        series="2",
        config=CONFIG_V3,
        v1alpha2=False,
        deprecation_service=True,
        sandbox_image_annotation=True,
        sandbox_bundle_files=_BUNDLE_2,
        container_bundle_files=_CONTAINER_BUNDLE_2,
        cgroups="unified",
    ),
)

SERIES: Final = tuple(dict.fromkeys(g.series for g in GENERATIONS))
"""The release series to fetch, oldest first."""

DEFAULT: Final = GENERATIONS[0]
"""The generation of ``Containerd(tmp_dir)`` without one: Debian 12's package."""

SELECT_ENV: Final = "OCIRESOLVE_CONTAINERD"
"""Which generations the tests run on: ids separated by commas (default: all)."""


def by_id(ids: str | None = None) -> list[Generation]:
    """The generations named by ``ids`` (``"1.6,2.x"``), every one for None/empty/``all``."""
    if ids is None or ids.strip() in ("", "all"):
        return list(GENERATIONS)
    known = {g.id: g for g in GENERATIONS}
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise ValueError(f"unknown containerd generation {unknown}: choose from {sorted(known)}")
    return [known[i] for i in wanted]


# -- the binaries ------------------------------------------------------------------------------

CACHE_ENV: Final = "OCIRESOLVE_CONTAINERD_CACHE"
MANIFEST: Final = "manifest.json"
# What a generation's binary directory must hold: containerd starts its own shim, the harness
# imports images with its ctr.
BINARIES: Final = ("containerd", "containerd-shim-runc-v2", "ctr")


def cache_dir() -> Path:
    """$OCIRESOLVE_CONTAINERD_CACHE, else $XDG_CACHE_HOME/ociresolve/containerd (~/.cache)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ociresolve" / "containerd"


@dataclass(frozen=True)
class Build:
    """The containerd binaries of one series: the Debian version, where it came from (the
    installed package, or ``<mirror> <suite>``), the directory of ``BINARIES``."""

    series: str
    version: str
    origin: str
    bin_dir: Path


def read_manifest(path: Path | None = None) -> dict[str, dict[str, str]]:
    """The fetch manifest's entries by series (``{}`` when there is none yet)."""
    path = path or cache_dir() / MANIFEST
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    entries = document.get("series", {}) if isinstance(document, dict) else {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


_VERSION_LINE: Final = re.compile(r"^containerd \S+ v?(\S+)")


def installed_version(containerd: str) -> str | None:
    """The version ``containerd --version`` prints (``1.6.20~ds1``), or None."""
    try:
        out = subprocess.run(
            [containerd, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    match = _VERSION_LINE.match(out)
    return match.group(1) if match else None


def locate(generation: Generation, manifest: Path | None = None) -> Build | str:
    """The generation's binaries, or why there are none (one line, with what to do)."""
    entry = read_manifest(manifest).get(generation.series)
    hint = "run scripts/install-system as root (scripts/fetch-containerd)"
    series = f"containerd {generation.series}.x"
    if entry is not None and "error" in entry:
        return f"{series} could not be fetched: {entry['error']}; {hint}"
    if entry is not None:
        bin_dir = Path(entry["bin_dir"])
        missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
        if missing:
            return f"containerd {entry['version']}: no {', '.join(missing)} in {bin_dir}; {hint}"
        return Build(generation.series, entry["version"], entry["origin"], bin_dir)
    # No manifest entry: the containerd on PATH, if it is of the series (a machine prepared
    # before the manifest existed, a developer's own install).
    found = shutil.which("containerd")
    version = installed_version(found) if found else None
    if found and version and generation.of_series(version):
        bin_dir = Path(found).parent
        if all(os.access(bin_dir / b, os.X_OK) for b in BINARIES):
            return Build(generation.series, version, "PATH", bin_dir)
    return f"{series} not fetched (no {MANIFEST} entry); {hint}"
