"""Every variant's command line and environment, as rendered, are what ``ociresolve serve``
accepts, and mean what the DaemonSet needs: the host's file systems under /host and the default
runtime roots (the ones it mounts, see test_deploy_daemonset.py)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import pytest
from test_deploy_daemonset import ADDED_CAPABILITIES, HOST_ROOT, REPORTER_VARIANTS, TRACER_VARIANTS

from ociresolve.cli import _parser

pytestmark = pytest.mark.tools

Render = Callable[[str], list[dict[str, Any]]]


def _main_container(render: Render, variant: str) -> dict[str, Any]:
    (daemonset,) = (doc for doc in render(variant) if doc["kind"] == "DaemonSet")
    (container,) = (
        c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "ociresolve"
    )
    return container


def _parse(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    for name in [n for n in os.environ if n.startswith("OCIRESOLVE_")]:
        monkeypatch.delenv(name)
    for entry in container.get("env", []):
        if "value" in entry:  # valueFrom (NODE_NAME) is not an option
            monkeypatch.setenv(entry["name"], entry["value"])
    return _parser().parse_args(container["args"])


@pytest.mark.parametrize("variant", sorted(ADDED_CAPABILITIES))
def test_serve_accepts_the_variants_options(
    variant: str, render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _main_container(render, variant)
    assert container["args"][0] == "serve"
    args = _parse(container, monkeypatch)
    assert args.host_root == HOST_ROOT
    assert args.runtime_roots is None  # the built-in list, which the DaemonSet mounts
    assert args.trace_connect is (variant in TRACER_VARIANTS)
    assert args.report_deprecations is (variant in REPORTER_VARIANTS)
