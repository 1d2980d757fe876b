"""Start and stop the tiers as real OS processes (`ddnn serve`, `ddnn edge`, `ddnn device`), each
with its log file; a process that dies early is reported with the end of its log."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ddnn.errors import DdnnError

log = logging.getLogger(__name__)


class Process:
    """One `ddnn ...` child process; `ready_file` is written by the child once it serves."""

    def __init__(
        self,
        name: str,
        args: list[str],
        logs: Path,
        ready: bool = False,
        *,
        launch: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        """`launch`: what starts the child (Popen's signature), e.g. `EmulatedDevices.popen`
        bound to a device, to run it inside an emulated device."""
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.ready_file = logs / f"{name}.ready" if ready else None
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
            args = [*args, "--ready-file", str(self.ready_file)]
        self._log = self.log_path.open("wb")
        self.proc = launch(
            [sys.executable, "-m", "ddnn.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.info("started %s (pid %d): ddnn %s", name, self.proc.pid, " ".join(args))

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.ready_file is not None
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise DdnnError(
                    f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise DdnnError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise DdnnError(
                f"{self.name} did not finish within {timeout:.0f} s:\n{self.tail()}"
            ) from exc
        if code != 0:
            raise DdnnError(f"{self.name} failed with code {code}:\n{self.tail()}")
        return code

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the tiers shut down cleanly on it), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a paused process would hold SIGTERM back
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: for fault tests."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def pause(self) -> None:
        """SIGSTOP: the process is alive (its connections stay open) but does nothing, like a
        server stuck in a long GC or swapped out; for fault tests. Always `resume()` it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
