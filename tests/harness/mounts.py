"""The host's mount table, as this process sees it (``/proc/self/mounts``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTS_FILE = Path("/proc/self/mounts")

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    source: str
    target: Path
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` is a space, ``\\134`` a backslash)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(mounts_file: Path = MOUNTS_FILE) -> list[MountEntry]:
    entries = []
    for line in mounts_file.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        entries.append(
            MountEntry(
                _unescape(fields[0]),
                Path(_unescape(fields[1])),
                fields[2],
                tuple(fields[3].split(",")),
            )
        )
    return entries


MOUNTINFO_FILE = Path("/proc/self/mountinfo")


def propagation_of(path: str | Path, mountinfo_file: Path = MOUNTINFO_FILE) -> str:
    """``"shared"``, ``"slave"`` or ``"private"``: the propagation of the mount ``path`` is on.

    A bind mount with HostToContainer (rslave) or Bidirectional (rshared) propagation needs its
    source on a shared or slave mount; on a machine without systemd ``/`` is often private.
    """
    resolved = Path(path).resolve()
    best: tuple[int, str] = (-1, "private")
    for line in mountinfo_file.read_text().splitlines():
        fields = line.split()
        # id parent major:minor root mount-point options optional-fields... - fstype ...
        target = Path(_unescape(fields[4]))
        if not resolved.is_relative_to(target) or len(target.parts) <= best[0]:
            continue
        optional = fields[6 : fields.index("-")]
        if any(f.startswith("shared:") for f in optional):
            kind = "shared"
        elif any(f.startswith("master:") for f in optional):
            kind = "slave"
        else:
            kind = "private"
        best = (len(target.parts), kind)
    return best[1]
