"""Faults injected into a real deployment: Mosquitto, tiers as OS processes. Whatever breaks,
every request is answered exactly once (by the server, or locally marked degraded), nothing
hangs, and answers come from the server again once it is back. docs/reliability.md keeps the
numbers these tests log (lines starting `FAULT`, see `report`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ddnn.bench.load import rss_mb
from ddnn.data.datasets import create_dataset
from ddnn.model.views import device_view
from ddnn.runtime.client import Requester
from ddnn.runtime.config import (
    ConnectionConfig,
    DeviceConfig,
    EdgeConfig,
    ServerConfig,
    StreamConfig,
    to_argv,
)
from ddnn.runtime.device import DeviceClient, Record
from ddnn.runtime.metrics import parse_samples
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.processes import Process
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.transport import create_transport
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    encode_frame,
    encode_tensor,
    reply_topic,
    request_topic,
)
from ddnn.store.artifact import load_model, read_spec, read_spec_doc, save_model

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

DEVICE_COMMANDS = {"python": "device", "c": "agent"}  # the device implementations
READY_S = 60.0  # a tier process imports torch and loads the model: slow on a loaded machine


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offloading(tiny_ddnn, tmp_path_factory) -> Path:
    """tiny_ddnn with a local threshold of 0: every sample goes to the server, so every sample
    meets the fault (and has a local answer to fall back on)."""
    model = load_model(tiny_ddnn)
    model.spec = model.spec.with_thresholds({"device": 0.0})
    return save_model(model, tmp_path_factory.mktemp("offloading") / "run")


def serve(
    name: str, run: Path, url: str, logs: Path, config: ServerConfig, client: str = "paho"
) -> Process:
    args = ["serve", str(run), "--broker", url, *to_argv(config), *_client(client)]
    return Process(name, args, logs, ready=True)


def stream(
    name: str,
    run: Path,
    url: str,
    logs: Path,
    samples: int,
    *,
    rate: float = 0.0,
    deadline_ms: float = 1000.0,
    index: int = 0,
    impl: str = "python",
    client: str = "paho",
) -> tuple[Process, Path]:
    """A device process streaming the first `samples` test samples; its records file. `impl`:
    `ddnn device` (python) or the C agent (c: `ddnn agent`, which execs the agent)."""
    records = logs / f"{name}.jsonl"
    device = DeviceConfig(device_id=name, index=index, deadline_ms=deadline_ms)
    feed = StreamConfig(samples=samples, rate=rate, records=str(records))
    command = DEVICE_COMMANDS[impl]
    args = [command, str(run), "--broker", url, *to_argv(device), *to_argv(feed)]
    if impl == "python":  # the C agent speaks libmosquitto itself
        args += _client(client)
    return Process(name, [*args, "--dataset", "synthetic"], logs), records


def _client(name: str) -> list[str]:
    """The flag that makes a tier process speak MQTT through client library `name`."""
    return to_argv(ConnectionConfig(mqtt_client=name))


def lines(path: Path) -> int:
    """Complete records written so far."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, watch: Iterable[Process] = ()
) -> None:
    """Poll (5 ms) until `condition`; fail on timeout or when a watched process exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in watch:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited ({p.proc.returncode}):\n{p.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.005)


def metrics_of(server: Process) -> dict[str, float]:
    """A `ddnn serve` process's samples, scraped from the /metrics URL it printed; keys as in
    the exposition, e.g. `ddnn_errors_total{code="overloaded"}`."""
    found = re.search(r"metrics (http://\S+/metrics)", server.log_path.read_text())
    assert found, f"{server.name} did not print its metrics URL:\n{server.tail()}"
    text = urllib.request.urlopen(found.group(1), timeout=5).read().decode()
    return parse_samples(text)


def replies_sent(server: Process) -> float:
    """ddnn_replies_total over all its labels."""
    found = metrics_of(server).items()
    return sum(v for k, v in found if k.split("{")[0] == "ddnn_replies_total")


def rss_kb(pid: int) -> int:
    return round(rss_mb(pid) * 1024)  # /proc reports kB: exact


def check_each_frame_once(records: list[dict], devices: Iterable[str], frames: int) -> None:
    """Every device has exactly one record per frame id 0..frames-1: none lost, none twice."""
    per_device = Counter((r["device"], r["frame_id"]) for r in records)
    assert max(per_device.values()) == 1, "a frame was answered twice"
    for device in devices:
        got = sorted(f for d, f in per_device if d == device)
        assert got == list(range(frames)), f"{device} answered frames {got}"


def tally(records: list[dict] | list[Record]) -> dict[str, int]:
    rows = [r if isinstance(r, dict) else r.to_dict() for r in records]
    status = Counter(r["status"] for r in rows)
    keys = Counter((r["device"], r["frame_id"]) for r in rows)
    return {
        "requests": len(rows),
        "ok": status["ok"],
        "degraded": status["degraded"],
        "lost": status["lost"],
        "errors": status["error"],
        "duplicates": sum(n - 1 for n in keys.values()),
    }


def report(test: str, started: float, **numbers: object) -> None:
    """The observed numbers, for docs/reliability.md: logged (`--log-cli-level=INFO` shows
    them) and appended as a JSON line to $DDNN_FAULTS_REPORT when it is set."""
    numbers["seconds"] = round(time.monotonic() - started, 1)
    line = json.dumps({"test": test, **numbers})
    log.info("FAULT %s", line)
    if os.environ.get("DDNN_FAULTS_REPORT"):
        with open(os.environ["DDNN_FAULTS_REPORT"], "a") as f:
            f.write(line + "\n")


def stop_all(procs: Iterable[Process]) -> None:
    for p in procs:
        p.stop()


def raw_views(n: int, run: Path, index: int = 0) -> list[np.ndarray]:
    spec = read_spec(run)
    x = create_dataset("synthetic").test.head(n).images.float().div(255)
    return [device_view(x[i : i + 1], spec, index)[0].numpy() for i in range(n)]


# -- 1. the broker restarts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("impl", "mqtt_client"), [("python", "paho"), ("python", "libmosquitto"), ("c", "paho")]
)
def test_broker_restart_during_a_stream(offloading, broker, tmp_path, impl, mqtt_client):
    """The broker goes away for longer than the devices' deadline and comes back on its port.
    Two device processes stream at 10/s, and one device runs in this process so its dropped late
    replies can be counted (requests queued during the outage are sent after the reconnect)."""
    started = time.monotonic()
    samples, rate, deadline_ms, outage_s = 50, 10.0, 1000.0, 1.5
    server = serve("server", offloading, broker.url, tmp_path, ServerConfig(workers=1), mqtt_client)
    devices: list[tuple[Process, Path]] = []
    transport = device = None
    local: list[Record] = []
    try:
        server.wait_ready(READY_S)
        devices = [
            stream(
                f"dev{i}",
                offloading,
                broker.url,
                tmp_path,
                samples,
                rate=rate,
                deadline_ms=deadline_ms,
                impl=impl,
                client=mqtt_client,
            )
            for i in range(2)
        ]
        transport = create_transport(broker.url, mqtt_client=mqtt_client)
        device = DeviceClient(
            transport, offloading, DeviceConfig(device_id="here", deadline_ms=deadline_ms)
        ).start()
        xs = raw_views(samples, offloading)

        def stream_here() -> None:
            assert device is not None
            t0 = time.perf_counter()
            for i, x in enumerate(xs):
                time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                local.append(device.infer(x, i))

        wait_until(
            lambda: all(lines(r) >= 3 for _, r in devices), READY_S, "device records",
            [server, *(p for p, _ in devices)],
        )  # fmt: skip
        with ThreadPoolExecutor(1) as pool:
            here = pool.submit(stream_here)
            time.sleep(0.3)  # all three devices are streaming
            broker.stop()
            time.sleep(outage_s)
            broker.start()  # same port
            for p, _ in devices:
                p.wait(timeout=60)
            here.result(timeout=60)
        assert server.proc.poll() is None
        dropped = device.requester.dropped_replies
    finally:
        if device is not None:
            device.close()
        if transport is not None:
            transport.close()
        stop_all([server, *(p for p, _ in devices)])
    for p, _ in devices:  # every client saw the outage and reconnected
        assert "lost the connection" in p.log_path.read_text()
    assert "lost the connection" in server.log_path.read_text()
    records = [r for _, path in devices for r in read_records(path)]
    records += [r.to_dict() for r in local]
    check_each_frame_once(records, ["dev0", "dev1", "here"], samples)
    counts = tally(records)
    assert counts["ok"] + counts["degraded"] == counts["requests"]  # none lost, no error
    assert counts["degraded"] > 0, "the outage should have cost some requests their server answer"
    assert all(r["total_ms"] < deadline_ms + 1500 for r in records), "a request hung"
    assert all(r["predicted"] >= 0 for r in records)
    for name in ("dev0", "dev1", "here"):  # answered by the server again after the restart
        last = sorted((r for r in records if r["device"] == name), key=lambda r: r["frame_id"])
        assert all(r["status"] == "ok" for r in last[-5:]), f"{name} did not recover"
    report(
        "broker_restart", started, mqtt_client=mqtt_client, **counts,
        late_replies_dropped=dropped, outage_s=outage_s, device_impl=impl,
    )  # fmt: skip


# -- 2. one of two server processes is killed --------------------------------------------------


@pytest.mark.parametrize(
    ("impl", "mqtt_client"), [("python", "paho"), ("python", "libmosquitto"), ("c", "paho")]
)
def test_one_server_of_two_killed(offloading, broker, tmp_path, impl, mqtt_client):
    """Two `ddnn serve` processes share the subscription group; one is killed while it holds
    requests. Those are answered locally (degraded) at the deadline, the rest by the other."""
    started = time.monotonic()
    samples, rate, deadline_ms = 40, 10.0, 1000.0
    servers = [
        serve(f"server-{n}", offloading, broker.url, tmp_path, ServerConfig(workers=1), mqtt_client)
        for n in "ab"
    ]
    devices: list[tuple[Process, Path]] = []
    try:
        for s in servers:
            s.wait_ready(READY_S)
        devices = [
            stream(
                f"dev{i}",
                offloading,
                broker.url,
                tmp_path,
                samples,
                rate=rate,
                deadline_ms=deadline_ms,
                impl=impl,
                client=mqtt_client,
            )
            for i in range(2)
        ]
        wait_until(
            lambda: all(lines(r) >= 6 for _, r in devices), READY_S, "device records",
            [*servers, *(p for p, _ in devices)],
        )  # fmt: skip
        before = [replies_sent(s) for s in servers]
        servers[0].pause()  # stuck for a moment, so it dies holding requests ...
        time.sleep(0.3)
        servers[0].kill()  # ... SIGKILL: no goodbye, the requests it held are gone
        survivor_at_kill = replies_sent(servers[1])
        for p, _ in devices:
            p.wait(timeout=60)
        survivor_end = replies_sent(servers[1])
        assert servers[1].proc.poll() is None
    finally:
        stop_all([*servers, *(p for p, _ in devices)])
    assert servers[0].proc.returncode == -9
    assert all(b > 0 for b in before), f"the broker did not split the load: {before}"
    records = [r for _, path in devices for r in read_records(path)]
    check_each_frame_once(records, ["dev0", "dev1"], samples)
    counts = tally(records)
    assert counts["ok"] + counts["degraded"] == counts["requests"]
    assert counts["degraded"] > 0, "the killed server held requests: they must degrade"
    assert all(r["total_ms"] < deadline_ms + 1500 for r in records)
    tail = 8
    for name in ("dev0", "dev1"):
        last = sorted((r for r in records if r["device"] == name), key=lambda r: r["frame_id"])
        statuses = [(r["frame_id"], r["status"], round(r["total_ms"])) for r in last]
        assert all(r["status"] == "ok" for r in last[-tail:]), f"{name}: {statuses}"
    assert survivor_end - survivor_at_kill >= 2 * tail  # those answers came from the survivor
    report(
        "server_worker_killed", started, mqtt_client=mqtt_client, **counts,
        replies_before_kill=before,
        survivor_replies_after_kill=survivor_end - survivor_at_kill, device_impl=impl,
    )  # fmt: skip


# -- 4. a device of a multi-view deployment is killed ------------------------------------------


def test_device_killed_in_a_multiview_deployment(tiny_multiview, broker, tmp_path):
    """Every device reports each frame to the edge back to back; the edge answers a frame when
    all devices reported, so they move in step. The last device is a `ddnn device` process and
    is killed mid-run; the others (clients in this process, so their records are at hand) go
    on: each later frame is answered after the edge's frame deadline, degraded, naming it."""
    started = time.monotonic()
    spec = read_spec(tiny_multiview)
    samples, frame_deadline_ms, kill_at = 50, 150.0, 32
    names = [f"dev{i}" for i in range(spec.devices)]
    victim, survivors = names[-1], names[:-1]
    tiers = [
        serve("server", tiny_multiview, broker.url, tmp_path, ServerConfig(workers=1)),
        Process(
            "edge",
            ["edge", str(tiny_multiview), "--broker", broker.url,
             *to_argv(EdgeConfig(frame_deadline_ms=frame_deadline_ms))],
            tmp_path, ready=True,
        ),
    ]  # fmt: skip
    proc, victim_records = stream(victim, tiny_multiview, broker.url, tmp_path, samples,
                                  index=len(survivors))  # fmt: skip
    transports = [MqttTransport.from_url(broker.url) for _ in survivors]
    clients = [
        DeviceClient(
            t, tiny_multiview, DeviceConfig(device_id=name, index=i, deadline_ms=2000)
        ).start()
        for i, (t, name) in enumerate(zip(transports, survivors, strict=True))
    ]
    views = [raw_views(samples, tiny_multiview, i) for i in range(len(survivors))]

    def run(i: int) -> list[Record]:
        return [clients[i].infer(views[i][f], f) for f in range(samples)]

    try:
        for t in tiers:
            t.wait_ready(READY_S)
        wait_until(lambda: lines(victim_records) >= 1, READY_S, f"{victim} running", [proc])
        with ThreadPoolExecutor(len(survivors)) as pool:
            jobs = [pool.submit(run, i) for i in range(len(survivors))]
            wait_until(
                lambda: lines(victim_records) >= kill_at, 60, f"{kill_at} frames of {victim}",
                [*tiers, proc],
            )  # fmt: skip
            proc.kill()
            records = [r.to_dict() for job in jobs for r in job.result(timeout=60)]
        assert all(t.proc.poll() is None for t in tiers)
    finally:
        for c in clients:
            c.close()
        for t in transports:
            t.close()
        stop_all([*tiers, proc])
    check_each_frame_once(records, survivors, samples)
    last_seen = max(r["frame_id"] for r in read_records(victim_records))
    # The victim may have reported frame last_seen + 1 before it died; after that, nothing.
    after = [r for r in records if r["frame_id"] > last_seen + 1]
    assert len(after) >= 3 * len(survivors), f"killed too late: victim at frame {last_seen}"
    assert all(r["status"] == "degraded" and victim in r["missing"] for r in after)
    assert all(r["predicted"] >= 0 for r in after)
    by_frame: dict[int, list[dict]] = {}
    for r in after:
        by_frame.setdefault(r["frame_id"], []).append(r)
    for frame in by_frame.values():  # one fused answer per frame, after the frame deadline
        assert len({r["predicted"] for r in frame}) == 1
        assert max(r["total_ms"] for r in frame) >= frame_deadline_ms * 0.95
        assert max(r["total_ms"] for r in frame) < frame_deadline_ms + 2000
    counts = tally(records)
    assert counts["ok"] + counts["degraded"] == counts["requests"]
    report(
        "device_killed_multiview", started, **counts, victim_last_frame=last_seen,
        frames_after_kill=len(by_frame),
        median_ms_after_kill=round(float(np.median([r["total_ms"] for r in after])), 1),
    )  # fmt: skip


