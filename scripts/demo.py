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
        print(f"# private containerd pid {ctrd.pid}, state in {ctrd.state_dir}")
        # The live index, started before the pod exists: it learns each container from its
        # bundle's config.json, before the container's first process runs.
        with ociresolve.Resolver(runtime_roots=[str(ctrd.state_dir)]) as resolver:
            resolver.subscribe(_print_change)
            with ctrd.cri().pod(
                "checkout-7d4b9c",
                [
                    ContainerSpec("app", ["sleep", "3600"]),
                    ContainerSpec("sidecar", ["sleep", "3600"]),
                ],
                namespace="shop",
            ) as pod:
                print("\n# each container's process, resolved by the live index (no CRI call):")
                for name in pod.containers:
                    record = resolver.container(pod.container_id(name))
                    assert record is not None and record.pid is not None
                    answer = resolver.resolve_pid(record.pid)
                    assert answer is not None
                    by_cgroup = resolver.lookup_cgroup_id(record.cgroup_id or 0)
                    meta = answer.meta
                    print(
                        f'level=info msg="process resolved" pid={record.pid} '
                        f"pod={meta.pod_namespace}/{meta.pod_name} "
                        f"container={meta.container_name} container_id={meta.container_id:.12} "
                        f"source={answer.source} cgroup_id={record.cgroup_id} "
                        f"by_cgroup_id={'yes' if by_cgroup == meta else 'no'}"
                    )
                sys.stdout.flush()
                print("\n$ ociresolve list --runtime-root <containerd state>")
                sys.stdout.flush()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "ociresolve",
                        "list",
                        "--runtime-root",
                        str(ctrd.state_dir),
                    ],
                    check=True,
                )
            print()
    return 0


def _print_change(record: ociresolve.IndexedContainer, change: ociresolve.Change) -> None:
    meta = record.meta
    print(
        f'level=info msg="container {change}" pod={meta.pod_namespace}/{meta.pod_name} '
        f"container={meta.container_name or '(sandbox)'} container_id={meta.container_id:.12} "
        f"pid={record.pid}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
