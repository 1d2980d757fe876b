"""The device's latency-budget controller (`ddnn device --latency-budget-ms`): it raises the
local exit threshold while offloaded samples are too slow (or the server sheds them), so more
samples answer locally, and lowers it back toward the calibrated value when they recover.

Pure: no threads, no clock of its own. The device feeds it every sample's times and the time
`now`; tests feed it a simulated clock. The control law and why it does not oscillate are in
docs/runtime.md ("Adaptive threshold").
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from ddnn.errors import DdnnError
from ddnn.stats import percentile

log = logging.getLogger(__name__)

WINDOW = 32  # offloaded samples per decision
STEP = 0.05  # threshold change per decision
RECOVER = 0.7  # lower only when p95 < budget * RECOVER: the hysteresis band
QUIET_S = 5.0  # no offload for this long: the evidence is stale, step down (probe)


@dataclass
class BudgetController:
    """Threshold of the device's local exit under a latency budget.

    Every `window` new offloaded samples it decides once: p95 of their latency above the budget
    (or an OVERLOADED answer among them): one `step` up; p95 below `budget * recover`: one step
    down; in between: hold. Bounded to [calibrated, 1]. When the device alone is over the budget
    (p95 of device time over the last `window` samples) no threshold can meet it: `unreachable`
    is set and the threshold holds instead of climbing for nothing."""

    calibrated: float
    budget_ms: float
    window: int = WINDOW
    step: float = STEP
    recover: float = RECOVER
    quiet_s: float = QUIET_S
    threshold: float = field(init=False)
    unreachable: bool = field(default=False, init=False)
    steps_up: int = field(default=0, init=False)
    steps_down: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.calibrated <= 1.0:
            raise DdnnError(f"calibrated threshold {self.calibrated:g} is outside [0, 1]")
        if self.budget_ms <= 0:
            raise DdnnError(f"--latency-budget-ms must be positive, got {self.budget_ms:g}")
        if self.window < 1 or self.step <= 0 or not 0 < self.recover < 1:
            raise DdnnError("the controller needs window >= 1, step > 0 and 0 < recover < 1")
        self.threshold = self.calibrated
        self._offloads: deque[float] = deque(maxlen=self.window)  # total ms of offloaded samples
        self._device: deque[float] = deque(maxlen=self.window)  # device ms of every sample
        self._fresh = 0  # offloads since the last decision
        self._overloaded = False  # an OVERLOADED answer since the last decision
        self._last_offload: float | None = None

    def observe(
        self, now: float, device_ms: float, total_ms: float | None, *, overloaded: bool = False
    ) -> float:
        """One sample at time `now` (seconds): its device time, its total latency when it was
        offloaded (None: answered locally), whether the server shed it. -> the threshold for
        the next sample."""
        self._device.append(device_ms)
        if total_ms is not None or overloaded:
            if total_ms is not None:
                self._offloads.append(total_ms)
            self._fresh += 1
            self._overloaded |= overloaded
            self._last_offload = now
            if self._fresh >= self.window:
                self._decide()
        elif self._last_offload is None:
            self._last_offload = now
        elif now - self._last_offload >= self.quiet_s and not self.unreachable:
            # raised so far that nothing goes up any more: no news is good news, one step down
            self._last_offload = now
            self._move(-1, f"no offload for {self.quiet_s:.1f} s")
        return self.threshold

    @property
    def p95_ms(self) -> float | None:
        """p95 latency of the last `window` offloaded samples (None before the first)."""
        return percentile(list(self._offloads), 95) if self._offloads else None

    def state(self) -> dict[str, object]:
        """What a report or a metrics endpoint shows."""
        return {
            "threshold": self.threshold, "calibrated": self.calibrated,
            "budget_ms": self.budget_ms, "p95_ms": self.p95_ms, "unreachable": self.unreachable,
            "steps_up": self.steps_up, "steps_down": self.steps_down,
        }  # fmt: skip

    def _decide(self) -> None:
        """One decision per window of new offloads."""
        p95, overloaded = self.p95_ms, self._overloaded
        self._fresh, self._overloaded = 0, False
        unreachable = percentile(list(self._device), 95) > self.budget_ms
        if unreachable != self.unreachable:
            self.unreachable = unreachable
            if unreachable:
                log.warning(
                    "latency budget %.1f ms unreachable: the device alone takes longer; "
                    "holding the exit threshold at %.2f",
                    self.budget_ms, self.threshold,
                )  # fmt: skip
        if unreachable:
            return
        if overloaded or (p95 is not None and p95 > self.budget_ms):
            why = "server overloaded" if overloaded else f"offload p95 {p95:.1f} ms"
            self._move(+1, why)
        elif p95 is not None and p95 < self.budget_ms * self.recover:
            self._move(-1, f"offload p95 {p95:.1f} ms")

    def _move(self, direction: int, why: str) -> None:
        new = self.threshold + direction * self.step
        new = min(1.0, max(self.calibrated, round(new, 6)))
        if new == self.threshold:
            return
        log.info("exit threshold %.2f -> %.2f (%s)", self.threshold, new, why)
        self.threshold = new
        if direction > 0:
            self.steps_up += 1
        else:
            self.steps_down += 1
