"""deploy/ against the Kubernetes schemas (kubernetes-validate, offline, strict: an unknown field
fails), as written and as each variant renders; and kustomizations that old kustomize builds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploytree import DEPLOY, K8S_VERSION, KUSTOMIZATION, kustomizations, load_documents, variants

# What the kustomize embedded in kubectl 1.20 (Debian 12's kubernetes-client, kustomize v2)
# understands: `resources` lists files only (directories go in `bases`), no `patches`, no
# `components`. Newer kustomize reads all of these, with deprecation warnings for some.
KUSTOMIZE_V2_FIELDS = {
    "apiVersion",
    "kind",
    "bases",
    "resources",
    "patchesStrategicMerge",
    "patchesJson6902",
    "commonLabels",
    "commonAnnotations",
    "namespace",
    "namePrefix",
    "images",
}


def _validate(document: dict[str, Any], where: str) -> None:
    try:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        kind = document.get("kind")
        name = document.get("metadata", {}).get("name")
        pytest.fail(f"{where}: {kind}/{name} at {path or '<top>'}: {exc.message}", pytrace=False)


def _resource_files() -> list[Path]:
    """The complete manifests: the files kustomizations list as resources (not patches)."""
    files = []
    for kustomization in kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []):
            path = kustomization.parent / entry
            if path.is_file():
                files.append(path)
    return sorted(files)


def _relative(path: Path) -> str:
    return str(path.relative_to(DEPLOY.parent))


@pytest.mark.parametrize("path", _resource_files(), ids=_relative)
def test_raw_manifest_is_valid(path: Path) -> None:
    documents = load_documents(path)
    assert documents, f"{_relative(path)} has no document"
    for document in documents:
        _validate(document, _relative(path))


@pytest.mark.parametrize("kustomization", kustomizations(), ids=_relative)
def test_kustomization_builds_with_old_kustomize(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    unknown = set(spec) - KUSTOMIZE_V2_FIELDS
    assert not unknown, f"{_relative(kustomization)}: fields kustomize v2 lacks: {unknown}"
    for entry in spec.get("resources", []):
        assert (kustomization.parent / entry).is_file(), (
            f"{_relative(kustomization)}: resource {entry} is not a file "
            "(a directory goes in `bases` for kustomize v2)"
        )
    for entry in spec.get("bases", []):
        assert (kustomization.parent / entry / KUSTOMIZATION).is_file(), entry
    for entry in spec.get("patchesStrategicMerge", []):
        assert (kustomization.parent / entry).is_file(), entry


def test_every_variant_is_found() -> None:
    # The README's commands: `kubectl apply -k deploy/` and one directory per variant.
    assert {"default", "base", "tracer", "deprecations"} <= set(variants())


@pytest.mark.tools
@pytest.mark.parametrize("variant", sorted(variants()))
def test_rendered_variant_is_valid(
    variant: str, render: Callable[[str], list[dict[str, Any]]]
) -> None:
    documents = render(variant)
    kinds = sorted(str(document.get("kind")) for document in documents)
    assert kinds == ["DaemonSet", "Namespace", "ResourceQuota", "ServiceAccount"], kinds
    for document in documents:
        _validate(document, f"variant {variant}")


@pytest.mark.tools
def test_default_is_the_base(render: Callable[[str], list[dict[str, Any]]]) -> None:
    # deploy/README.md: `kubectl apply -k deploy/` gets the daemon without the tracer.
    assert render("default") == render("base")
