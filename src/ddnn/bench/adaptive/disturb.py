"""What changes in the middle of a run: the device's link slowed down, or the server loaded by
other devices. Each is prepared before the stream starts, so that applying it is instant, and
restored when the disturbed phase ends (restoring twice is harmless)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ddnn.bench.load.generator import GeneratorConfig, GeneratorProcess

log = logging.getLogger(__name__)

LOAD_SECONDS = 3600.0  # the generator is stopped at the end of the phase, long before this


class Disturbance(Protocol):
    """A condition switched on for the disturbed phase."""

    label: str  # the disturbed phase's name in tables and plots

    def prepare(self, tag: str) -> None:
        """Before the stream: get ready to `apply` at once (`tag` names this run's files)."""

    def apply(self) -> None: ...

    def restore(self) -> None: ...


@dataclass(frozen=True)
class LinkSetting:
    """A link's rate and one-way delay."""

    rate_mbit: float
    delay_ms: float

    def __str__(self) -> str:
        return f"{self.rate_mbit:g} Mbit, {self.delay_ms:g} ms one way"


class LinkThrottle:
    """The device's emulated link (`ddnn.emulation`) from `fast` to `slow` and back, live."""

    def __init__(self, devices: Any, fast: LinkSetting, slow: LinkSetting) -> None:
        """`devices`: the running emulation, whose `set_link(rate_mbit=, delay_ms=)` changes
        every device's link in place."""
        self.devices, self.fast, self.slow = devices, fast, slow
        self.label = f"link {slow.rate_mbit:g} Mbit"

    def prepare(self, tag: str) -> None:
        self._set(self.fast)

    def apply(self) -> None:
        self._set(self.slow)

    def restore(self) -> None:
        self._set(self.fast)

    def _set(self, link: LinkSetting) -> None:
        log.info("link: %s", link)
        self.devices.set_link(rate_mbit=link.rate_mbit, delay_ms=link.delay_ms)


class ServerOverload:
    """Other devices' offloads at `devices` x `rate` requests/s from a load-generator process
    (`ddnn bench load`'s, open loop: a slow server cannot slow them down), on the same server
    and model as the measured device."""

    def __init__(self, template: GeneratorConfig, work: Path) -> None:
        """`template`: url, model, version, shape, devices, rate, deadline; `seconds` and
        `out` are set per run."""
        self.template, self.work = template, work
        self.label = f"server +{template.devices * template.rate:g} req/s"
        self._gen: GeneratorProcess | None = None

    def prepare(self, tag: str) -> None:
        t = self.template
        cfg = GeneratorConfig(
            url=t.url, model=t.model, version=t.version, shape=t.shape,
            device_ids=tuple(range(t.devices)), devices=t.devices, rate=t.rate,
            seconds=LOAD_SECONDS, deadline_ms=t.deadline_ms,
            out=str(self.work / f"load-{tag}.json"),
        )  # fmt: skip
        self._gen = GeneratorProcess(cfg, self.work / f"load-{tag}.log")
        self._gen.wait_ready()

    def apply(self) -> None:
        assert self._gen is not None, "prepare() first"
        log.info("extra load: %s", self.label)
        self._gen.go(time.time())

    def restore(self) -> None:
        if self._gen is not None:
            log.info("extra load stopped")
            self._gen.close()
            self._gen = None
