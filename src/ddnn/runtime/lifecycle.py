"""The house pattern for objects that own threads or sockets: built inert, `start()`ed
explicitly (returning self), closed by an idempotent `close()`, and usable as a context manager
that starts on entry and closes on exit (also when `start` itself fails half-way)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Service(ABC):
    """Base for a started-then-closed object; subclasses give `start` and `close`."""

    @abstractmethod
    def start(self) -> Self:
        """Start threads, open sockets, subscribe; starting twice does nothing."""

    @abstractmethod
    def close(self) -> None:
        """Release everything `start` took; closing twice (or unstarted) does nothing."""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