# -- 5. the server freezes ---------------------------------------------------------------------


def test_frozen_server_answers_are_dropped_when_late(offloading, broker, tmp_path, mqtt_client):
    """SIGSTOP the server for longer than the device's deadline: the device answers locally
    (degraded); after SIGCONT the server answers the backlog and the device drops those late
    replies (no second answer); then answers are the server's again."""
    started = time.monotonic()
    xs = raw_views(11, offloading)
    server = serve("server", offloading, broker.url, tmp_path, ServerConfig(workers=1), mqtt_client)
    transport = create_transport(broker.url, mqtt_client=mqtt_client)
    spy = create_transport(broker.url, mqtt_client=mqtt_client)  # every reply to the device
    replies: list[bytes] = []
    spy.subscribe(reply_topic("dev0"), lambda t, p: replies.append(p))
    device = DeviceClient(
        transport, offloading, DeviceConfig(device_id="dev0", deadline_ms=5000)
    ).start()
    try:
        server.wait_ready(READY_S)
        warm = [device.infer(x, i) for i, x in enumerate(xs[:3])]
        device.config = replace(device.config, deadline_ms=400)
        server.pause()
        try:
            t0 = time.monotonic()
            frozen = [device.infer(x, i) for i, x in enumerate(xs[3:7], 3)]
            frozen_s = time.monotonic() - t0
        finally:
            server.resume()
        wait_until(
            lambda: device.requester.dropped_replies >= len(frozen), 20, "late replies", [server]
        )
        device.config = replace(device.config, deadline_ms=5000)
        after = [device.infer(x, i) for i, x in enumerate(xs[7:], 7)]
        wait_until(lambda: len(replies) >= len(xs), 5, "every reply at the spy")
        time.sleep(0.2)  # anything more would be a second answer
        dropped = device.requester.dropped_replies
    finally:
        device.close()
        transport.close()
        spy.close()
        server.stop()
    assert frozen_s >= 0.4 * len(frozen) * 0.95  # each frozen request waited its deadline out
    assert all(r.status == "ok" and r.exit_index == 1 for r in warm + after)
    assert all(r.status == "degraded" and r.exit_index == 0 for r in frozen)
    assert all(0.35 * 1000 < r.total_ms < 1500 for r in frozen), [r.total_ms for r in frozen]
    records = warm + frozen + after
    check_each_frame_once([r.to_dict() for r in records], ["dev0"], len(xs))
    assert len(replies) == len(xs)  # the server answered each request once ...
    assert dropped == len(frozen)  # ... and the late ones were dropped, not used
    report(
        "slow_server", started, mqtt_client=mqtt_client, **tally(records),
        server_replies=len(replies),
        late_replies_dropped=dropped, frozen_s=round(frozen_s, 2),
    )  # fmt: skip


