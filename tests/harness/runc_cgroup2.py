#!/usr/bin/env python3
"""runc, for the harness's pure cgroup v2 view of a hybrid machine (see ``namespace``).

On a hybrid kernel the controllers (cpu, memory, pids, io, ...) belong to the cgroup v1
hierarchies, and the v2 hierarchy offers only those no v1 hierarchy took (``hugetlb`` on the
test machines). runc in unified mode then fails on any resource whose controller v2 lacks: the
first one every pod meets is the ``cpu.weight`` of the sandbox (containerd gives every sandbox
2 CPU shares). On a real pure cgroup v2 node every controller is in v2 and this has nothing to
do.

So ``runc create`` and ``runc run`` get a copy of the bundle's ``config.json`` without those
resources (only those: every other field, the cgroup path and the annotations included, is
containerd's), in a directory of its own (``$OCIRESOLVE_RUNC_BUNDLES/<id>``, removed by ``runc
delete <id>``): the bundle that containerd wrote, and that ociresolve reads, is left as it is.
Every other command is runc's own. The unified view's containerd runs, as its runc
(``BinaryName``), a shell script that sends ``create``, ``run`` and ``delete`` here and execs
the real runc (``$OCIRESOLVE_RUNC``) for the rest: a Python start-up for every runc command
made each pod's stop 0.4 s slower.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

CONTROLLERS = Path("/sys/fs/cgroup/cgroup.controllers")

# OCI linux.resources field -> the cgroup v2 controller it needs (runc libcontainer/cgroups/fs2).
# devices need none (an eBPF program), network (classID, priorities) is v1 only and ignored.
_NEEDS = {
    "memory": "memory",
    "pids": "pids",
    "blockIO": "io",
    "hugepageLimits": "hugetlb",
    "rdma": "rdma",
}
_CPU_FIELDS = {"cpus": "cpuset", "mems": "cpuset"}  # the rest of linux.resources.cpu: "cpu"


def strip_resources(spec: dict[str, Any], available: set[str]) -> bool:
    """Drop from ``spec`` the resources whose controller is not ``available``; whether any."""
    resources = spec.get("linux", {}).get("resources")
    if not isinstance(resources, dict):
        return False
    changed = False
    for field, controller in _NEEDS.items():
        if field in resources and controller not in available:
            del resources[field]
            changed = True
    cpu = resources.get("cpu")
    if isinstance(cpu, dict):
        for field in list(cpu):
            if _CPU_FIELDS.get(field, "cpu") not in available:
                del cpu[field]
                changed = True
        if not cpu:
            del resources["cpu"]
    unified = resources.get("unified")
    if isinstance(unified, dict):
        for key in list(unified):
            if key.split(".", 1)[0] not in available | {"cgroup"}:
                del unified[key]
                changed = True
    return changed


def _option(args: list[str], names: tuple[str, ...]) -> int | None:
    """The index of the value of option ``names`` in ``args`` (``--bundle X``, ``--bundle=X``)."""
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return i + 1
        if any(arg.startswith(f"{name}=") for name in names):
            return i
    return None


def main() -> None:
    real = os.environ.get("OCIRESOLVE_RUNC") or shutil.which("runc") or "runc"
    args = sys.argv[1:]
    own = os.environ.get("OCIRESOLVE_RUNC_BUNDLES")
    command = next((i for i, a in enumerate(args) if a in ("create", "run", "delete")), None)
    if own and command is not None and args[command] in ("create", "run"):
        container_id = args[-1]
        at = _option(args[command + 1 :], ("--bundle", "-b"))
        index = command + 1 + at if at is not None else None
        value = None if index is None else args[index]
        if value is not None and value.startswith(("--bundle=", "-b=")):
            value = value.split("=", 1)[1]
        bundle = Path.cwd() if value is None else Path(value)
        spec = json.loads((bundle / "config.json").read_text())
        available = set(CONTROLLERS.read_text().split()) if CONTROLLERS.exists() else set()
        if strip_resources(spec, available):
            copy = Path(own) / container_id
            copy.mkdir(parents=True, exist_ok=True)
            root = spec.get("root", {})
            if not os.path.isabs(root.get("path", "/")):
                root["path"] = str(bundle / root["path"])
            (copy / "config.json").write_text(json.dumps(spec))
            if index is None:
                args[command + 1 : command + 1] = ["--bundle", str(copy)]
            else:
                args[index] = f"--bundle={copy}" if args[index].startswith("--") else str(copy)
    elif own and command is not None and args[command] == "delete" and command + 1 < len(args):
        shutil.rmtree(Path(own) / args[-1], ignore_errors=True)
    os.execv(real, [real, *args])


if __name__ == "__main__":
    main()
