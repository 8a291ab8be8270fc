"""The one error the harness raises on purpose."""

from __future__ import annotations


class HarnessError(RuntimeError):
    """The real-containerd harness could not do what a test asked (start, import, tear down)."""