def test_a_frozen_server_costs_the_c_agent_its_deadline_only(offloading, broker, tmp_path):
    """The slow-server test for the C agent (a separate process, so the server is frozen in
    the middle of its stream rather than between calls): samples sent while `ddnn serve` is
    stopped are answered locally at the deadline, each late reply is dropped, not used, and
    answers come from the server again once it resumes."""
    started = time.monotonic()
    samples, rate, deadline_ms, frozen_s = 20, 5.0, 400.0, 1.2
    server = serve("server", offloading, broker.url, tmp_path, ServerConfig(workers=1))
    proc = None
    try:
        server.wait_ready(READY_S)
        proc, path = stream(
            "dev0", offloading, broker.url, tmp_path, samples, rate=rate,
            deadline_ms=deadline_ms, impl="c",
        )  # fmt: skip
        wait_until(lambda: lines(path) >= 4, READY_S, "agent records", [server, proc])
        server.pause()
        try:
            time.sleep(frozen_s)
        finally:
            server.resume()
        proc.wait(timeout=60)
    finally:
        stop_all([server, *([proc] if proc else [])])
    records = read_records(path)
    check_each_frame_once(records, ["dev0"], samples)
    frozen = [r for r in records if r["status"] != "ok"]
    assert frozen, "the freeze should have cost some samples their server answer"
    assert all(r["status"] == "degraded" and r["exit_index"] == 0 for r in frozen)
    assert all(r["message"] == "deadline passed" for r in frozen)
    assert all(0.35 * 1000 < r["total_ms"] < 1500 for r in frozen), [r["total_ms"] for r in frozen]
    assert all(r["status"] == "ok" for r in records[-5:])
    found = re.search(r"(\d+) late or duplicate", proc.log_path.read_text())
    assert found and int(found.group(1)) == len(frozen)  # each late reply dropped, not used
    report("slow_server_c_agent", started, **tally(records), late_replies_dropped=len(frozen))


