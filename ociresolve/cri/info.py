"""The verbose ``info`` of CRI ``ContainerStatus`` / ``PodSandboxStatus``: process and spec.

Runtimes answer ``verbose=true`` with a ``map<string, string>`` of JSON documents, in one of
two shapes:

* ``{"info": "<JSON>"}``, the document holding ``pid`` and ``runtimeSpec`` (containerd, and
  cri-o since 1.16);
* ``{"pid": "<JSON>", "runtimeSpec": "<JSON>", ...}``, each field its own entry (older cri-o).

A ``pid`` of 0 (created, not started) is unknown, never a real PID. The ``runtimeSpec`` is the
OCI spec the runtime generated: its annotations go through the same ``normalize()`` as a
bundle's ``config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec


class VerboseInfo(msgspec.Struct, frozen=True, kw_only=True):
    pid: int | None = None
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    cgroups_path: str | None = None
    sandbox_id: str | None = None


def parse_verbose_info(info: Mapping[str, str]) -> VerboseInfo | None:
    """The process and spec in a verbose ``info`` map; ``None`` when it holds neither.

    Never raises: a runtime's garbage is "no information".
    """
    if "info" in info:
        document = _json(info["info"])
    else:
        document = {key: _json(value) for key, value in info.items()}
    if not isinstance(document, dict):
        return None
    return _from_document(document)


def parse_info_document(document: Any) -> VerboseInfo | None:
    """The same, from an already decoded document (what ``crictl inspect`` prints as ``info``)."""
    if isinstance(document, dict) and isinstance(document.get("info"), dict):
        document = document["info"]  # a whole `crictl inspect` output: {"status", "info"}
    return _from_document(document) if isinstance(document, dict) else None


def _from_document(document: dict[str, Any]) -> VerboseInfo | None:
    pid = document.get("pid")
    spec = document.get("runtimeSpec")
    if not isinstance(spec, dict) and not isinstance(pid, int):
        return None
    spec = spec if isinstance(spec, dict) else {}
    annotations = spec.get("annotations")
    linux = spec.get("linux")
    cgroups_path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    sandbox_id = document.get("sandboxID")
    return VerboseInfo(
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        annotations={k: v for k, v in (annotations or {}).items() if isinstance(v, str)}
        if isinstance(annotations, dict)
        else {},
        cgroups_path=cgroups_path if isinstance(cgroups_path, str) else None,
        sandbox_id=sandbox_id if isinstance(sandbox_id, str) and sandbox_id else None,
    )


def _json(text: str) -> Any:
    """The first JSON value of ``text`` (a runtime may append junk), or ``None``."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text.strip())
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply
        return None
    return value
