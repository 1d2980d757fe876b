"""Distributed tests run real gloo process groups on loopback; every test checks that it leaves
no child process behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def _children() -> list[int]:
    me, kids = os.getpid(), []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) != me or fields.get("State", "")[:1] == "Z":
            continue
        cmdline = (status.parent / "cmdline").read_bytes()
        if b"multiprocessing.resource_tracker" in cmdline:  # spawn's helper, exits with pytest
            continue
        kids.append(int(status.parent.name))
    return kids


@pytest.fixture(autouse=True)
def no_leaked_processes():
    yield
    deadline = time.monotonic() + 10
    while _children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children() == [], "a test left child processes running"
