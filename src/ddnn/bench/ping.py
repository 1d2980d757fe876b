"""`python -m ddnn.bench.ping URL N [BYTES]`: connect to a broker, publish a message of BYTES
(default 100) to a topic it subscribes to, N times one after another (QoS 0), and print the
round trips in ms as one JSON list. A process of its own, so it can run inside an emulated
device's namespace."""

from __future__ import annotations

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

TOPIC = "ddnn/bench/ping"
SIZE = 100


def main(url: str, count: int, size: int = SIZE) -> None:
    host, port = url.split("//")[1].split(":")
    got, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda *_: got.set()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, int(port))
    client.loop_start()
    try:
        client.subscribe(TOPIC, qos=0)
        if not subscribed.wait(30):
            raise SystemExit("no SUBACK within 30 s")
        rtts = []
        for _ in range(count):
            got.clear()
            start = time.perf_counter()
            client.publish(TOPIC, b"x" * size, qos=0)
            if not got.wait(10):
                raise SystemExit("a ping was not answered within 10 s")
            rtts.append((time.perf_counter() - start) * 1000)
    finally:
        client.loop_stop()
        client.disconnect()
    sys.stdout.write(json.dumps(rtts) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(int(x) for x in sys.argv[3:4]))
