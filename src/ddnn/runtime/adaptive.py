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

WINDOW = 32  # offloaded samples in the p95 the budget is judged by
STEP = 0.05  # threshold change per step up
RECOVER = 0.7  # lower only when offloads are under budget * RECOVER: the hysteresis band
PROBE = 4  # this many offloads in a row under the band, after a move, are enough to step down
HOLD_S = 2.0  # no step down sooner than this after a step up
QUIET_S = 5.0  # no offload for this long: the evidence is stale, step down (probe)
OVERLOADED_MS = 1e9  # an OVERLOADED answer counts as an offload far over any budget


@dataclass
class BudgetController:
    """Threshold of the device's local exit under a latency budget.

    Judged on the offloads since its last move, on every offload: as soon as they prove the p95
    of a `window` is over the budget (they alone, padded with instant answers, have a p95 over
    it; an OVERLOADED answer raises at once), one `step` up. As soon as the last `probe` of them
    are all under `budget * recover` (and `hold_s` has passed since a step up), down halfway to
    the calibrated value (at least one step). After a whole window with neither: the window's p95
    decides as before (over: up; under the band: one step down; in the band: hold). Bounded to
    [calibrated, 1]. When the device alone is over the budget (p95 of device time over the last
    `window` samples) no threshold can meet it: `unreachable` is set and the threshold holds
    instead of climbing for nothing.

    Why not one decision per window: once raised, few samples offload (2 % of them at 0.8 in the
    experiment of docs/results.md), so a window of 32 offloads took 17 s to fill and the
    threshold stayed high for a whole calm phase; and on the way up, every offload of a window
    was late before the next step."""

    calibrated: float
    budget_ms: float
    window: int = WINDOW
    step: float = STEP
    recover: float = RECOVER
    probe: int = PROBE
    hold_s: float = HOLD_S
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
        if not 1 <= self.probe <= self.window or self.hold_s < 0:
            raise DdnnError("the controller needs 1 <= probe <= window and hold_s >= 0")
        self.threshold = self.calibrated
        self._offloads: deque[float] = deque(maxlen=self.window)  # total ms of offloaded samples
        self._device: deque[float] = deque(maxlen=self.window)  # device ms of every sample
        self._fresh: list[float] = []  # offloads since the last move (OVERLOADED: OVERLOADED_MS)
        self._last_offload: float | None = None
        self._last_up = float("-inf")

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
            self._fresh.append(OVERLOADED_MS if overloaded else float(total_ms or 0.0))
            self._last_offload = now
            self._decide(now)
        elif self._last_offload is None:
            self._last_offload = now
        elif now - self._last_offload >= self.quiet_s and not self.unreachable:
            # raised so far that nothing goes up any more: no news is good news, probe lower
            self._last_offload = now
            self._move(-1, f"no offload for {self.quiet_s:.1f} s", now, halfway=True)
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

    def _decide(self, now: float) -> None:
        """After each offload: move as soon as the offloads since the last move prove it."""
        if self._check_unreachable():
            self._fresh.clear()
            return
        fresh = self._fresh[-self.window :]
        padded = fresh + [0.0] * (self.window - len(fresh))  # the rest of a window, instant
        band = self.budget_ms * self.recover
        if fresh[-1] >= OVERLOADED_MS:
            self._move(+1, "server overloaded", now)
        elif percentile(padded, 95) > self.budget_ms:
            late = sum(ms > self.budget_ms for ms in fresh)
            self._move(+1, f"{late} of {len(fresh)} offloads over budget", now)
        elif (
            len(fresh) >= self.probe
            and all(ms < band for ms in fresh[-self.probe :])
            and now - self._last_up >= self.hold_s
        ):
            self._move(-1, f"last {self.probe} offloads under {band:.1f} ms", now, halfway=True)
        elif len(fresh) >= self.window:
            p95 = percentile(fresh, 95)
            if p95 < band:
                self._move(-1, f"offload p95 {p95:.1f} ms", now)
            else:
                self._fresh.clear()  # in the band: hold, judge the next window afresh

    def _check_unreachable(self) -> bool:
        unreachable = percentile(list(self._device), 95) > self.budget_ms
        if unreachable != self.unreachable:
            self.unreachable = unreachable
            if unreachable:
                log.warning(
                    "latency budget %.1f ms unreachable: the device alone takes longer; "
                    "holding the exit threshold at %.2f",
                    self.budget_ms, self.threshold,
                )  # fmt: skip
        return unreachable

    def _move(self, direction: int, why: str, now: float, *, halfway: bool = False) -> None:
        self._fresh.clear()  # every move is judged on evidence gathered after it
        size = max(self.step, (self.threshold - self.calibrated) / 2) if halfway else self.step
        new = min(1.0, max(self.calibrated, round(self.threshold + direction * size, 6)))
        if new == self.threshold:
            return
        log.info("exit threshold %.2f -> %.2f (%s)", self.threshold, new, why)
        self.threshold = new
        if direction > 0:
            self.steps_up += 1
            self._last_up = now
        else:
            self.steps_down += 1
