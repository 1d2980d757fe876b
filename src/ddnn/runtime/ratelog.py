"""Warnings that a flood cannot turn into a flood of log lines.

A sender that repeats one mistake 20,000 times must not cost the receiver 20,000 log lines (an
abuse run grew a server's log by 11 MB): per key, the first `burst` warnings of each interval
are logged, the rest only counted, and one summary line says how many were held back. The
metrics count every one of them (`errors_total` and friends), so nothing is lost but noise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ddnn.runtime.metric_names import LOG_SUPPRESSED
from ddnn.runtime.metrics import Metrics


class RateLimitedLog:
    """Log warnings through `logger`, at most `burst` per key per `interval_s` seconds; keys
    must come from a small fixed set (e.g. an error code's name), as they label a metric."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, warnings in it)

    def warning(
        self, key: str, message: str, *args: object, metrics: Metrics | None = None
    ) -> None:
        """Log `message % args` unless `key` used up its burst in this interval; counted
        (`log_suppressed_total{key}`) when held back."""
        now = self._clock()
        with self._lock:
            start, seen = self._windows.get(key, (now, 0))
            held = max(0, seen - self.burst)
            if now - start >= self.interval_s:
                start, seen = now, 0
            else:
                held = 0
            seen += 1
            self._windows[key] = (start, seen)
        if held:
            self.logger.warning(
                "%d more %r warnings in the last %.0f s were not logged", held, key, self.interval_s
            )
        if seen <= self.burst:
            self.logger.warning(message, *args)
        elif metrics is not None:
            metrics.inc(*LOG_SUPPRESSED, key=key)
