"""A pacing, delaying TCP relay: the rate and one-way delay of an emulated link as a single
message sees them, since this kernel has no netem.

It listens on the host's end of a device's link and forwards each connection to the broker on
loopback. In each direction the relay is a link of `rate_bps` behind a wire of `delay_s`: a
chunk of n bytes read at t starts on the link at s = max(t, busy_until), occupies it for
`serialization_s(n)` (n plus the TCP/IP headers of its segments, `tcpip.py`, the planner's
definition too), and is written on at busy_until + delay_s. So a 1.5 KB message at 0.25 Mbit/s
arrives 50 ms + delay after it was sent, as on a real slow link; tc tbf alone (netns.shape) lets
a message smaller than its 6 KB burst through at once. tbf stays on both veth ends as the
kernel's cap on the rate (a sender faster than the link queues there); the relay receives at
that rate at most, so it adds only the pacing tbf's burst skipped. Without `rate_bps` the relay
only delays. The relay's own overhead (a read, a timer, a write) is about 0.3 ms per round trip
measured here; see TIMER_SLACK_S for how the hold is timed to well under a millisecond. Order is
kept: chunks leave in the order they came, and a delay or rate changed live (`set_delay`) lets
no chunk overtake one still held.

Limits, by being a TCP relay rather than a packet delay: the delay and pacing apply per chunk
the relay reads (a burst read in one go is held and paced as one, its headers counted as if the
chunk were sent in full segments); TCP's own handshake and ACKs between the device
and the relay are not delayed, so a bulk transfer's window opens as on a short link; there is no
loss, reordering or jitter. How much it may hold per direction is bounded (at least 256 KiB, or
twice the bytes one delay's worth of the link carries), so a fast sender waits on it as on a
link with that much in flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from types import TracebackType

from ddnn.emulation.tcpip import serialization_s

log = logging.getLogger(__name__)

CHUNK = 65536
MIN_HELD = 256 * 1024
# epoll's timeout is whole milliseconds, rounded up: asyncio's timers wake 0-1 ms late, more
# on a busy host. The relay sleeps on the loop to this much before a chunk is due, then the
# rest with time.sleep (nanosleep), which is precise to tens of microseconds.
TIMER_SLACK_S = 0.002


class DelayRelay:
    """`with DelayRelay(("10.0.0.1", 0), ("127.0.0.1", 1883), 0.02) as r: r.address`.
    Built inert; `start()` binds and runs its event loop on a thread; `close()` is idempotent."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        delay_s: float,
        *,
        rate_bps: float | None = None,
        name: str = "relay",
    ) -> None:
        self.listen, self.target, self.name = listen, target, name
        self.delay_s = delay_s
        self.rate_bps = rate_bps
        self.address: tuple[str, int] | None = None
        self.connections = 0  # accepted so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def set_delay(self, delay_s: float, rate_bps: float | None = None) -> None:
        """Live: chunks arriving from now on are held `delay_s` and paced at `rate_bps` when
        given (float stores are atomic)."""
        self.delay_s = delay_s
        if rate_bps is not None:
            self.rate_bps = rate_bps

    @property
    def max_held(self) -> int:
        """Bytes one direction may hold: twice a delay's worth of the link, at least 256 KiB."""
        inflight = (self.rate_bps or 0) / 8 * self.delay_s
        return max(MIN_HELD, int(2 * inflight))

    def start(self) -> DelayRelay:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, *self.listen, reuse_address=True)
            )
        except OSError:
            loop.close()
            self._loop = None
            raise
        self.address = self._server.sockets[0].getsockname()[:2]
        self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        log.info("relay %s: %s -> %s, %.1f ms each way, paced at %s bit/s", self.name,
                 self.address, self.target, self.delay_s * 1000, self.rate_bps)  # fmt: skip
        return self

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
        loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.warning("relay %s: broker %s unreachable: %s", self.name, self.target, exc)
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            return
        self._writers.add(up_writer)
        for w in (writer, up_writer):  # the relay must not add Nagle's wait to the delay
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer)
            )  # fmt: skip
        except asyncio.CancelledError:
            # close() cancels open connections; asyncio's stream callback asks this task for its
            # exception and would log a cancelled one as an error, so end it normally
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read chunks as they come, each stamped with when it may leave (paced, then delayed);
        a second task writes them out at that time, in order. Ends (closing dst) at EOF or an
        error either side."""
        loop = asyncio.get_running_loop()
        held: deque[tuple[float, bytes]] = deque()
        held_bytes = 0
        more = asyncio.Event()  # something to send
        room = asyncio.Event()  # held_bytes fell below max_held
        room.set()
        done = False
        busy_until = 0.0  # when this direction's link has sent every chunk read so far

        async def send() -> None:
            nonlocal held_bytes
            while True:
                while not held:
                    if done:
                        return
                    more.clear()
                    await more.wait()
                due, data = held[0]
                wait = due - loop.time()
                if wait > TIMER_SLACK_S:  # the event loop's timer wakes up to ~1 ms late
                    await asyncio.sleep(wait - TIMER_SLACK_S)
                    wait = due - loop.time()
                if wait > 0:  # the last ms to the microsecond; blocks this relay that long
                    time.sleep(wait)
                held.popleft()
                held_bytes -= len(data)
                if held_bytes < self.max_held:
                    room.set()
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(send())
        try:
            while not sender.done():
                await room.wait()
                data = await src.read(CHUNK)
                if not data:
                    break
                now, rate = loop.time(), self.rate_bps
                if rate:  # the link sends one chunk at a time, each for its own wire time
                    busy_until = max(now, busy_until) + serialization_s(len(data), rate)
                    held.append((busy_until + self.delay_s, data))
                else:
                    held.append((now + self.delay_s, data))
                held_bytes += len(data)
                if held_bytes >= self.max_held:
                    room.clear()
                more.set()
            done = True
            more.set()
            await sender  # deliver what is held, then close
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            dst.close()