# -- 6. more requests than the server can take -------------------------------------------------


def test_back_pressure_sheds_and_memory_stays_flat(tiny_ddnn, broker, tmp_path):
    """One worker and a queue of 4 against 8 clients blasting 40 requests each at once, five
    times: each request gets a reply or an OVERLOADED error, and the server's RSS after the
    last burst is within 8 MiB of its RSS after the first."""
    started = time.monotonic()
    clients, per_client, bursts, rss_bound_kb = 8, 40, 5, 8 * 1024
    server = serve(
        "server", tiny_ddnn, broker.url, tmp_path,
        ServerConfig(workers=1, queue_limit=4, max_batch=1),
    )  # fmt: skip
    doc = read_spec_doc(tiny_ddnn)
    model, version = str(doc["name"]), int(doc["version"])
    x = encode_tensor(raw_views(1, tiny_ddnn)[0][None], Encoding.UNIT8, name="x")  # [1, C, h, w]
    transports: list[MqttTransport] = []
    requesters: list[Requester] = []
    outcomes: Counter[str] = Counter()
    rss: list[int] = []

    def blast(requester: Requester, burst: int) -> Counter[str]:
        waiting = []
        for k in range(per_client):
            rid = requester.next_id()
            topic = request_topic(model, 0, requester.identity)
            request = Request(rid, model, version, requester.identity, burst * 1000 + k, 0, (x,))
            waiting.append((rid, requester.send(topic, request)[0]))
        end = time.perf_counter() + 30.0  # one deadline for the whole burst
        seen: Counter[str] = Counter()
        for rid, pending in waiting:
            answer = requester.wait(rid, pending, end - time.perf_counter())
            if isinstance(answer, Reply) and answer.status == Status.OK:
                seen["ok"] += 1
            elif isinstance(answer, ErrorFrame) and answer.code == Status.OVERLOADED:
                seen["overloaded"] += 1
            else:
                seen["unanswered" if answer is None else f"other: {answer}"] += 1
        return seen

    try:
        server.wait_ready(READY_S)
        for i in range(clients):
            transports.append(MqttTransport.from_url(broker.url))
            requesters.append(Requester(transports[-1], f"blast{i}").start())
        with ThreadPoolExecutor(clients) as pool:
            for burst in range(bursts):
                for seen in pool.map(lambda r, b=burst: blast(r, b), requesters):
                    outcomes += seen
                rss.append(rss_kb(server.proc.pid))
        dropped = sum(r.dropped_replies for r in requesters)
        shed = metrics_of(server)
        assert server.proc.poll() is None
    finally:
        for r in requesters:
            r.close()
        for t in transports:
            t.close()
        server.stop()
    total = clients * per_client * bursts
    assert outcomes["ok"] + outcomes["overloaded"] == total, dict(outcomes)
    assert outcomes["ok"] > 0 and outcomes["overloaded"] > 0, dict(outcomes)
    assert dropped == 0  # one answer per request
    assert shed.get('ddnn_errors_total{code="overloaded"}') == outcomes["overloaded"]
    assert rss[-1] - rss[0] <= rss_bound_kb, f"server RSS grew: {rss} kB"
    report(
        "back_pressure", started, requests=total, ok=outcomes["ok"],
        overloaded=outcomes["overloaded"], unanswered=total - outcomes["ok"] -
        outcomes["overloaded"], rss_kb_after_each_burst=rss,
    )  # fmt: skip


