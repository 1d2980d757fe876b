"""Benchmark helper processes (load generators, the paho floor responder): started as
`python -c "from <module> import <function>; <function>()"`, configured by one JSON line on
stdin, and saying `ready` on stdout once they can work. A separate process each, so that no
helper shares a GIL with what it measures."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from ddnn.errors import DdnnError


class ConfiguredChild:
    """One helper process, driven over its pipes; stderr goes to `log_path`."""

    def __init__(self, entry: str, config: dict[str, Any], log_path: Path, what: str) -> None:
        module, function = entry.split(":")
        self.what = what
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from {module} import {function}; {function}()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        try:
            self.send(json.dumps(config))
        except OSError:  # it died at once (e.g. an import failed): its log says why
            self.close()
            raise DdnnError(f"the {what} exited at start:\n{self.tail()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until it says `ready`; a child that exits, says anything else or stays silent for
        `timeout` seconds is killed and reported with the end of its log."""
        assert self.proc.stdout is not None
        try:
            readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline().strip() if readable else None
        except BaseException:  # e.g. Ctrl-C while waiting: no child left behind
            self.close()
            raise
        if line != "ready":
            self.close()
            said = "nothing" if line is None else repr(line)
            raise DdnnError(f"the {self.what} failed to start (it said {said}):\n{self.tail()}")

    def send(self, line: str, last: bool = False) -> None:
        """A line to its stdin; `last` closes stdin after it (the child sees end of file)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        if last:
            self.proc.stdin.close()
        else:
            self.proc.stdin.flush()

    def finish(self, timeout: float) -> int:
        """Wait for it to exit by itself; killed (and an error) after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DdnnError(f"the {self.what} did not finish in {timeout:.0f} s") from None

    def close(self) -> None:
        """Kill it if it still runs; free the pipes and the log."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):  # unflushed input to a child that is gone
                    pipe.close()
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
