"""The shape of the ids container runtimes generate: 32 random bytes in lower-case hex."""

from __future__ import annotations

from typing import Final

ID_LENGTH: Final = 64
SHORT_ID_LENGTH: Final = 12
_HEX: Final = "0123456789abcdef"


def is_runtime_id(text: str) -> bool:
    """True for a full containerd / cri-o / docker / podman container id."""
    return len(text) == ID_LENGTH and not text.strip(_HEX)