# -- a server worker thread that crashes -------------------------------------------------------


def test_a_crashed_worker_is_restarted_and_counted(tiny_ddnn, hub_name):
    """A bug that escapes a worker's own error handling (here: in the error path itself) must
    not cost the server its only worker: the loop restarts and `worker_restarts_total` counts it.
    In-memory transport: no broker needed."""
    transports = [create_transport(f"memory://{hub_name}") for _ in range(2)]
    # every request through the worker pool (an idle server would answer a lone one inline)
    server = InferenceServer(
        transports[0], ModelDB([tiny_ddnn]), ServerConfig(workers=1, inline=False)
    ).start()
    device = DeviceClient(
        transports[1],
        tiny_ddnn,
        DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=300),
    ).start()
    xs = raw_views(2, tiny_ddnn)
    crashed = threading.Event()

    def broken(*args: object) -> None:
        crashed.set()
        raise RuntimeError("a bug")

    try:
        server._process = broken  # type: ignore[method-assign]  # the batch fails ...
        server._error = broken  # type: ignore[method-assign]  # ... and so does answering it
        first = device.infer(xs[0], 0)
        wait_until(
            lambda: server.metrics.counter("worker_restarts_total") >= 1, 5, "a worker restart"
        )
        del server._process, server._error
        device.config = replace(device.config, deadline_ms=5000)
        second = device.infer(xs[1], 1)
        healthy = server.healthy()
    finally:
        device.close()
        server.close()
        for t in transports:
            t.close()
    assert crashed.is_set()
    assert first.status == "lost" and first.total_ms < 1000  # bounded, not a hang
    assert second.status == "ok" and second.predicted >= 0  # the pool still has its worker
    assert healthy
    assert server.metrics.counter("worker_restarts_total") == 1


