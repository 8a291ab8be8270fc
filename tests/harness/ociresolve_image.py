"""The ociresolve container image (deploy/image/), built by scripts/build-image, for tests.

``build_ociresolve_image()`` runs the build (or takes its cached result: the first build on a
machine takes a minute or two and needs a Debian mirror and PyPI; later ones with the same
inputs take none) and returns the OCI image-layout tarball, which ``import_tarball`` loads into
a harness containerd under ``OCIRESOLVE_IMAGE``, the name the CRI resolves the manifests'
``ociresolve:<version>`` to.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from .errors import HarnessError
from .requirements import INSTALL_HINT

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-image"
BUILD_TIMEOUT = 900.0


def _version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


OCIRESOLVE_IMAGE = f"docker.io/library/ociresolve:{_version()}"
"""What the CRI resolves ``ociresolve:<version>`` (the manifests' image) to."""


def image_build_requirements() -> str | None:
    """Why the image cannot be built here, or None (the build also needs the network)."""
    missing = [tool for tool in ("debootstrap", "chroot", "mount") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (builds the ociresolve image): {INSTALL_HINT}"
    return None


def build_ociresolve_image(*, timeout: float = BUILD_TIMEOUT) -> Path:
    """Build (or take from the cache) the image and return its tarball."""
    reason = image_build_requirements()
    if reason is not None:
        raise HarnessError(reason)
    try:
        result = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"scripts/build-image took more than {timeout}s") from e
    if result.returncode != 0:
        raise HarnessError(f"scripts/build-image failed:\n{result.stderr[-4000:]}")
    tarball = Path(result.stdout.strip().splitlines()[-1])
    if not tarball.is_file():
        raise HarnessError(f"scripts/build-image printed {tarball}, which is not a file")
    return tarball
