"""The test images: an OCI image-layout tarball built from the host, no registry involved.

One gzip layer holds a static busybox with every applet linked in ``/bin`` and the static
``unixconnect`` helper (``unixconnect.c`` next to this file). Two images share it:

* ``PAUSE_IMAGE``: the sandbox ("pause") image, its command blocks forever;
* ``WORKLOAD_IMAGE``: the image for test containers, ``sh`` by default.

The tarball is built with the standard library only, byte-for-byte reproducibly (fixed times,
owners and gzip header), and imported with ``ctr images import`` into the ``k8s.io`` namespace
that the CRI plugin uses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError
from .requirements import is_static_elf

PAUSE_IMAGE = "localhost/ociresolve-e2e/pause:1"
WORKLOAD_IMAGE = "localhost/ociresolve-e2e/busybox:1"

# Where the helper lives inside the image.
UNIXCONNECT = "/bin/unixconnect"

_SOURCE = Path(__file__).with_name("unixconnect.c")
_EPOCH = 1_700_000_000  # fixed mtime of every layer entry: the same inputs give the same digests
_CREATED = "2023-11-14T22:13:20Z"  # the same instant, for the image config
_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

_MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MT_CONFIG = "application/vnd.oci.image.config.v1+json"
_MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class ImageSet:
    """A built image-layout tarball and the references it holds."""

    tarball: Path
    pause: str = PAUSE_IMAGE
    workload: str = WORKLOAD_IMAGE


@dataclass(frozen=True)
class _Blob:
    digest: str
    data: bytes

    @classmethod
    def of(cls, data: bytes) -> _Blob:
        return cls("sha256:" + hashlib.sha256(data).hexdigest(), data)

    def descriptor(self, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": self.digest, "size": len(self.data)}


def build_unixconnect(dest: Path) -> Path:
    """Compile ``unixconnect.c`` statically into ``dest`` (a file path) and return it."""
    result = subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", str(dest), str(_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"building unixconnect failed:\n{result.stderr}")
    return dest


def _applets(busybox: Path) -> list[str]:
    result = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return sorted({name for name in result.stdout.split() if name and "/" not in name})


def _layer(busybox: Path, unixconnect: Path) -> bytes:
    """The uncompressed layer tar: a tiny root filesystem."""
    buf = io.BytesIO()

    def add(
        name: str,
        kind: bytes,
        *,
        mode: int = 0o755,
        data: bytes = b"",
        link: str = "",
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = _EPOCH
        info.linkname = link
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "root", "run", "sys", "usr", "var"):
            add(directory, tarfile.DIRTYPE)
        add("tmp", tarfile.DIRTYPE, mode=0o1777)
        add("sbin", tarfile.SYMTYPE, mode=0o777, link="bin")
        add("usr/bin", tarfile.SYMTYPE, mode=0o777, link="../bin")
        add("etc/passwd", tarfile.REGTYPE, mode=0o644, data=b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", tarfile.REGTYPE, mode=0o644, data=b"root:x:0:\n")
        add("bin/busybox", tarfile.REGTYPE, data=busybox.read_bytes())
        add("bin/unixconnect", tarfile.REGTYPE, data=unixconnect.read_bytes())
        for applet in _applets(busybox):
            if applet not in ("busybox", "unixconnect"):
                add(f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, link="busybox")
    return buf.getvalue()


def _config(diff_id: str, architecture: str, cmd: Sequence[str]) -> bytes:
    config = {
        "created": _CREATED,
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _CREATED, "created_by": "ociresolve tests/harness/image.py"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _write_layout(dest: Path, blobs: Iterable[_Blob], index: Mapping[str, object]) -> None:
    """Write the OCI image layout as one uncompressed tar at ``dest``."""
    members = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
    ]
    members += [(f"blobs/sha256/{b.digest.removeprefix('sha256:')}", b.data) for b in blobs]
    tmp = dest.with_suffix(".partial")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _EPOCH
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, _EPOCH
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)


def build_images(work_dir: Path) -> ImageSet:
    """Build the test images into ``work_dir`` and return the tarball and its references.

    Needs ``busybox`` (statically linked: Debian's busybox-static) and ``gcc`` with a static
    libc (libc6-dev). Takes a fraction of a second; cache the result for a test session.
    """
    found = shutil.which("busybox")
    if found is None or not is_static_elf(found):
        raise HarnessError(f"need a statically linked busybox on PATH, found {found}")
    busybox = Path(found).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    unixconnect = build_unixconnect(work_dir / "unixconnect")

    raw = _layer(busybox, unixconnect)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer = _Blob.of(gzip.compress(raw, compresslevel=6, mtime=0))
    architecture = _GOARCH.get(platform.machine(), platform.machine())

    blobs = [layer]
    manifests = []
    for ref, cmd in ((PAUSE_IMAGE, ["sleep", "2147483647"]), (WORKLOAD_IMAGE, ["sh"])):
        config = _Blob.of(_config(diff_id, architecture, cmd))
        manifest = _Blob.of(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": _MT_MANIFEST,
                    "config": config.descriptor(_MT_CONFIG),
                    "layers": [layer.descriptor(_MT_LAYER)],
                },
                sort_keys=True,
            ).encode()
        )
        blobs += [config, manifest]
        descriptor = manifest.descriptor(_MT_MANIFEST)
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref}
        manifests.append(descriptor)

    tarball = work_dir / "ociresolve-e2e-images.tar"
    _write_layout(tarball, blobs, {"schemaVersion": 2, "manifests": manifests})
    return ImageSet(tarball=tarball)


def import_images(
    socket: Path, images: ImageSet, *, timeout: float = 60.0, ctr: str = "ctr"
) -> None:
    """Import ``images`` into the ``k8s.io`` namespace of the containerd at ``socket``
    (``Containerd.import_images`` does it with that containerd's own ``ctr``)."""
    import_tarball(socket, images.tarball, timeout=timeout, ctr=ctr)


def import_tarball(socket: Path, tarball: Path, *, timeout: float = 60.0, ctr: str = "ctr") -> None:
    """Import an image tarball (OCI layout or docker-archive) into the ``k8s.io`` namespace
    of the containerd at ``socket``, where the CRI plugin finds it."""
    command = [ctr, "--address", str(socket), "--namespace", "k8s.io"]
    command += ["images", "import", str(tarball)]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{' '.join(command)} timed out after {timeout}s") from e
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