# -- 7. abuse: huge payloads, floods of requests and connections --------------------------------


def test_abuse_costs_a_server_nothing_lasting(tiny_ddnn, tmp_path):
    """On a broker that forwards 16 MiB packets: 1 MB requests (refused by size before any
    decoding), 10 MB ones (never delivered: the server announced its 1 MiB Maximum Packet Size),
    a flood of undecodable and wrongly shaped requests over 100 connections. Afterwards the
    server's RSS is within 10 % of what it was before, and its log grew by rate-limited
    warnings only (an abuse run once left +70 MB RSS and 65,487 warning lines)."""
    from ddnn.runtime.broker import MosquittoBroker, find_mosquitto

    try:
        find_mosquitto()
    except Exception as exc:
        pytest.skip(str(exc))
    started = time.monotonic()
    doc = read_spec_doc(tiny_ddnn)
    model, version = str(doc["name"]), int(doc["version"])
    x = encode_tensor(raw_views(1, tiny_ddnn)[0][None], Encoding.UNIT8, name="x")
    wrong = encode_tensor(np.zeros((1, 1, 5, 5), np.float32), name="x")
    with MosquittoBroker(max_packet_size=16 << 20) as broker:
        server = serve("server", tiny_ddnn, broker.url, tmp_path, ServerConfig(workers=1))
        big = MqttTransport.from_url(broker.url, max_packet_size=16 << 20)
        requester = Requester(big, "abuser").start()
        floods: list[MqttTransport] = []
        try:
            server.wait_ready(READY_S)

            def ask(rid: int) -> object:
                request = Request(rid, model, version, "abuser", rid, 0, (x,))
                pending, _ = requester.send(request_topic(model, 0, "abuser"), request)
                return requester.wait(rid, pending, 10.0)

            assert all(isinstance(ask(rid), Reply) for rid in range(1, 21))  # warm up
            time.sleep(0.5)
            rss_before, log_before = rss_kb(server.proc.pid), server.log_path.stat().st_size
            topic = request_topic(model, 0, "abuser")
            header = b"DN\x02\x01" + (10**6).to_bytes(8, "little")  # a request, id 1000000
            for size in (10**6,) * 5 + (10**7,) * 2:
                big.publish(topic, header + bytes(size))
            sent = 5
            for c in range(100):  # a flood over 100 connections, open until it was read
                floods.append(MqttTransport.from_url(broker.url))
                own = request_topic(model, 0, f"flood{c}")
                for k in range(5):
                    floods[-1].publish(own, header + os.urandom(k))
                    junk = Request(1 + k, model, version, f"flood{c}", k, 0, (wrong,))
                    floods[-1].publish(own, encode_frame(junk))
                sent += 10
            received: list[float] = []
            try:
                wait_until(
                    lambda: received.append(metrics_of(server)["ddnn_requests_received_total"])
                    or received[-1] >= 20 + sent,
                    60, "the flood to be read", [server],
                )  # fmt: skip
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {received[-1]} of {20 + sent} read") from None
            assert isinstance(ask(100), Reply)  # still serving
            time.sleep(0.5)
            rss_after, log_after = rss_kb(server.proc.pid), server.log_path.stat().st_size
            samples = metrics_of(server)
        finally:
            for flood in floods:
                flood.close()
            requester.close()
            big.close()
            server.stop()
    assert samples["ddnn_requests_received_total"] == 20 + sent + 1  # the 10 MB ones never came
    assert samples['ddnn_errors_total{code="bad_input"}'] == 5 + 500
    assert samples['ddnn_errors_total{code="malformed"}'] == 500
    assert samples['ddnn_log_suppressed_total{key="malformed"}'] >= 490
    assert rss_after <= rss_before * 1.10, f"RSS {rss_before} -> {rss_after} kB"
    assert log_after - log_before < 16_000, f"the log grew by {log_after - log_before} bytes"
    report(
        "abuse", started, requests=sent, rss_kb_before=rss_before, rss_kb_after=rss_after,
        log_bytes=log_after - log_before,
    )  # fmt: skip
