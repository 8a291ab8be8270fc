"""deploy/variants/deprecations/podmonitor.yaml, the optional PodMonitor of the deprecations
variant: against the part of the Prometheus Operator's ``monitoring.coreos.com/v1`` schema it
uses (strict: a misspelt field fails), applied on its own (no kustomization lists it), and
aimed at what the variant renders: its pods, their namespace, their metrics port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml
from deploytree import DEPLOY, kustomizations, load_documents

PODMONITOR = DEPLOY / "variants" / "deprecations" / "podmonitor.yaml"
Render = Callable[[str], list[dict[str, Any]]]

# Prometheus' duration (the CRD's pattern for interval and scrapeTimeout).
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


# The fields of prometheus-operator's CRD (example/prometheus-operator-crd/
# monitoring.coreos.com_podmonitors.yaml) that the manifest may use, with their types.
SCHEMA = _closed(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": _closed(
            {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ("name", "namespace"),
        ),
        "spec": _closed(
            {
                "selector": _closed(
                    {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    ("matchLabels",),
                ),
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {
                                "type": "array",
                                "items": _closed(
                                    {
                                        "sourceLabels": _STRINGS,
                                        "targetLabel": {"type": "string"},
                                        "action": {"enum": ["replace", "keep", "drop"]},
                                    }
                                ),
                            },
                        },
                        ("port",),
                    ),
                },
            },
            ("selector", "podMetricsEndpoints"),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)


def _podmonitor() -> dict[str, Any]:
    (document,) = load_documents(PODMONITOR)
    return document


def test_the_podmonitor_fits_the_schema() -> None:
    try:
        jsonschema.validate(_podmonitor(), SCHEMA)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "<top>"
        pytest.fail(f"{PODMONITOR.name} at {where}: {exc.message}", pytrace=False)


def test_the_schema_is_strict() -> None:
    misspelt = _podmonitor()
    misspelt["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(misspelt, SCHEMA)


def test_no_kustomization_applies_it() -> None:
    # Optional: a cluster without the Prometheus Operator's CRDs could not apply the variant.
    for kustomization in kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        listed = [
            (kustomization.parent / entry).resolve()
            for key in ("resources", "bases", "patchesStrategicMerge")
            for entry in spec.get(key, [])
        ]
        assert PODMONITOR.resolve() not in listed, kustomization


def test_a_scrape_times_out_within_its_interval() -> None:
    (endpoint,) = _podmonitor()["spec"]["podMetricsEndpoints"]
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


@pytest.mark.tools
def test_it_selects_the_variants_pods_on_their_metrics_port(render: Render) -> None:
    podmonitor = _podmonitor()
    (daemonset,) = [doc for doc in render("deprecations") if doc["kind"] == "DaemonSet"]
    template = daemonset["spec"]["template"]
    assert podmonitor["metadata"]["namespace"] == daemonset["metadata"]["namespace"]
    wanted = podmonitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= template["metadata"]["labels"].items()
    (main,) = [c for c in template["spec"]["containers"] if c["name"] == "ociresolve"]
    ports = {port["name"] for port in main["ports"]}
    for endpoint in podmonitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports
        assert endpoint.get("path", "/metrics") == template["metadata"]["annotations"].get(
            "prometheus.io/path", "/metrics"
        )


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(duration)


def test_the_clients_labels_are_kept_as_the_daemon_wrote_them() -> None:
    """The gauges' ``namespace``, ``pod`` and ``container`` name the client; without
    ``honorLabels`` Prometheus would rename them ``exported_*`` and the README's queries would
    find nothing."""
    (endpoint,) = _podmonitor()["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True
