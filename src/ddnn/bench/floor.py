"""The MQTT client's own cost per offloaded request, without ddnn: a responder process on bare
paho that answers every request with a valid reply and does nothing else (no decoding, no
model, no queue, no duplicate filter).

`ddnn bench runtime` loads it exactly as it loads `ddnn serve` (same shared subscription, same
closed-loop generators, same Prometheus counters for the bench's bookkeeping), so the difference
in CPU per request between the two is ddnn's own cost, and the floor's CPU per request bounds
what any Python server on paho can reach: with no framework cost at all, a request still costs
the floor plus the model's forward.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from ddnn import logs
from ddnn.bench.child import ConfiguredChild
from ddnn.errors import DdnnError
from ddnn.runtime.broker import parse_broker_url
from ddnn.runtime.metric_names import BATCHES, REPLIES, REQUESTS_RECEIVED
from ddnn.runtime.metrics import Metrics, MetricsServer
from ddnn.runtime.mqtt import set_nodelay
from ddnn.runtime.protocol import SERVER_GROUP, parse_request_topic, reply_topic, request_filter
from ddnn.runtime.wire import REQUEST_ID_BYTES, Reply, Status, encode_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloorConfig:
    url: str
    model: str
    section: int
    http_port: int | None = None  # the Prometheus counters the load bench reads


class FloorResponder:
    """The bare paho client and its one callback: QoS 1 both ways and TCP_NODELAY, as ddnn's
    transport. Usable in-process (`with FloorResponder(cfg):`) or as `FloorProcess`."""

    def __init__(self, cfg: FloorConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        # the reply is a fixed valid frame with the request's id spliced in
        template = encode_frame(Reply(1, Status.OK, predicted=0, exit_index=1, entropy=0.0))
        self._head = template[: REQUEST_ID_BYTES.start]
        self._tail = template[REQUEST_ID_BYTES.stop :]
        self._subscribed = threading.Event()
        self._refused: str | None = None  # the broker's reason, when it refused us
        self._filter = request_filter(cfg.model, cfg.section, group=SERVER_GROUP)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_socket_open = set_nodelay
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        host, port = parse_broker_url(cfg.url)
        try:
            self.client.connect(host, port)
        except OSError as exc:
            raise DdnnError(f"the floor responder cannot reach {cfg.url}: {exc}") from None
        self.client.loop_start()
        self._http: MetricsServer | None = None
        try:
            if not self._subscribed.wait(10):
                raise DdnnError(f"the floor responder got no SUBACK from {cfg.url} in 10 s")
            if self._refused is not None:
                raise DdnnError(f"{cfg.url} refused the floor responder: {self._refused}")
            if cfg.http_port is not None:
                self._http = MetricsServer(self.metrics, lambda: True, port=cfg.http_port).start()
        except BaseException:
            self.close()
            raise

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = f"connection: {reason}"
            self._subscribed.set()  # nothing more will come: let the constructor report it
        else:
            client.subscribe(self._filter, qos=1)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[Any], props: Any
    ) -> None:
        failed = [code for code in codes if code.is_failure]
        if failed:
            self._refused = f"subscription {self._filter!r}: {failed[0]}"
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.metrics.inc(*REQUESTS_RECEIVED)
        try:
            device = parse_request_topic(message.topic)[2]
        except DdnnError:
            log.warning("not a request topic: %r", message.topic)
            return
        rid = message.payload[REQUEST_ID_BYTES]
        if len(rid) != 8:
            log.warning("a %d-byte message has no request id", len(message.payload))
            return
        client.publish(reply_topic(device), self._head + rid + self._tail, qos=1)
        self.metrics.inc(*REPLIES)
        self.metrics.inc(*BATCHES)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> FloorResponder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def floor_main() -> None:
    """Entry point of the responder process: config on stdin; serves until stdin closes or
    SIGTERM."""
    logs.configure(logging.WARNING, logs.BRIEF)
    cfg = FloorConfig(**json.loads(sys.stdin.readline()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FloorResponder(cfg):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()


class FloorProcess(ConfiguredChild):
    """The responder as a child process, ready when constructed; `pid` for CPU accounting."""

    def __init__(self, cfg: FloorConfig, log_path: Path) -> None:
        super().__init__("ddnn.bench.floor:floor_main", asdict(cfg), log_path, "paho floor")
        self.wait_ready()  # a child that does not get ready is closed there

    def stop(self) -> None:
        """End of its stdin tells it to disconnect and exit."""
        try:
            if self.proc.poll() is None:
                self.send("", last=True)
                self.finish(10)
        except (OSError, DdnnError) as exc:  # it died meanwhile, or would not exit
            log.warning("the paho floor did not stop cleanly (%s); killed it", exc)
        finally:
            self.close()
