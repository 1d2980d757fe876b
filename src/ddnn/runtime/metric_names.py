"""Every metric the tiers export, with its help text: the writers (server, edge, replies, the
benches' floor server) and the readers (benchmarks and tests scraping /metrics) import them from
here, so a renamed metric cannot leave a reader counting zeros.

`name` is what `Metrics` is given (counters end in `_total`); the exposition prefixes it with
`PREFIX`, and readers build that exposed name with `exposed`, never by hand.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "ddnn"


class MetricName(NamedTuple):
    """A metric's name as `Metrics` takes it and its help text: `metrics.inc(*REPLIES)`."""

    name: str
    help: str


def exposed(metric: MetricName | str, suffix: str = "") -> str:
    """The name in the Prometheus text: `ddnn_<name>`, plus `suffix` (`_count`, `_sum`, ...)."""
    name = metric.name if isinstance(metric, MetricName) else metric
    return f"{PREFIX}_{name}{suffix}"


# server (and the benches' floor server)
REQUESTS_RECEIVED = MetricName("requests_received_total", "request messages received")
INLINE_REQUESTS = MetricName("inline_requests_total", "lone requests answered without a hand-off")
WORKER_RESTARTS = MetricName("worker_restarts_total", "worker loops restarted after a crash")
DUPLICATES_DROPPED = MetricName("duplicates_dropped_total", "re-delivered requests dropped")
BATCH_COMPUTE_MS = MetricName("batch_compute_ms", "compute time per batch")
BATCHES = MetricName("batches_total", "batches run")
QUEUE_MS = MetricName("queue_ms", "time a request waited before compute")
REPLIES = MetricName("replies_total", "replies sent")
# every tier
ERRORS = MetricName("errors_total", "error replies")
LOG_SUPPRESSED = MetricName("log_suppressed_total", "warnings counted but not logged")
# edge
FRAMES_INCOMPLETE = MetricName("frames_incomplete_total", "frames fused without every device")
FEATURES_ASKED = MetricName("features_asked_total", "devices asked for their features")
FEATURES_INCOMPLETE = MetricName("features_incomplete_total", "frames sent on without all features")
LATE_DEVICE_REPORTS = MetricName(
    "late_device_reports_total", "reports after their frame was dispatched"
)
FRAMES_ANSWERED = MetricName("frames_answered_total", "frames answered")
UPSTREAM_FAILURES = MetricName("upstream_failures_total", "forwards without a server answer")
# live rollout (server: deploys, fetches served, unloads; devices and edges: their fetches)
DEPLOYS = MetricName("deploys_total", "deploy and rollback commands, by result")
FETCHES_SERVED = MetricName("fetches_served_total", "fetch requests answered, by result")
VERSIONS_UNLOADED = MetricName("versions_unloaded_total", "idle versions unloaded")
FETCH_FAILURES = MetricName("fetch_failures_total", "new versions this tier could not fetch")
SWITCHES = MetricName("version_switches_total", "switches to a new version")
