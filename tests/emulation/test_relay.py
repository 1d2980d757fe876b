"""The relay paces each chunk at the link's rate, then delays it: a single small message takes
its serialization time plus the one-way delay, which tc tbf's burst alone would not impose."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ddnn.emulation.relay import DelayRelay
from ddnn.emulation.tcpip import serialization_s

RATE = 0.25e6  # bit/s
DELAY = 0.002  # s, one way
SIZE = 1500  # bytes: one message of a 1568-bit feature map's order
# Above the floor: the relay's read-timer-write and three threads' scheduling on a shared
# 2-core machine.
SLACK_S = 0.015


class _Sink:
    """A TCP server on loopback that records when each byte count arrived."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        self.arrivals: list[tuple[float, int]] = []  # (perf_counter, bytes so far)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        total = 0
        with conn:
            while data := conn.recv(65536):
                total += len(data)
                self.arrivals.append((time.perf_counter(), total))

    def when(self, total: int, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, n in self.arrivals:
                if n >= total:
                    return t
            time.sleep(0.001)
        raise AssertionError(f"{total} bytes never arrived: {self.arrivals[-1:]}")


def _send_through(relay_rate: float | None, messages: int) -> list[float]:
    sink = _Sink()
    with DelayRelay(("127.0.0.1", 0), sink.address, DELAY, rate_bps=relay_rate) as relay:
        assert relay.address is not None
        with socket.create_connection(relay.address) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            time.sleep(0.05)  # connected through to the sink
            start = time.perf_counter()
            for _ in range(messages):
                sock.sendall(b"x" * SIZE)
            times = [sink.when(SIZE * (k + 1)) - start for k in range(messages)]
    sink.server.close()
    return times


def test_a_single_small_message_takes_its_serialization_plus_the_delay():
    (took,) = _send_through(RATE, 1)
    floor = DELAY + serialization_s(SIZE, RATE)  # 2 ms + 49.6 ms
    assert floor - 0.0005 <= took <= floor + SLACK_S, (took, floor)


def test_back_to_back_messages_queue_behind_each_other():
    times = _send_through(RATE, 3)
    # the kernel may hand the relay two messages in one read; either way the last byte of the
    # third leaves after three messages' worth of wire time
    floor = DELAY + 3 * SIZE * 8 / RATE
    assert times[-1] >= floor - 0.0005, (times, floor)
    assert times[-1] <= DELAY + serialization_s(3 * SIZE, RATE) + 3 * SLACK_S, times


def test_without_a_rate_the_relay_only_delays():
    (took,) = _send_through(None, 1)
    assert DELAY - 0.0005 <= took <= DELAY + SLACK_S, took


@pytest.mark.parametrize("rate", [0.25e6, 1e6])
def test_set_delay_changes_the_pacing_rate_live(rate):
    sink = _Sink()
    with DelayRelay(("127.0.0.1", 0), sink.address, DELAY, rate_bps=100e6) as relay:
        assert relay.address is not None
        relay.set_delay(DELAY, rate)
        with socket.create_connection(relay.address) as sock:
            time.sleep(0.05)
            start = time.perf_counter()
            sock.sendall(b"x" * SIZE)
            took = sink.when(SIZE) - start
    sink.server.close()
    floor = DELAY + serialization_s(SIZE, rate)
    assert floor - 0.0005 <= took <= floor + SLACK_S, (took, floor)


def test_closing_with_a_connection_open_logs_no_error(caplog):
    """close() cancels the open connections; asyncio used to log each cancelled one as an
    error ("Exception in callback ... CancelledError")."""
    sink = _Sink()
    with caplog.at_level("ERROR"):
        with DelayRelay(("127.0.0.1", 0), sink.address, 0.0) as relay:
            client = socket.create_connection(relay.address)
            client.sendall(b"x")
            sink.when(1)
        client.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
