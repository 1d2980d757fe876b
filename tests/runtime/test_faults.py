"""Faults injected into a real deployment: Mosquitto, tiers as OS processes. Whatever breaks,
every request is answered exactly once (by the server, or locally marked degraded), nothing
hangs, and answers come from the server again once it is back. docs/reliability.md keeps the
numbers these tests log (lines starting `FAULT`, see `report`).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ddnn.runtime.config import (
    DeviceConfig,
    EdgeConfig,
    ServerConfig,
    to_argv,
)
from ddnn.runtime.device import DeviceClient, Record
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.processes import Process
from ddnn.runtime.transport import create_transport
from ddnn.runtime.wire import (
    reply_topic,
)
from ddnn.store.artifact import read_spec

from .faultkit import (
    READY_S,
    check_each_frame_once,
    lines,
    raw_views,
    read_records,
    replies_sent,
    report,
    serve,
    stop_all,
    stream,
    tally,
    wait_until,
)

pytestmark = pytest.mark.integration


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
