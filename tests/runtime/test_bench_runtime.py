import pytest

from ddnn.bench.child import ConfiguredChild
from ddnn.bench.floor import FloorConfig, FloorProcess, FloorResponder
from ddnn.bench.load import server_counters
from ddnn.bench.offload import offload_request
from ddnn.bench.runtime import bench_runtime, bench_runtime_text
from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, free_port
from ddnn.runtime.client import Requester
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.security import provision
from ddnn.runtime.transport import mqtt_client_names
from ddnn.runtime.wire import Reply, request_topic

pytestmark = pytest.mark.integration


def test_bench_runtime_measures_everything_in_one_run(tiny_ddnn):
    r = bench_runtime(str(tiny_ddnn), repeats=20, seconds=0.5, max_devices=2, window=4)
    assert r["round_trip"]["echo_median_ms"] > 0 and r["round_trip"]["framework_median_ms"] > 0
    assert r["round_trip"]["device_to_floor_median_ms"] > 0
    assert r["bytes"]["payload"] == 98 and 0 < r["bytes"]["frame_overhead"] <= 64
    assert r["bytes"]["mqtt_packet"] > r["bytes"]["frame"]
    assert [s["devices"] for s in r["throughput"]["sweep"]] == [1, 2]
    assert all(s["requests_per_s"] > 0 for s in r["throughput"]["sweep"])
    # every party's CPU is accounted; the server did work and the ratio per CPU-second is set
    sweep = r["throughput"]["sweep"]
    assert all(s["server_cpu_pct"] > 0 and s["machine_cpu_pct"] > 0 for s in sweep)
    assert all(s["generator_cpu_pct"] > 0 and s["mean_batch"] >= 1 for s in sweep)
    # closed loop: every device keeps its window in flight and every request is answered
    assert [s["in_flight"] for s in sweep] == [4, 8]
    assert all(s["lost"] == 0 and s["errors"] == 0 for s in sweep)
    assert r["throughput"]["per_cpu_ratio"] > 0
    # the paho floor ran the heaviest step; the server's CPU per request is split around it
    floor, split = r["throughput"]["floor"], r["throughput"]["cpu_per_request"]
    assert floor["devices"] == 2 and floor["requests_per_s"] > 0 and floor["lost"] == 0
    assert floor["errors"] == 0 and floor["mean_batch"] == 1
    assert split["forward_us"] > 0 and split["mqtt_floor_us"] > 0
    assert split["server_us"] == pytest.approx(
        split["forward_us"] + split["mqtt_floor_us"] + split["ddnn_us"]
    )
    assert 0 < split["bound_without_ddnn"] < 1
    assert "ratio" in bench_runtime_text(r) and "paho floor" in bench_runtime_text(r)
    # every MQTT client library side by side, each against its own bare echo
    assert tuple(r["by_client"]) == mqtt_client_names()
    for name, c in r["by_client"].items():
        assert c["echo_median_ms"] > 0 and c["framework_median_ms"] > 0, name
        assert c["rtt_ratio"] > 0 and c["server_best_per_s"] > 0 and c["per_cpu_ratio"] > 0
    assert r["by_client"]["paho"]["rtt_ratio"] == r["round_trip"]["ratio"]
    assert "| libmosquitto |" in bench_runtime_text(r)


def test_the_paho_floor_answers_requests_with_valid_replies(broker, tmp_path):
    cfg = FloorConfig(broker.url, "tiny", 1, free_port())
    floor = FloorProcess(cfg, tmp_path / "floor.log")
    try:
        with MqttTransport.from_url(broker.url) as t:
            req = Requester(t, "dev7").start()
            answers = []
            for _ in range(3):
                r = offload_request((1, 2, 4, 4), "tiny", 1, req.next_id(), "dev7")
                pending, _ = req.send(request_topic("tiny", 1, "dev7"), r)
                answers.append((r.request_id, req.wait(r.request_id, pending, 5.0)))
            req.close()
        for rid, answer in answers:  # each reply carries its own request's id
            assert isinstance(answer, Reply) and answer.request_id == rid
        counters = server_counters([cfg.http_port])
        assert counters["ddnn_requests_received_total"] == 3
        assert counters["ddnn_replies_total"] == 3
    finally:
        floor.stop()
    assert floor.proc.returncode == 0  # ends cleanly when told to


def test_the_paho_floor_names_an_unreachable_broker(tmp_path):
    cfg = FloorConfig(f"mqtt://127.0.0.1:{free_port()}", "tiny", 1)
    with pytest.raises(DdnnError, match=r"paho floor failed to start(.|\n)*cannot reach"):
        FloorProcess(cfg, tmp_path / "floor.log")


def test_the_paho_floor_reports_a_refused_connection(tmp_path):
    setup = provision(tmp_path / "secure", ["dev0"], tls=False)  # passwords: anonymous refused
    with MosquittoBroker(security=setup) as broker:
        cfg = FloorConfig(f"mqtt://127.0.0.1:{broker.port}", "tiny", 1)
        with pytest.raises(DdnnError, match="refused the floor responder: connection"):
            FloorResponder(cfg)


def test_a_helper_process_that_does_not_say_ready_is_killed_and_named(tmp_path):
    # says something else and exits: the line is quoted
    with pytest.raises(DdnnError, match="the helper failed to start \\(it said ''\\)"):
        ConfiguredChild("builtins:print", {}, tmp_path / "a.log", "helper").wait_ready(30)
    # alive and silent: killed after the timeout, never a hang
    child = ConfiguredChild("signal:pause", {}, tmp_path / "b.log", "helper")
    with pytest.raises(DdnnError, match="it said nothing"):
        child.wait_ready(0.5)
    assert child.proc.poll() is not None


def test_a_missed_target_is_marked_in_the_text():
    from ddnn.bench.runtime import verdict

    assert verdict(1.2, "<=", 1.5) == "(target <= 1.5)"
    assert verdict(2.0, "<=", 1.5) == "MISSED (target <= 1.5)"
    assert verdict(0.4, ">=", 0.5) == "MISSED (target >= 0.5)"


def test_the_capacity_legend_covers_no_tick_label():
    import matplotlib.pyplot as plt

    from ddnn.bench.runtime import capacity_figure

    sweep = [{"devices": d, "requests_per_s": 400.0 * d, "p95_ms": 2.0 + d} for d in (1, 2, 4, 8)]
    fig = capacity_figure({"model": "m", "throughput": {"window": 4, "sweep": sweep}})
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        labels = [
            t.get_window_extent(renderer)
            for ax in fig.axes
            for t in ax.get_yticklabels()
            if t.get_text()
        ]
        assert labels and not any(legend.overlaps(box) for box in labels)
    finally:
        plt.close(fig)
