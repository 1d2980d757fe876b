"""The metrics registry: its names, its exposition (read back by Prometheus' own parser) and its
HTTP endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ddnn.runtime.metrics import Metrics, MetricsServer, parse_samples


def test_names_stay_as_callers_wrote_them_and_prometheus_reads_them():
    metrics = Metrics()
    metrics.add_source("mqtt", lambda: {"connects": 2})
    metrics.inc("requests_received_total", "request messages received")
    metrics.inc("errors_total", "error replies", code="bad_input")
    metrics.inc("frames_answered_total", "frames answered", exit=1)  # not a str: still a label
    metrics.observe_many("queue_ms", [0.3, 1.0, 7000.0], "time waited")
    text = metrics.render()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["ddnn_queue_ms"] == "histogram" and families["ddnn_errors"] == "counter"
    samples = parse_samples(text)
    assert samples["ddnn_mqtt_connects_total"] == 2
    assert samples["ddnn_requests_received_total"] == 1
    assert samples['ddnn_errors_total{code="bad_input"}'] == 1
    assert samples['ddnn_frames_answered_total{exit="1"}'] == 1
    assert samples['ddnn_queue_ms_bucket{le="1"}'] == 2
    assert samples['ddnn_queue_ms_bucket{le="+Inf"}'] == 3 == samples["ddnn_queue_ms_count"]
    assert metrics.counter("errors_total", code="bad_input") == 1
    assert not any(key.endswith("_created") for key in samples)


def test_every_metrics_object_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.inc("replies_total", "replies sent")
    assert "ddnn_replies_total" in a.render() and "ddnn_replies_total" not in b.render()


def test_parsing_follows_the_exposition_format():
    """Timestamps and escaped label values are part of the format: a scrape of another exporter
    (or a later prometheus_client) must not be misread."""
    text = (
        "# TYPE x_total counter\n"
        'x_total{msg="a \\"quoted\\" value"} 3 1700000000000\n'
        "# TYPE y gauge\n"
        "y 4.5\n"
    )
    assert parse_samples(text) == {'x_total{msg="a "quoted" value"}': 3.0, "y": 4.5}


def test_the_endpoint_serves_metrics_health_and_nothing_else():
    metrics, healthy = Metrics(), [True]
    metrics.inc("batches_total", "batches run")
    http = MetricsServer(metrics, lambda: healthy[0]).start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            assert parse_samples(resp.read().decode())["ddnn_batches_total"] == 1
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
        healthy[0] = False
        for path, code in (("/healthz", 503), ("/nope", 404)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}{path}", timeout=5)
            assert err.value.code == code
            err.value.close()
    finally:
        http.close()
