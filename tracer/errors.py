"""Why the tracer cannot run here, each with what to do about it."""

from __future__ import annotations


class TracerUnavailable(Exception):
    """BPF cannot be loaded on this machine (privileges, BCC, headers, tracefs)."""
