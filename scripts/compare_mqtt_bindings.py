"""CPU per request of a bare QoS-1 MQTT responder, one library or binding at a time, under the
same closed-loop load: how docs/runtime.md chose the binding behind `--mqtt-client libmosquitto`.

    python scripts/compare_mqtt_bindings.py [--requests 20000] [--rounds 3]

Responders (each a process of its own that answers every request on its network thread, QoS 1
both ways, TCP_NODELAY, MQTT v5):
  paho           paho-mqtt 2.x
  pymosquitto    pymosquitto 0.4.1 (pip install pymosquitto; not a ddnn dependency)
  libmosq        ddnn's own ctypes binding, `ddnn.runtime.libmosq`
  ddnn-paho      ddnn's transport on paho (`MqttTransport`): the binding plus ddnn's routing
  ddnn-libmosq   ddnn's transport on libmosquitto (`MosquittoTransport`)
The load comes from this process (ddnn's libmosquitto transport, `--window` requests in flight)
and rounds are interleaved, so that load from elsewhere on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import threading
import time

PAYLOAD = 154  # bytes per request, as the DESIGN.md measurement
LOADER = "libmosquitto"
KINDS = ("paho", "pymosquitto", "libmosq", "ddnn-paho", "ddnn-libmosq")


def respond(kind: str, port: int, requests: int) -> None:
    """Answer `requests` messages, then print the CPU seconds spent from the first to the last."""
    done = threading.Event()
    count = [0]
    cpu0 = [0.0]

    def tick() -> None:
        count[0] += 1
        if count[0] == 1:
            cpu0[0] = time.process_time()
        elif count[0] == requests:
            done.set()

    if kind == "paho":
        import paho.mqtt.client as paho

        from ddnn.runtime.mqtt import set_nodelay

        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.on_socket_open = set_nodelay
        c.on_message = lambda cl, ud, m: (cl.publish("cmp/a", m.payload, qos=1), tick())
        c.on_connect = lambda cl, *_: cl.subscribe("cmp/q", qos=1)
        c.connect("127.0.0.1", port)
        c.loop_start()
    elif kind == "pymosquitto":
        from pymosquitto.client import Mosquitto

        m = Mosquitto(protocol=5)
        m.int_option(11, 1)  # MOSQ_OPT_TCP_NODELAY

        def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
            client.publish("cmp/a", msg.payload, qos=1)
            tick()

        m.on_message = on_message
        m.connect("127.0.0.1", port)
        m.subscribe("cmp/q", qos=1)
        m.loop_start()
    elif kind == "libmosq":
        from ddnn.runtime import libmosq

        lib = libmosq.lib()
        mosq = lib.mosquitto_new(None, True, None)
        lib.mosquitto_threaded_set(mosq, True)  # its loop runs in a thread it did not start
        lib.mosquitto_int_option(mosq, libmosq.OPT_PROTOCOL_VERSION, libmosq.PROTOCOL_V5)
        lib.mosquitto_int_option(mosq, libmosq.OPT_TCP_NODELAY, 1)

        def on_msg(mq, obj, message, props):  # type: ignore[no-untyped-def]
            msg = message.contents
            payload = ctypes.string_at(msg.payload, msg.payloadlen)
            lib.mosquitto_publish_v5(mq, None, b"cmp/a", len(payload), payload, 1, False, None)
            tick()

        keep = libmosq.ON_MESSAGE(on_msg)
        lib.mosquitto_message_v5_callback_set(mosq, keep)
        lib.mosquitto_connect_bind_v5(mosq, b"127.0.0.1", port, 30, None, None)
        lib.mosquitto_subscribe_v5(mosq, None, b"cmp/q", 1, 0, None)
        threading.Thread(target=lib.mosquitto_loop_forever, args=(mosq, -1, 1), daemon=True).start()
    else:
        from ddnn.runtime.transport import create_transport

        client = "paho" if kind == "ddnn-paho" else "libmosquitto"
        t = create_transport(f"mqtt://127.0.0.1:{port}", mqtt_client=client)
        t.subscribe("cmp/q", lambda topic, payload: (t.publish("cmp/a", payload), tick()))
    time.sleep(0.5)  # the SUBACK is in
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    done.wait()
    sys.stdout.write(json.dumps({"cpu_s": time.process_time() - cpu0[0]}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the load is done: the last replies may still be on their way


def load(port: int, requests: int, window: int) -> float:
    """Send `requests` requests, `window` in flight; returns requests per second."""
    from ddnn.runtime.transport import create_transport

    got = threading.Semaphore(0)
    with create_transport(f"mqtt://127.0.0.1:{port}", mqtt_client=LOADER) as t:
        t.subscribe("cmp/a", lambda topic, payload: got.release())
        payload = bytes(PAYLOAD)
        t0 = time.perf_counter()
        for _ in range(min(window, requests)):
            t.publish("cmp/q", payload)
        for sent in range(window, requests + window):
            if not got.acquire(timeout=30):
                raise RuntimeError(f"a reply was lost after {sent - window} replies")
            if sent < requests:
                t.publish("cmp/q", payload)
        return requests / (time.perf_counter() - t0)


def one_round(kind: str, port: int, requests: int, window: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--respond", kind, "--port", str(port), "--requests",
         str(requests)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {kind} responder did not start")
        try:
            rate = load(port, requests, window)
        except RuntimeError as exc:
            raise RuntimeError(f"{kind}: {exc}") from None
        cpu = json.loads(proc.stdout.readline())["cpu_s"]
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"cpu_us_per_request": 1e6 * cpu / (requests - 1), "requests_per_s": rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--respond", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.respond:
        respond(args.respond, args.port, args.requests)
        return
    from ddnn.runtime.broker import MosquittoBroker

    kinds = args.kinds.split(",")
    found: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with MosquittoBroker() as broker:
        for _ in range(args.rounds):
            for kind in kinds:
                found[kind].append(one_round(kind, broker.port, args.requests, args.window))
    lines = [
        "| responder | CPU us per request (median) | runs | requests/s (median) |",
        "|---|---|---|---|",
    ]
    for kind, runs in found.items():
        cpu = [r["cpu_us_per_request"] for r in runs]
        rate = statistics.median(r["requests_per_s"] for r in runs)
        lines.append(
            f"| {kind} | {statistics.median(cpu):.1f} | {', '.join(f'{c:.1f}' for c in cpu)} | "
            f"{rate:.0f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
