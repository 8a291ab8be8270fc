#!/usr/bin/env python3
"""The main job, end to end: the containerd socket tracer on a real containerd.

Starts a private containerd, then ``ociresolve trace connect`` on its socket, then a pod
created through CRI as kubelet would, whose containers connect to the containerd socket
(bind-mounted into them, as a monitoring agent or a CI runner would have it): one connects and
exits at once, and a second process is exec'd later into the other, like ``kubectl exec``. The
tracer names each caller's pod and container from the node alone (``--no-cri``: not a single
CRI call); a host process is reported as host. Then everything is torn down.

    make demo        (root; installs containerd, runc, busybox-static and BCC first)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import (  # noqa: E402
    UNIXCONNECT,
    Containerd,
    ContainerSpec,
    TracerProcess,
    bpf_requirements,
    build_images,
    import_images,
    requirements,
)

IN_CONTAINER = "/run/containerd/containerd.sock"
_CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def show(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    missing = requirements() or bpf_requirements()
    if missing:
        print(f"demo: cannot run the tracer on a real containerd here: {missing}", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="ociresolve-demo-") as tmp,
        Containerd(Path(tmp)) as ctrd,
    ):
        import_images(ctrd.socket, build_images(Path(tmp) / "images"))
        show(f"# a private containerd (pid {ctrd.pid}), its socket at {ctrd.socket}")
        args = [
            "--socket",
            str(ctrd.socket),  # as host processes name it
            "--socket",
            IN_CONTAINER,  # as the containers name it, through their bind mount
            "--runtime-root",
            str(ctrd.state_dir),
            "--no-cri",
        ]
        show("$ ociresolve trace connect " + " ".join(args).replace(tmp, "$TMP"))
        with TracerProcess(args, on_line=show) as tracer:
            show("# a pod through CRI: 'cri-client' connects to the socket and exits at once")
            with ctrd.cri().pod(
                "checkout-7d4b9c",
                [
                    ContainerSpec(
                        "cri-client",
                        [UNIXCONNECT, IN_CONTAINER],
                        mounts=[ctrd.socket_mount("/run/containerd")],
                    ),
                    ContainerSpec(
                        "app", ["sleep", "3600"], mounts=[ctrd.socket_mount("/run/containerd")]
                    ),
                ],
                namespace="shop",
            ) as pod:
                tracer.wait_for(lambda line: "container=cri-client" in line)
                show("# kubectl exec into 'app': a process that did not exist when it started")
                subprocess.run(
                    [
                        "ctr",
                        "--address",
                        str(ctrd.socket),
                        "-n",
                        "k8s.io",
                        "task",
                        "exec",
                        "--exec-id",
                        "demo-exec",
                        pod.container_id("app"),
                        UNIXCONNECT,
                        IN_CONTAINER,
                    ],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
                tracer.wait_for(lambda line: "container=app" in line)
                show("# and a host process (kubelet, containerd, the shims and ctr are left out)")
                subprocess.run(
                    [sys.executable, "-c", _CONNECT, str(ctrd.socket)], check=True, timeout=30
                )
                tracer.wait_for(lambda line: "source=host" in line)
                show("# the pod is torn down; SIGTERM to the tracer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
