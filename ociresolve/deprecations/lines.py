"""The reporter's log lines: a new occurrence of a deprecation warning, and a client it is
attributed to. logfmt (the original reporter's format, its fields first) or JSON objects with
the same fields."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from ociresolve.deprecations.client import V1ALPHA2
from ociresolve.deprecations.correlate import Attribution
from ociresolve.render import json_line, logfmt_line, rfc3339_milli, rfc3339_nano

OCCURRENCE_MSG: Final = "found deprecation warning"
# The original reporter's words for the CRI v1alpha2 warning, kept so that its readers still
# match; every other id gets OCCURRENCE_MSG. Both lines carry deprecation=<id>.
V1ALPHA2_MSG: Final = "found CRI v1alpha2 API deprecation warning"
CLIENT_MSG: Final = "deprecated API client"

# The fields of a line, in order; ``None`` values are left out.
Fields = tuple[tuple[str, object], ...]
Format = Literal["logfmt", "json"]


def render(fields: Fields, output: Format = "logfmt") -> str:
    """One line: logfmt (a confidence with two decimals, as the original reporter wrote it) or
    a JSON object (the number as it is)."""
    if output == "json":
        return json_line({k: v for k, v in fields if v is not None})
    return logfmt_line((k, f"{v:.2f}" if isinstance(v, float) else v) for k, v in fields)


# -- log lines ---------------------------------------------------------------------------------


def occurrence_line(
    *,
    time_ns: int,
    node: str,
    deprecation: str,
    last_occurrence_ns: int | None,
    existing: bool = False,
) -> str:
    return render(
        occurrence_fields(
            time_ns=time_ns,
            node=node,
            deprecation=deprecation,
            last_occurrence_ns=last_occurrence_ns,
            existing=existing,
        )
    )


def occurrence_fields(
    *,
    time_ns: int,
    node: str,
    deprecation: str,
    last_occurrence_ns: int | None,
    existing: bool = False,
) -> Fields:
    """The logfmt line of a new occurrence, the original reporter's fields first::

        time=... level=info msg="found CRI v1alpha2 API deprecation warning" node=vm
            deprecation=io.containerd.deprecation/cri-api-v1alpha2
            lastOccurrence=2025-06-16T18:21:30.959558222Z

    ``msg`` is the original's for the CRI v1alpha2 id, ``found deprecation warning`` for every
    other id. ``existing=true`` marks a warning that was already there when polling started
    (its occurrence may predate the tracer).
    """
    return (
        ("time", rfc3339_milli(time_ns)),
        ("level", "info"),
        ("msg", V1ALPHA2_MSG if deprecation == V1ALPHA2 else OCCURRENCE_MSG),
        ("node", node),
        ("deprecation", deprecation),
        (
            "lastOccurrence",
            None if last_occurrence_ns is None else rfc3339_nano(last_occurrence_ns),
        ),
        ("existing", True if existing else None),
    )


def client_line(
    attribution: Attribution, *, time_ns: int, node: str, workload: str | None = None
) -> str:
    return render(client_fields(attribution, time_ns=time_ns, node=node, workload=workload))


def client_fields(
    attribution: Attribution, *, time_ns: int, node: str, workload: str | None = None
) -> Fields:
    """The logfmt line of one attributed client::

        time=... level=info msg="deprecated API client" node=vm
            deprecation=io.containerd.deprecation/cri-api-v1alpha2 pod=shop/checkout-7d4b9c
            container=legacy workload=Deployment/checkout comm=crictl confidence=0.91
            occurrences=10

    ``pod`` and ``container`` are left out for a host process, ``workload`` when it is not
    known (``deprecations.workloads``); ``confidence`` has two decimals.
    """
    identity = attribution.identity
    return (
        ("time", rfc3339_milli(time_ns)),
        ("level", "info"),
        ("msg", CLIENT_MSG),
        ("node", node),
        ("deprecation", attribution.deprecation),
        ("pod", identity.pod),
        ("container", identity.container),
        ("workload", workload),
        ("comm", identity.comm),
        ("confidence", round(attribution.confidence, 2)),
        ("occurrences", attribution.occurrences),
    )


def client_lines(
    attributions: Iterable[Attribution], *, time_ns: int, node: str, minimum: float = 0.0
) -> list[str]:
    """``client_line`` of each attribution whose confidence is at least ``minimum``."""
    return [
        client_line(row, time_ns=time_ns, node=node)
        for row in attributions
        if row.confidence >= minimum
    ]
