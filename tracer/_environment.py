"""What BCC needs on this machine, checked before compiling, each with what to do about it."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from .errors import TracerUnavailable

DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
INSTALL_HINT = "run scripts/install-system as root (Debian 12)"

# capability(7) numbers.
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

# Where BCC 0.26 reads tracepoint formats: debugfs' tracing dir if present, else tracefs.
_TRACEFS_CANDIDATES = (Path("/sys/kernel/debug/tracing"), Path("/sys/kernel/tracing"))
_KHEADERS = Path("/sys/kernel/kheaders.tar.xz")


def import_bcc() -> ModuleType:
    """The ``bcc`` module, or TracerUnavailable saying how to get it into this interpreter."""
    try:
        return importlib.import_module("bcc")
    except (ImportError, OSError) as exc:
        how = (
            f"it is installed ({DEBIAN_BCC}) but not visible to this interpreter: in a virtual "
            "environment, add a .pth file naming a directory that holds only a `bcc` symlink "
            f"to {DEBIAN_BCC} (`make venv` does it), never all of dist-packages"
            if DEBIAN_BCC.is_dir()
            else "install Debian's python3-bpfcc (apt-get install python3-bpfcc), or "
            f"{INSTALL_HINT}; the PyPI package named bcc is an unrelated project"
        )
        raise TracerUnavailable(f"BCC (python module bcc) not importable: {exc}; {how}") from exc


def check_privileges(status: Path = Path("/proc/self/status")) -> None:
    """CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON (tracepoints are perf events)."""
    caps = _effective_caps(status)
    if caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1):
        return
    raise TracerUnavailable(
        f"not enough privileges to load BPF (uid {os.geteuid()}, effective capabilities "
        f"{caps:#x}): run as root, or grant CAP_BPF and CAP_PERFMON (kernel 5.8+) or "
        "CAP_SYS_ADMIN; in Kubernetes, a privileged container or those capabilities"
    )


def check_kernel_headers(release: str | None = None) -> None:
    """BCC compiles against ``/lib/modules/$(uname -r)/build`` (or the kheaders module)."""
    build = Path("/lib/modules") / (release or os.uname().release) / "build"
    if build.exists() or _KHEADERS.exists():
        return
    dangling = " (a dangling symlink)" if build.is_symlink() else ""
    raise TracerUnavailable(
        f"no kernel headers at {build}{dangling}: install the headers of the running kernel "
        "(Debian: linux-headers-$(uname -r), or linux-headers-amd64 and a symlink from "
        f"{build} to /usr/src/linux-headers-*-amd64 when the kernel is not Debian's); "
        f"{INSTALL_HINT}"
    )


def check_tracefs(event: str = "syscalls/sys_enter_connect") -> None:
    """The tracepoint's format file, where BCC will look for it."""
    for root in _TRACEFS_CANDIDATES:
        if (root / "events").is_dir():
            if (root / "events" / event / "format").exists():
                return
            raise TracerUnavailable(
                f"tracepoint {event} not found under {root}/events: the kernel lacks "
                "syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"
            )
    raise TracerUnavailable(
        "tracefs not mounted (BCC reads tracepoint formats there): "
        f"mount -t tracefs tracefs /sys/kernel/tracing; {INSTALL_HINT}"
    )


def check_all() -> ModuleType:
    """Every check, cheapest first; returns ``bcc``."""
    bcc = import_bcc()
    check_privileges()
    check_kernel_headers()
    check_tracefs()
    return bcc


def ringbuf_supported(release: str | None = None) -> bool:
    """BPF_MAP_TYPE_RINGBUF needs Linux 5.8."""
    parts = (release or os.uname().release).split(".")
    try:
        version = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return True
    return version >= (5, 8)


def _effective_caps(status: Path) -> int:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return (1 << CAP_SYS_ADMIN) if os.geteuid() == 0 else 0
