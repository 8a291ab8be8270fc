"""What every command shares: exit codes and the error line."""

from __future__ import annotations

import argparse
import sys
from typing import Final, TypeAlias

EXIT_OK: Final = 0
EXIT_NOT_KUBERNETES: Final = 1  # a "no" answer: a host process, not a Kubernetes container
EXIT_ERROR: Final = 2

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def error(message: str) -> None:
    print(f"ociresolve: {message}", file=sys.stderr, flush=True)
