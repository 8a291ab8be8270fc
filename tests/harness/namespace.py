"""A pure cgroup v2 view of this machine: a private mount namespace whose ``/sys/fs/cgroup`` is
the unified hierarchy alone.

On a hybrid machine (cgroup v1 controllers at ``/sys/fs/cgroup/<controller>``, the v2 hierarchy
at ``/sys/fs/cgroup/unified``) runc uses cgroup v1: it decides by what ``/sys/fs/cgroup`` is.
In this namespace ``/sys/fs/cgroup`` is the host's own v2 mount, moved there, and the tmpfs and
v1 mounts are gone (from the namespace only: its propagation is private, nothing goes back to
the host). containerd, its shims and runc, started inside, then make pods as on a pure cgroup
v2 node, and an ociresolve process run inside (``command``) sees what it would see there. The
cgroups are the host's: the same directories, with the same inode numbers (BPF's cgroup ids),
are at ``/sys/fs/cgroup/unified/<path>`` outside.

A process of its own (``sleep``) holds the namespace, so that containerd can be stopped and
started again in the same one. ``stop()`` kills it by its PID; the namespace, and any mount
left in it, goes with its last process.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .cgroups import cgroup_mounts
from .errors import HarnessError
from .mounts import MountEntry, mount_table

CGROUP_ROOT = Path("/sys/fs/cgroup")
START_TIMEOUT = 10.0
_TOOLS = ("unshare", "nsenter", "mount", "umount", "sleep", "env")

# Run by ``unshare --mount --propagation private`` as ``sh -c SCRIPT sh V2_MOUNT STAGE``: bind
# the v2 hierarchy aside, drop everything at /sys/fs/cgroup, move the v2 mount there.
_SETUP = r"""
set -e
v2="$1"; stage="$2"
if [ "$v2" != /sys/fs/cgroup ]; then
    mount --bind "$v2" "$stage"
    umount --recursive /sys/fs/cgroup
    mount --move "$stage" /sys/fs/cgroup
fi
echo ready
exec sleep 2147483647
"""


def unified_requirements() -> str | None:
    """Why this machine cannot have the unified view, or None."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (util-linux, coreutils) for a mount namespace"
    if not any(m.version == 2 for m in cgroup_mounts()):
        return "no cgroup v2 hierarchy mounted: a pure cgroup v2 view needs one"
    return None


class UnifiedCgroupNamespace:
    """The namespace (see the module); ``stage`` is an empty directory it may mount on."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self._holder: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The holder's PID: ``/proc/<pid>/ns/mnt`` is the namespace."""
        if self._holder is None:
            raise HarnessError("the cgroup v2 namespace is not running")
        return self._holder.pid

    def start(self) -> UnifiedCgroupNamespace:
        reason = unified_requirements()
        if reason is not None:
            raise HarnessError(reason)
        v2 = next(m.path for m in cgroup_mounts() if m.version == 2)
        self.stage.mkdir(parents=True, exist_ok=True)
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        holder = subprocess.Popen(
            [*unshare, "sh", "-c", _SETUP, "sh", str(v2), str(self.stage)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._holder = holder
        assert holder.stdout is not None and holder.stderr is not None
        ready, _, _ = select.select([holder.stdout], [], [], START_TIMEOUT)
        line = holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            error = holder.stderr.read().decode(errors="replace").strip()
            raise HarnessError(f"could not make a cgroup v2 mount namespace: {error or 'timeout'}")
        holder.stdout.close()
        holder.stderr.close()
        return self

    def stop(self) -> None:
        """Kill the holder (idempotent)."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        if holder.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                holder.send_signal(signal.SIGKILL)
        holder.wait()
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    def command(self, argv: Sequence[str], cwd: str | Path | None = None) -> list[str]:
        """``argv`` run in the namespace (in ``cwd``, else ``/``). ``nsenter`` and ``env``
        exec it: it keeps the PID the caller starts."""
        chdir = [f"--chdir={cwd}"] if cwd is not None else []
        return ["nsenter", f"--mount=/proc/{self.pid}/ns/mnt", "--", "env", *chdir, *argv]

    def mounts(self) -> list[MountEntry]:
        """The namespace's mount table."""
        return mount_table(Path(f"/proc/{self.pid}/mounts"))
