"""Device, edge and server wired through the in-memory transport: the same code paths as over
MQTT, in one process."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

from ddnn.data.datasets import create_dataset
from ddnn.model.views import device_view
from ddnn.nn.entropy import normalized_entropy
from ddnn.runtime.client import Requester
from ddnn.runtime.config import DeviceConfig, EdgeConfig, ServerConfig
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.edge import EdgeAggregator
from ddnn.runtime.memory import MemoryTransport
from ddnn.runtime.protocol import EDGE_PREFIX
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    decode_frame,
    encode_frame,
    encode_tensor,
    reply_topic,
    request_topic,
)
from ddnn.store.artifact import load_model, read_spec, read_spec_doc, save_model


@pytest.fixture
def hub(request):
    name = f"hub-{request.node.name}"
    transports: list[MemoryTransport] = []

    def make() -> MemoryTransport:
        t = MemoryTransport(name)
        transports.append(t)
        return t

    yield make
    for t in transports:
        t.close()


def samples(n: int = 24):
    test = create_dataset("synthetic").test.head(n)
    return test.images.float().div(255), test.labels


@contextmanager
def fused(run, hub, frame_deadline_ms: float, upstream_deadline_ms: float = 2000.0):
    """Server, edge and one client per device of a multi-device model, in one process; yields
    `infer(frame, devices)`: the given devices report sample `frame` together."""
    spec = read_spec(run)
    server = InferenceServer(hub(), ModelDB([run]), ServerConfig(workers=1)).start()
    edge = EdgeAggregator(
        hub(),
        run,
        EdgeConfig(frame_deadline_ms=frame_deadline_ms, upstream_deadline_ms=upstream_deadline_ms),
    ).start()
    clients = [
        DeviceClient(
            hub(), run, DeviceConfig(device_id=f"dev{i}", index=i, deadline_ms=5000)
        ).start()
        for i in range(spec.devices)
    ]
    x, _ = samples(8)
    pool = ThreadPoolExecutor(spec.devices)

    def infer(frame: int, devices) -> list:
        view = lambda d: device_view(x[frame : frame + 1], spec, d)[0].numpy()  # noqa: E731
        return list(pool.map(lambda d: clients[d].infer(view(d), frame), devices))

    try:
        yield infer
    finally:
        pool.shutdown()
        for c in clients:
            c.close()
        edge.close()
        server.close()


def half_offloading(run, folder):
    """A copy of the model whose local threshold sends about half of the test samples up."""
    model = load_model(run)
    x, _ = samples()
    ents = normalized_entropy(model.run_device(0, x).logits).detach().numpy()
    model.spec = model.spec.with_thresholds({"device": float(np.median(ents))})
    return save_model(model, folder)


def test_single_device_answers_locally_or_through_the_server(tiny_ddnn, hub, tmp_path):
    run = half_offloading(tiny_ddnn, tmp_path / "m")
    server = InferenceServer(hub(), ModelDB([run]), ServerConfig(workers=2)).start()
    device = DeviceClient(hub(), run, DeviceConfig(device_id="dev0", deadline_ms=5000)).start()
    try:
        x, y = samples()
        records = [device.infer(x[i].numpy(), i, int(y[i])) for i in range(len(x))]
    finally:
        device.close()
        server.close()
    assert all(r.status == "ok" for r in records)
    assert all(r.predicted >= 0 for r in records)
    offloaded = [r for r in records if r.offloaded]
    local = [r for r in records if not r.offloaded]
    assert offloaded and local, "the tiny model should both exit locally and offload"
    assert all(r.exit_index == 1 and r.frame_bytes == 38 + 4 * 4 + 98 for r in offloaded)
    assert all(r.exit_index == 0 and r.frame_bytes == 0 for r in local)
    accuracy = np.mean([r.predicted == r.label for r in records])
    assert accuracy > 0.8


def test_server_only_sends_raw_pixels(tiny_ddnn, hub):
    server = InferenceServer(hub(), ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
    device = DeviceClient(
        hub(), tiny_ddnn, DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=5000)
    ).start()
    try:
        x, _ = samples(4)
        records = [device.infer(x[i].numpy(), i) for i in range(4)]
    finally:
        device.close()
        server.close()
    assert all(r.offloaded and r.status == "ok" and r.exit_index == 1 for r in records)
    assert all(r.frame_bytes - 784 < 64 for r in records)


def test_dead_server_means_degraded_local_answers(tiny_ddnn, hub, tmp_path):
    device = DeviceClient(
        hub(),
        half_offloading(tiny_ddnn, tmp_path / "m"),
        DeviceConfig(device_id="dev0", deadline_ms=100),
    ).start()
    try:
        x, _ = samples(8)
        records = [device.infer(x[i].numpy(), i) for i in range(8)]
    finally:
        device.close()
    assert all(r.status in ("ok", "degraded") for r in records)
    assert any(r.status == "degraded" for r in records)
    assert all(r.predicted >= 0 and r.total_ms < 1000 for r in records)


def test_a_device_without_a_server_says_so_once_and_counts_the_misses(tiny_ddnn, hub, caplog):
    config = DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=50)
    device = DeviceClient(hub(), tiny_ddnn, config).start()
    try:
        x, _ = samples(3)
        with caplog.at_level(logging.WARNING, logger="ddnn.runtime.device"):
            records = [device.infer(x[i].numpy(), i) for i in range(3)]
    finally:
        device.close()
    assert [r.status for r in records] == ["lost"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "within 50 ms: is `ddnn serve` running?" in warnings[0]
    assert device.deadline_misses == 3


def test_multiview_through_the_edge_and_a_missing_device(tiny_multiview, hub):
    with fused(tiny_multiview, hub, frame_deadline_ms=150) as infer:
        all_four = [infer(i, range(4)) for i in range(3)]
        three = [infer(i, range(3)) for i in range(3, 6)]
    for frame in all_four:
        assert len({r.predicted for r in frame}) == 1 and all(r.status == "ok" for r in frame)
    for frame in three:
        assert all(r.status == "degraded" and r.missing == ["dev3"] for r in frame)


def test_garbage_gets_an_error_and_the_server_keeps_serving(tiny_ddnn, hub):
    server = InferenceServer(hub(), ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
    spy = hub()
    got: list[bytes] = []
    spy.subscribe(reply_topic("evil"), lambda t, p: got.append(p))
    spy.publish(request_topic("ddnn", 1, "evil"), b"\x00garbage")
    device = DeviceClient(
        hub(), tiny_ddnn, DeviceConfig(device_id="dev0", deadline_ms=5000, mode="server-only")
    ).start()
    try:
        x, _ = samples(2)
        record = device.infer(x[0].numpy(), 0)
    finally:
        device.close()
        server.close()
    assert record.status == "ok"
    assert got and isinstance(decode_frame(got[0]), ErrorFrame)
    assert EDGE_PREFIX != "dd"


@pytest.mark.parametrize("inline", [True, False])
def test_a_lone_request_is_answered_inline_and_a_burst_is_batched(tiny_ddnn, hub, inline):
    server = InferenceServer(
        hub(), ModelDB([tiny_ddnn]), ServerConfig(workers=1, inline=inline)
    ).start()
    device = DeviceClient(
        hub(), tiny_ddnn, DeviceConfig(device_id="dev0", deadline_ms=5000, mode="server-only")
    ).start()
    x, _ = samples(4)
    burst = Requester(hub(), "burst").start()
    try:
        lone = []
        for i in range(3):  # one at a time, spaced: each finds the server idle
            time.sleep(0.02)  # in memory a reply-to-next-request gap can be under _INLINE_GAP_S
            lone.append(device.infer(x[i].numpy(), i))
        first = server.metrics.counter("inline_requests_total")
        pending = []
        for _ in range(40):  # all at once: they queue up behind each other
            topic, request = raw_request(tiny_ddnn, "burst", burst.next_id(), x[0].numpy())
            pending.append((request.request_id, burst.send(topic, request)[0]))
        answers = [burst.wait(rid, p, 10.0) for rid, p in pending]
    finally:
        burst.close()
        device.close()
        server.close()
    assert all(r.status == "ok" for r in lone) and all(isinstance(a, Reply) for a in answers)
    inline_total = server.metrics.counter("inline_requests_total")
    batches = server.metrics.counter("batches_total")
    if inline:
        assert first == 3  # no hand-off to a worker for a request that found the server idle
        assert inline_total < 3 + 40 and batches < 3 + 40  # the burst went to the worker, batched
    else:
        assert inline_total == 0 and batches < 3 + 40


def test_each_kind_of_bad_request_gets_its_own_error_and_serving_goes_on(tiny_ddnn, hub):
    """Wrong version, shape, tensor name or truncated bits: a clear error reply each."""
    server = InferenceServer(hub(), ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
    client = hub()
    requester = Requester(client, "dev0").start()
    x, _ = samples(1)
    topic, good = raw_request(tiny_ddnn, "dev0", 1, x[0].numpy())
    view = good.tensors[0]
    bits = encode_tensor(np.ones(24), Encoding.BITS, name="x")
    # (an unknown model *name* has a topic no server subscribes to: the device's deadline
    # answers it; an unknown version reaches the server of that model)
    cases = {
        "unknown version": (replace(good, model_version=9), Status.UNKNOWN_MODEL, "v9"),
        "wrong shape": (replace(good, tensors=(bits,)), Status.BAD_INPUT, "shape"),
        "no tensor x": (
            replace(good, tensors=(replace(view, name="y"),)), Status.BAD_INPUT, "needs 'x'",
        ),
    }  # fmt: skip
    answers = {}
    try:
        for rid, (name, (request, _, _)) in enumerate(cases.items(), start=10):
            request = replace(request, request_id=rid)
            sent = request_topic(request.model, request.section, "dev0")
            pending, _ = requester.send(sent, request)
            answers[name] = requester.wait(rid, pending, 5.0)
        truncated = encode_frame(replace(good, request_id=30, tensors=(bits,)))[:-1]
        spy: list[bytes] = []
        client.subscribe(reply_topic("dev0") + "/#", lambda t, p: spy.append(p))
        client.publish(topic, truncated)  # packed bits cut short
        pending, _ = requester.send(topic, replace(good, request_id=31))
        after = requester.wait(31, pending, 5.0)
    finally:
        requester.close()
        server.close()
    for name, (_, code, text) in cases.items():
        answer = answers[name]
        assert isinstance(answer, ErrorFrame) and answer.code == code, (name, answer)
        assert text in answer.message, (name, answer.message)
    errors = [decode_frame(p) for p in spy]
    assert any(isinstance(e, ErrorFrame) and e.code == Status.MALFORMED for e in errors)
    assert isinstance(after, Reply) and after.status == Status.OK


def raw_request(run, device: str, rid: int, view: np.ndarray) -> tuple[str, Request]:
    """A server-only request for `view` [C, h, w] as `device` would send it."""
    doc = read_spec_doc(run)
    x = encode_tensor(view[None], Encoding.UNIT8, name="x")  # [1, C, h, w]
    req = Request(rid, str(doc["name"]), int(doc["version"]), device, rid, 0, (x,))
    return request_topic(req.model, 0, device), req


def test_metrics_and_health_over_http(tiny_ddnn, hub):
    import urllib.request

    from ddnn.runtime.metrics import MetricsServer

    server = InferenceServer(hub(), ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
    http = MetricsServer(server.metrics, server.healthy).start()
    device = DeviceClient(
        hub(), tiny_ddnn, DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=5000)
    ).start()
    try:
        x, _ = samples(2)
        device.infer(x[0].numpy(), 0)
        base = f"http://127.0.0.1:{http.port}"
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        health = urllib.request.urlopen(f"{base}/healthz", timeout=5).read().decode()
    finally:
        device.close()
        http.close()
        server.close()
    assert "ddnn_replies_total" in metrics and "ddnn_queue_ms_bucket" in metrics
    assert health.strip() == "ok"


def test_three_tiers_answer_at_the_cloud_when_nothing_earlier_is_confident(
    tiny_3tier, hub, tmp_path
):
    model = load_model(tiny_3tier)
    model.spec = model.spec.with_thresholds({"device": 0.0, "edge": 0.0})
    with fused(save_model(model, tmp_path / "m"), hub, frame_deadline_ms=2000) as infer:
        frame = infer(0, range(4))
    assert all(r.status == "ok" and r.exit_index == 2 and r.offloaded for r in frame)
    assert len({r.predicted for r in frame}) == 1


def with_local_threshold(run, folder, threshold: float):
    model = load_model(run)
    model.spec = model.spec.with_thresholds({"device": threshold})
    return save_model(model, folder)


def test_devices_send_scores_first_and_features_only_when_asked(tiny_multiview, hub, tmp_path):
    sure = with_local_threshold(tiny_multiview, tmp_path / "sure", 1.0)  # (all but uniform)
    unsure = with_local_threshold(tiny_multiview, tmp_path / "unsure", 0.0)  # never
    with fused(sure, hub, frame_deadline_ms=2000) as infer:
        local = [r for i in range(3) for r in infer(i, range(4))]
    with fused(unsure, hub, frame_deadline_ms=2000) as infer:
        upper = [r for i in range(3) for r in infer(i, range(4))]
    assert all(r.status == "ok" and r.exit_index == 0 for r in local)
    assert all(r.status == "ok" and r.exit_index == 1 for r in upper)
    scores_only = {r.frame_bytes for r in local}
    assert len(scores_only) == 1  # one frame of 10 float32 scores, no features
    (scores_bytes,) = scores_only
    # unsure: the scores frame, then a features frame (a header like it, and packed bits)
    assert all(r.frame_bytes > 2 * (scores_bytes - 4 * 10) for r in upper)
    for frame in range(3):  # one fused answer per frame, the same for every device
        assert len({r.predicted for r in upper[4 * frame : 4 * frame + 4]}) == 1


def test_a_device_that_never_sends_its_features_is_left_out(tiny_multiview, hub, tmp_path):
    run = with_local_threshold(tiny_multiview, tmp_path / "unsure", 0.0)
    spec, doc = read_spec(run), read_spec_doc(run)
    silent = hub()  # dev3: reports its scores, ignores the request for features
    asked: list[bytes] = []
    silent.subscribe(reply_topic("dev3"), lambda t, p: asked.append(p))
    scores = encode_tensor(np.zeros(spec.num_classes, np.float32), Encoding.FLOAT32, name="scores")
    with fused(run, hub, frame_deadline_ms=300) as infer:
        topic = request_topic(str(doc["name"]), 1, "dev3", prefix=EDGE_PREFIX)
        silent.publish(
            topic, encode_frame(Request(9, str(doc["name"]), 1, "dev3", 0, 1, (scores,)))
        )
        others = infer(0, range(3))
    assert all(r.status == "degraded" and r.missing == ["dev3"] for r in others)
    assert all(r.exit_index == 1 and r.total_ms >= 300 for r in others)
    first = decode_frame(asked[0])
    assert isinstance(first, Reply) and first.status == Status.FEATURES
    assert len(asked) == 1  # asked once; never answered on the stale request


def test_a_device_reporting_while_the_edge_waits_for_features_catches_up(
    tiny_multiview, hub, tmp_path
):
    """dev0..dev2 report scores and never send features; dev3's scores arrive while the edge
    waits for those features: dev3 gets the frame's answer (degraded), not an error."""
    import time

    run = with_local_threshold(tiny_multiview, tmp_path / "unsure", 0.0)
    spec, doc = read_spec(run), read_spec_doc(run)
    name = str(doc["name"])
    silent = hub()
    scores = encode_tensor(np.zeros(spec.num_classes, np.float32), Encoding.FLOAT32, name="scores")
    with fused(run, hub, frame_deadline_ms=300) as infer:
        for d in range(3):
            request = Request(100 + d, name, 1, f"dev{d}", 0, 1, (scores,))
            silent.publish(
                request_topic(name, 1, f"dev{d}", prefix=EDGE_PREFIX), encode_frame(request)
            )
        time.sleep(0.4)  # scores fused at 0.3 s, features asked for, not sent: edge waits
        (late,) = infer(0, [3])
    assert late.status == "degraded" and late.predicted >= 0 and late.message == ""
    assert late.total_ms < 1000


def test_frame_ids_reused_long_after_are_a_new_event(tiny_multiview, hub):
    """Devices that restart number their frames from 0 again: long after the late window, a
    known frame id is a new event, not a late report of the old one."""
    import time

    with fused(tiny_multiview, hub, frame_deadline_ms=100, upstream_deadline_ms=100) as infer:
        first = infer(0, range(4))
        time.sleep(1.5)  # the late window: 2 x 0.1 + 0.1 + 1 s
        again = infer(0, range(4))
    assert all(r.status == "ok" for r in first + again)


def test_a_late_device_gets_its_frames_answer_at_once_and_catches_up(tiny_multiview, hub):
    with fused(tiny_multiview, hub, frame_deadline_ms=300) as infer:
        early = infer(0, range(3))
        late = infer(0, [3])[0]  # frame 0 was answered without dev3
        again = infer(1, range(4))
    assert all(r.status == "degraded" and r.missing == ["dev3"] for r in early)
    assert late.status == "degraded" and late.predicted == early[0].predicted
    assert late.total_ms < 300  # answered from the frame's result, no new frame opened
    assert all(r.status == "ok" for r in again)  # aligned again on the next frame
