#!/usr/bin/env python3
"""The main job, end to end, on a real containerd: run a pod through CRI as kubelet would, then
resolve its bundles and its running process to the pod with ociresolve alone (no CRI call).

    make demo        (root; installs containerd, runc and busybox-static first)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import (  # noqa: E402
    Containerd,
    ContainerSpec,
    build_images,
    import_images,
    requirements,
)

import ociresolve  # noqa: E402


def main() -> int:
    missing = requirements()
    if missing:
        print(f"demo: cannot run a real containerd here: {missing}", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="ociresolve-demo-") as tmp,
        Containerd(Path(tmp)) as ctrd,
    ):
        import_images(ctrd.socket, build_images(Path(tmp) / "images"))
        print(f"# private containerd pid {ctrd.pid}, bundles in {ctrd.task_dir}")
        with ctrd.cri().pod(
            "checkout-7d4b9c",
            [
                ContainerSpec("app", ["sleep", "3600"]),
                ContainerSpec("sidecar", ["sleep", "3600"]),
            ],
            namespace="shop",
        ) as pod:
            print("\n$ ociresolve inspect <containerd state>/io.containerd.runtime.v2.task")
            sys.stdout.flush()
            subprocess.run(
                [sys.executable, "-m", "ociresolve", "inspect", str(ctrd.task_dir)], check=True
            )
            print("\n# each container's process, resolved from its cgroup and its bundle:")
            for name in pod.containers:
                bundle = ctrd.bundle_dir(pod.container_id(name))
                pid = int((bundle / "init.pid").read_text())
                ref = ociresolve.parse_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
                assert ref is not None, f"pid {pid} is not in a container"
                meta = ociresolve.read_bundle(ctrd.bundle_dir(ref.container_id))
                assert meta is not None
                print(
                    f'level=info msg="process resolved" pid={pid} '
                    f"pod={meta.pod_namespace}/{meta.pod_name} container={meta.container_name} "
                    f"container_id={ref.container_id[:12]} qos={ref.qos} runtime={meta.runtime}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
