"""The server path of one offload, measured as a run pays it: a private Mosquitto, a real
`ddnn serve` process on the run (the server config a run starts it with), and a device-side
Requester that connects through the emulation's relay with the link's delay and rate, as an
emulated device's does. It sends the design's real requests (the device's own features, or raw
views for server-only, encoded by the device's code) one at a time and times each from encoding
the request to having the reply: the link both ways, the broker's two hops, both clients' MQTT
work and the server process's own per-request work (receive, decode, checks, dispatch, the
layers, the reply). The link's arithmetic (predict.link_ms: the bytes at its rate, its delay
both ways) is recorded beside the round trips, so a prediction for another rate or delay swaps
it for its own (docs/planning.md).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddnn.errors import DdnnError
from ddnn.planning.records import ServerPath, Timing
from ddnn.runtime.client import Requester
from ddnn.runtime.frames import Reply, Request, Tensor
from ddnn.runtime.protocol import default_device_id, request_topic

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
WARMUP = 5
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Offload:
    """One configuration's requests: to `section`, one per input, built by `encode` inside the
    timed span (the device encodes each request after its inference)."""

    section: int
    inputs: Sequence[Any]  # what the device has when it sends (a view, or view and features)
    encode: Callable[[Any], Tensor]
    idle_s: float = 0.0  # pause before each request: the device computing, the link both ways


def server_paths(
    run_dir: str | Path, offloads: dict[str, Offload], repeats: int, link: Any = None
) -> dict[str, ServerPath]:
    """Each offload's `repeats` round trips (after WARMUP) through one real server, through a
    relay with `link`'s one-way delay and rate (anything with `delay_ms` and `rate_mbit`, e.g. a
    LinkProfile) as an emulated device's traffic is, or with neither when `link` is None."""
    from ddnn.emulation.relay import DelayRelay
    from ddnn.runtime.broker import MosquittoBroker
    from ddnn.runtime.config import ServerConfig, to_argv
    from ddnn.runtime.processes import Process
    from ddnn.runtime.transport import create_transport
    from ddnn.store.artifact import open_model

    stored = open_model(run_dir)
    with (
        tempfile.TemporaryDirectory(prefix="ddnn-path-") as logs,
        MosquittoBroker() as broker,
        DelayRelay(
            (LOOPBACK, 0),
            (LOOPBACK, broker.port),
            link.delay_ms / 1e3 if link else 0.0,
            rate_bps=link.rate_mbit * 1e6 if link else None,
        ) as relay,  # fmt: skip
    ):
        assert relay.address is not None
        serve = ["serve", str(run_dir), "--broker", broker.url, *to_argv(ServerConfig())]
        server = Process("server", serve, Path(logs), True)
        try:
            server.wait_ready()
            device_id = default_device_id(0)
            url = f"mqtt://{LOOPBACK}:{relay.address[1]}"
            with (
                create_transport(url) as transport,
                Requester(transport, device_id) as requester,
            ):
                timed = _Timed(requester, stored.name, stored.version, device_id)
                found = {k: timed.path(o, repeats) for k, o in offloads.items()}
        finally:
            server.stop()
    for key, path in found.items():
        log.info(
            "server path (%s): round trip mean %.2f ms, server %.2f ms",
            key, path.round_trip.mean, path.server.mean,
        )  # fmt: skip
    return found


@dataclass
class _Timed:
    requester: Requester
    model: str
    version: int
    device_id: str

    def path(self, offload: Offload, repeats: int) -> ServerPath:
        requester = self.requester
        topic = request_topic(self.model, offload.section, self.device_id)
        trips, server = [], []
        for i in range(WARMUP + repeats):
            time.sleep(offload.idle_s)
            item = offload.inputs[i % len(offload.inputs)]
            start = time.perf_counter()
            rid = requester.next_id()
            request = Request(
                rid, self.model, self.version, self.device_id, i, offload.section,
                (offload.encode(item),),
            )  # fmt: skip
            pending, _ = requester.send(topic, request)
            answer = requester.wait(rid, pending, TIMEOUT_S)
            if not isinstance(answer, Reply):
                raise DdnnError(f"the server did not answer a request to {topic}: {answer}")
            if i >= WARMUP:  # the first ones load the model and warm the caches
                trips.append((time.perf_counter() - start) * 1000)
                server.append(answer.queue_ms + answer.compute_ms)
        return ServerPath(Timing(tuple(trips)), Timing(tuple(server)))
