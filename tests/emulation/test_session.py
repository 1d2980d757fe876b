"""EmulatedDevices: links shaped and delayed, changed live, and nothing left behind after
Ctrl-C, SIGTERM, or a SIGKILL followed by the next run's sweep."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddnn.emulation.calibrate import Calibration
from ddnn.emulation.cpu import CpuControl
from ddnn.emulation.leftovers import PREFIX, sweep
from ddnn.emulation.profiles import LinkProfile
from ddnn.emulation.relay import DelayRelay
from ddnn.emulation.session import EmulatedDevices
from ddnn.errors import DdnnError

HOLD = Path(__file__).with_name("hold.py")


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and cgroups")
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"needs {tool} (iproute2)")


class Sink:
    """A TCP server counting bytes per connection: when the first and last byte came."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.times: list[tuple[float, float, int]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                first, total = None, 0
                while data := conn.recv(1 << 20):
                    first = first or time.perf_counter()
                    total += len(data)
                self.times.append((first or 0.0, time.perf_counter(), total))

    def close(self) -> None:
        self.server.close()
        with socket.socket() as poke:  # wake accept()
            poke.settimeout(0.5)
            with contextlib.suppress(OSError):
                poke.connect(self.address)
        self.thread.join(timeout=5)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


SEND = (
    "import socket, sys\n"
    "host, port = sys.argv[1].split('//')[1].split(':')\n"
    "s = socket.create_connection((host, int(port)))\n"
    "s.sendall(b'x' * int(sys.argv[2]))\n"
    "s.close()\n"
)


def _bulk_mbit(emu: EmulatedDevices, sink: Sink, size: int) -> float:
    before = len(sink.times)
    done = emu.popen(0, [sys.executable, "-c", SEND, emu.broker_url(0), str(size)])
    assert done.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while len(sink.times) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    first, last, total = sink.times[-1]
    assert total == size
    return total * 8 / (last - first) / 1e6


def test_the_rate_is_the_link_s_and_set_link_changes_it_live(sink):
    _needs_root()
    link = LinkProfile("test", "test", rate_mbit=16.0, delay_ms=1.0, source="test")
    with EmulatedDevices(1, broker=sink.address, link=link) as emu:
        slow = _bulk_mbit(emu, sink, 2_000_000)  # about 1 s at 16 Mbit/s
        emu.set_link(rate_mbit=48.0)
        fast = _bulk_mbit(emu, sink, 3_000_000)
        assert emu.link is not None and emu.link.rate_mbit == 48.0
        assert emu.to_dict()["link_changes"] == [{"rate_mbit": 48.0, "delay_ms": 1.0}]
    # tbf's bucket lets a ~1 ms burst through at line speed; over a second it is noise
    assert 16 * 0.8 < slow < 16 * 1.15, slow
    assert 48 * 0.7 < fast < 48 * 1.15, fast


def test_the_relay_holds_each_chunk_for_the_delay_in_order_and_changes_live():
    server = socket.create_server(("127.0.0.1", 0))
    with server, DelayRelay(("127.0.0.1", 0), server.getsockname(), 0.03) as relay:
        assert relay.address is not None
        client = socket.create_connection(relay.address)
        peer, _ = server.accept()
        with client, peer:
            start = time.perf_counter()
            for k in range(5):
                client.sendall(bytes([k]) * 10)
                time.sleep(0.005)
            got = b""
            while len(got) < 50:
                got += peer.recv(100)
            took = time.perf_counter() - start
            assert got == b"".join(bytes([k]) * 10 for k in range(5))  # in order
            assert took >= 0.03 + 4 * 0.005  # the last chunk was held its 30 ms too
            relay.set_delay(0.0)
            start = time.perf_counter()
            peer.sendall(b"back")
            assert client.recv(10) == b"back"
            assert time.perf_counter() - start < 0.03


def _leftovers(pid: int) -> dict[str, list[str]]:
    mine = f"{PREFIX}-{pid}-"
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    control = CpuControl.detect()
    cgroups = [p.name for p in control.root.glob(mine + "*")] if control.root else []
    return {
        "namespaces": [line for line in out.splitlines() if line.startswith(mine)],
        "links": [line for line in links.splitlines() if f"dde{pid}" in line],
        "cgroups": cgroups,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _start_hold() -> tuple[subprocess.Popen[str], dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(HOLD)], stdout=subprocess.PIPE, text=True, env=env
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        pytest.fail("the emulation did not start")
    state = json.loads(line)
    left = _leftovers(state["pid"])
    assert left["namespaces"] and left["links"] and left["cgroups"], left
    assert all(_alive(c) for c in state["children"])
    return proc, state


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_nothing_is_left_after_ctrl_c_or_sigterm(sig):
    _needs_root()
    proc, state = _start_hold()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()
    assert _leftovers(state["pid"]) == {"namespaces": [], "links": [], "cgroups": []}
    assert _wait_gone(state["children"]) == []


def test_after_sigkill_the_next_start_sweeps_the_leftovers():
    _needs_root()
    proc, state = _start_hold()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert _leftovers(state["pid"])["namespaces"]  # SIGKILL: nobody cleaned up
    swept = sweep()
    assert swept.namespaces and swept.cgroups
    assert _leftovers(state["pid"]) == {"namespaces": [], "links": [], "cgroups": []}
    assert _wait_gone(state["children"]) == []


def test_an_emulation_of_nothing_or_too_many_devices_is_refused():
    with pytest.raises(DdnnError, match="nothing to emulate"):
        EmulatedDevices(1, broker=("127.0.0.1", 1))
    link = LinkProfile("t", "t", 1.0, 1.0, "t")
    with pytest.raises(DdnnError, match="1 to 63 devices"):
        EmulatedDevices(64, broker=("127.0.0.1", 1), link=link)


def test_without_root_it_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    link = LinkProfile("t", "t", 1.0, 1.0, "t")
    emu = EmulatedDevices(1, broker=("127.0.0.1", 1), link=link, calibration=Calibration(1.0))
    with pytest.raises(DdnnError, match="needs root") as caught, emu:
        pass
    assert "\n" not in str(caught.value)
