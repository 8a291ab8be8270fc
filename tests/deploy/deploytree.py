"""Where the deploy/ manifests are, and what each variant is (shared by the deploy tests)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATION = "kustomization.yaml"

# The Kubernetes version whose schemas the manifests are validated against (kubernetes-validate).
K8S_VERSION = "1.30"


def variants() -> dict[str, Path]:
    """Every kustomization a user can apply: the default, the base and each variant."""
    found = {"default": DEPLOY, "base": DEPLOY / "base"}
    variants_dir = DEPLOY / "variants"
    for directory in sorted(variants_dir.iterdir()) if variants_dir.is_dir() else []:
        if (directory / KUSTOMIZATION).is_file():
            found[directory.name] = directory
    return found


def kustomizations() -> list[Path]:
    """Every kustomization.yaml under deploy/."""
    return sorted(DEPLOY.rglob(KUSTOMIZATION))


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def tools_requirements() -> str | None:
    """Why the ``tools`` tests cannot run here, or None."""
    if shutil.which("kubectl") is None:
        return (
            "kubectl not found (it renders the kustomizations offline): "
            "apt-get install kubernetes-client, or scripts/install-system"
        )
    return None
