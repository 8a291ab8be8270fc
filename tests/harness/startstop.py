"""What the harness starts and stops, as a context manager."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class StartStop(abc.ABC):
    """``with thing:`` is ``thing.start()`` (its value, ``thing``) and, however the block ends,
    ``thing.stop()``."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start; return ``self``."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop, and clean up what ``start()`` made."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
