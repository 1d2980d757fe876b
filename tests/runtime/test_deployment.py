"""The runtime as it is deployed: real Mosquitto, tiers as separate OS processes."""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from ddnn.data.datasets import create_dataset
from ddnn.model.views import device_view
from ddnn.runtime.config import DeploymentConfig, DeviceConfig, EdgeConfig, ServerConfig, to_argv
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.edge import EdgeAggregator
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.processes import Process
from ddnn.runtime.runner import run_deployment
from ddnn.runtime.wire import (
    VERSION,
    ErrorFrame,
    Reply,
    decode_frame,
    reply_topic,
    request_topic,
)
from ddnn.store.artifact import read_spec

pytestmark = pytest.mark.integration


def views(n: int, spec, index: int = 0):
    test = create_dataset("synthetic").test.head(n)
    x = test.images.float().div(255)
    return [device_view(x[i : i + 1], spec, index)[0].numpy() for i in range(n)], test.labels


def report_together(url: str, run, frame: int, devices: list[int]) -> list:
    """The given devices of a multi-device model, each its own MQTT client, report `frame`
    at the same time; returns their records."""
    spec = read_spec(run)
    transports = [MqttTransport.from_url(url) for _ in devices]
    clients = [
        DeviceClient(t, run, DeviceConfig(device_id=f"dev{d}", index=d)).start()
        for t, d in zip(transports, devices, strict=True)
    ]
    try:
        with ThreadPoolExecutor(len(devices)) as pool:
            jobs = zip(clients, devices, strict=True)
            return list(pool.map(lambda c: c[0].infer(views(1, spec, c[1])[0][0], frame), jobs))
    finally:
        for c, t in zip(clients, transports, strict=True):
            c.close()
            t.close()


def test_full_run_on_a_tiny_model(tiny_ddnn, tmp_path):
    report = run_deployment(
        tiny_ddnn, tmp_path / "out", DeploymentConfig(devices=2, samples=30, workers=1)
    )
    for mode in ("device+server", "server-only"):
        c = report["configurations"][mode]
        assert c["samples"] == 30 and c["lost"] == 0 and c["degraded"] == 0
        assert c["accuracy"]["overall"] > 0.8
        assert set(c["time_ms"]) == {"device", "comm", "server", "total"}
    assert report["configurations"]["server-only"]["bytes_per_sample"] > 784
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["configurations"].keys() == report["configurations"].keys()
    assert (tmp_path / "out" / "time_ms.png").exists()


def test_server_killed_and_restarted(tiny_ddnn, broker, tmp_path):
    spec = read_spec(tiny_ddnn)
    xs, _ = views(6, spec)
    server = Process(
        "server",
        ["serve", str(tiny_ddnn), "--broker", broker.url, *to_argv(ServerConfig(workers=1))],
        tmp_path,
        True,
    )
    transport = MqttTransport.from_url(broker.url)
    device = DeviceClient(
        transport, tiny_ddnn, DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=3000)
    ).start()
    try:
        server.wait_ready()
        assert device.infer(xs[0], 0).status == "ok"
        server.kill()  # a crash: no goodbye
        device.config = replace(device.config, deadline_ms=300)
        during = [device.infer(x, i) for i, x in enumerate(xs[1:3], 1)]
        assert all(r.status == "lost" and r.total_ms < 2000 for r in during)
        server = Process(
            "server2", ["serve", str(tiny_ddnn), "--broker", broker.url], tmp_path, True
        )
        server.wait_ready()
        device.config = replace(device.config, deadline_ms=3000)
        after = [device.infer(x, i) for i, x in enumerate(xs[3:], 3)]
        assert all(r.status == "ok" for r in after)
    finally:
        device.close()
        transport.close()
        server.stop()


def test_device_plus_server_degrades_instead_of_losing(tiny_ddnn, broker):
    spec = read_spec(tiny_ddnn)
    xs, _ = views(10, spec)
    transport = MqttTransport.from_url(broker.url)
    config = DeviceConfig(device_id="dev0", deadline_ms=200, thresholds=(0.0,))  # all go up
    device = DeviceClient(transport, tiny_ddnn, config).start()
    try:
        records = [device.infer(x, i) for i, x in enumerate(xs)]
    finally:
        device.close()
        transport.close()
    assert all(r.status == "degraded" and r.predicted >= 0 for r in records)


def test_missing_multiview_device_is_answered_after_the_deadline(tiny_multiview, broker, tmp_path):
    server = Process(
        "server", ["serve", str(tiny_multiview), "--broker", broker.url], tmp_path, True
    )
    edge_transport = MqttTransport.from_url(broker.url)
    edge = EdgeAggregator(edge_transport, tiny_multiview, EdgeConfig(frame_deadline_ms=150)).start()
    try:
        server.wait_ready()
        records = report_together(broker.url, tiny_multiview, 7, [0, 1, 2])
    finally:
        edge.close()
        edge_transport.close()
        server.stop()
    assert all(r.status == "degraded" and r.missing == ["dev3"] for r in records)
    assert max(r.total_ms for r in records) >= 150  # the first to report waited the deadline
    assert len({r.predicted for r in records}) == 1


def test_garbage_on_every_topic_and_the_tiers_keep_serving(tiny_multiview, broker, tmp_path):
    tiers = [
        Process("server", ["serve", str(tiny_multiview), "--broker", broker.url], tmp_path, True),
        Process("edge", ["edge", str(tiny_multiview), "--broker", broker.url], tmp_path, True),
    ]
    spy = MqttTransport.from_url(broker.url)
    answers: list[bytes] = []
    spy.subscribe(reply_topic("evil"), lambda t, p: answers.append(p))
    rng = random.Random(0)
    try:
        for t in tiers:
            t.wait_ready()
        topics = [
            request_topic("ddnn-multiview", s, "evil", prefix=p)
            for s in (0, 1, 2) for p in ("dd", "dd/e")
        ] + [reply_topic("dev0"), reply_topic("edge"), "dd/q/nosuch/1/evil"]  # fmt: skip
        for topic in topics:
            for n in (0, 1, 5, 60, 400):
                spy.publish(topic, os.urandom(n) if n else b"")
            junk = bytes(rng.randrange(256) for _ in range(40))
            spy.publish(topic, b"DN" + bytes([VERSION, 1]) + junk)  # a request header, then junk
        records = report_together(broker.url, tiny_multiview, 3, [0, 1, 2, 3])
        assert all(t.proc.poll() is None for t in tiers), "a tier died on garbage"
    finally:
        spy.close()
        for t in tiers:
            t.stop()
    assert all(r.status == "ok" for r in records)
    frames = [decode_frame(a) for a in answers]
    assert frames and all(isinstance(f, ErrorFrame | Reply) for f in frames)
    assert np.mean([isinstance(f, ErrorFrame) for f in frames]) == 1.0


def test_device_command_on_image_files(tiny_ddnn, tmp_path, capsys):
    from matplotlib.image import imsave

    from ddnn.cli import main

    x = create_dataset("synthetic").test.images[:2, 0].numpy()
    paths = []
    for i, img in enumerate(x):
        paths.append(str(tmp_path / f"img{i}.png"))
        imsave(paths[-1], img, cmap="gray", vmin=0, vmax=255)
    argv = ["device", str(tiny_ddnn), "--images", *paths, *to_argv(DeviceConfig(deadline_ms=300))]
    assert main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 2 and all(r["predicted"] >= 0 for r in lines)
