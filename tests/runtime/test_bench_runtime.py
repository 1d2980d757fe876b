import pytest

from ddnn.bench.runtime import bench_runtime, bench_runtime_text

pytestmark = pytest.mark.integration


def test_bench_runtime_measures_everything_in_one_run(tiny_ddnn):
    r = bench_runtime(str(tiny_ddnn), repeats=20, seconds=0.5, max_devices=2, window=4)
    assert r["round_trip"]["echo_median_ms"] > 0 and r["round_trip"]["framework_median_ms"] > 0
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
    assert "ratio" in bench_runtime_text(r)
