"""Why the real-runtime tests cannot run on this machine, if they cannot.

Each function returns ``None`` when everything is there, else one line naming what is missing
and how to get it, fit for ``pytest.skip`` / ``pytest.fail``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from .cgroups import cgroup_mounts
from .generations import Generation, locate
from .namespace import unified_requirements

INSTALL_HINT = "run scripts/install-system as root"

# Binaries the harness runs besides each generation's own containerd, shim and ctr (the shim
# starts runc).
_TOOLS = ("runc", "busybox", "gcc")

# ELF program header type of the dynamic loader entry: a static binary has none.
_PT_INTERP = 3


def root_requirements() -> str | None:
    """Tests marked ``root``: the effective user must be root."""
    if os.geteuid() != 0:
        return f"needs root (running as uid {os.geteuid()})"
    return None


@functools.cache
def requirements() -> str | None:
    """Tests marked ``e2e``: root, runc, static busybox and gcc, cgroups (and, for the tests
    of a containerd generation, ``generation_requirements``)."""
    reason = root_requirements()
    if reason is not None:
        return reason
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: {INSTALL_HINT}"
    busybox = shutil.which("busybox")
    assert busybox is not None
    if not is_static_elf(busybox):
        return f"{busybox} is not statically linked (install busybox-static): {INSTALL_HINT}"
    libc_a = subprocess.run(
        ["gcc", "-print-file-name=libc.a"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not Path(libc_a).is_absolute():
        return f"gcc cannot link statically, no libc.a (install libc6-dev): {INSTALL_HINT}"
    if not cgroup_mounts():
        return "no cgroup filesystem mounted under /sys/fs/cgroup"
    return None


@functools.cache
def generation_requirements(generation: Generation) -> str | None:
    """A containerd generation: its binaries (fetched, or on PATH), and for the unified view
    what makes its mount namespace."""
    located = locate(generation)
    if isinstance(located, str):
        return located
    if generation.cgroups == "unified":
        reason = unified_requirements()
        if reason is not None:
            return f"containerd {generation.id}: {reason}"
    return None


# Where BCC 0.26 reads tracepoint formats: debugfs' tracing directory if it exists, else tracefs.
_TRACEFS_DIRS = (Path("/sys/kernel/debug/tracing"), Path("/sys/kernel/tracing"))


@functools.cache
def bpf_requirements() -> str | None:
    """Tests marked ``bpf``: root, BCC importable, kernel headers, tracefs, gcc for the helper."""
    reason = root_requirements()
    if reason is not None:
        return reason
    try:
        importlib.import_module("bcc")  # loads libbcc.so too, which find_spec would not
    except (ImportError, OSError) as exc:
        return (
            f"python module bcc not importable ({exc}): Debian python3-bpfcc, linked into the "
            f"venv by `make venv`; {INSTALL_HINT}"
        )
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists() and not Path("/sys/kernel/kheaders.tar.xz").exists():
        return f"no kernel headers at {build}: {INSTALL_HINT}"
    tracefs = next((d for d in _TRACEFS_DIRS if (d / "events").is_dir()), None)
    if tracefs is None:
        return f"tracefs not mounted at /sys/kernel/tracing: {INSTALL_HINT}"
    if not (tracefs / "events/syscalls/sys_enter_connect/format").exists():
        return f"no syscalls:sys_enter_connect tracepoint under {tracefs} (CONFIG_FTRACE_SYSCALLS)"
    if shutil.which("gcc") is None:
        return f"gcc missing (builds the connect storm helper): {INSTALL_HINT}"
    return None


def is_static_elf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a 64-bit little-endian ELF file without a program interpreter."""
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff = int.from_bytes(header[32:40], "little")
        phentsize = int.from_bytes(header[54:56], "little")
        phnum = int.from_bytes(header[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type = int.from_bytes(table[i * phentsize : i * phentsize + 4], "little")
        if p_type == _PT_INTERP:
            return False
    return True
