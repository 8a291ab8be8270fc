"""The errors of the deprecation-warnings client: the runtime is too old, or out of reach."""

from __future__ import annotations

from typing import Final

from ociresolve.errors import OciresolveError

# The first containerd release that reports deprecation warnings (Introspection.Server's
# ``deprecations``, field 4).
MINIMUM_VERSION: Final = "1.7"


class IntrospectionError(OciresolveError):
    """containerd's introspection service failed; ``code`` is the gRPC status code's name."""

    def __init__(self, endpoint: str, reason: str, *, code: str | None = None) -> None:
        super().__init__(self._text(endpoint, reason))
        self.endpoint = endpoint
        self.reason = reason
        self.code = code

    @staticmethod
    def _text(endpoint: str, reason: str) -> str:
        return f"containerd {endpoint}: {reason}"


class ServiceMissing(IntrospectionError):
    """The runtime reports no deprecation warnings: containerd older than 1.7, or not containerd.

    ``version`` is what containerd's version service said, ``None`` when it did not say.
    """

    def __init__(self, endpoint: str, version: str | None, *, code: str | None = None) -> None:
        who = f"containerd {version}" if version else "the runtime"
        reason = f"{who} has no deprecation warnings; they need containerd >= {MINIMUM_VERSION}"
        super().__init__(endpoint, reason, code=code)
        self.version = version

    @staticmethod
    def _text(endpoint: str, reason: str) -> str:
        return f"{reason} (at {endpoint})"


class RuntimeUnreachable(IntrospectionError):
    """No answer: no socket, nobody listening, no permission, or none before the deadline."""
