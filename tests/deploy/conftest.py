"""The ``tools`` marker and the rendering of deploy/'s variants.

A test marked ``tools`` needs kubectl (its embedded kustomize renders the variants, offline). On
a machine without it the test is skipped with the reason; under ``OCIRESOLVE_REQUIRE_E2E=1``
(CI) it fails instead, as the e2e tests do.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploytree import tools_requirements, variants

REQUIRE_ENV = "OCIRESOLVE_REQUIRE_E2E"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("tools") is None:
        return
    reason = tools_requirements()
    if reason is None:
        return
    message = f"tools: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}", pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(scope="session")
def render() -> Callable[[str], list[dict[str, Any]]]:
    """Renders a variant (a key of ``variants()``) with kubectl's kustomize, once per session."""

    def render_variant(name: str) -> list[dict[str, Any]]:
        return copy.deepcopy(list(_render(variants()[name])))

    return render_variant
