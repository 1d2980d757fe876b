"""Counters and histograms a server keeps, exposed and parsed with `prometheus_client`, and an
HTTP endpoint (/metrics, /healthz) so a server can be scraped.

The hot path stays hand-written: `inc` and `observe_many` run per request and per batch, and
prometheus_client's labelled counters and histograms cost 4-10 us more per call there (measured
in docs/runtime.md). prometheus_client renders the exposition (a collector reads our tables at
each scrape), parses it back for benchmarks and tests, and serves it over HTTP.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.parser import text_string_to_metric_families

from ddnn.runtime.lifecycle import Service
from ddnn.runtime.metric_names import PREFIX, MetricName

log = logging.getLogger(__name__)

CounterKey = tuple[str, tuple[tuple[str, str], ...]]  # name and sorted labels


def _counter_key(name: str, labels: dict[str, str]) -> CounterKey:
    return (name, tuple(sorted(labels.items())) if labels else ())


LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    """Counters and histograms keyed by name and label values; thread-safe."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[CounterKey, float] = {}
        self._hists: dict[str, tuple[list[int], list[float]]] = {}  # name -> (counts, [sum, n])
        self._help: dict[str, str] = {}
        self._sources: list[tuple[str, Callable[[], dict[str, int]]]] = []
        # one registry per object (never the global default): several servers in one process
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def inc(self, name: str, help_text: str = "", value: float = 1.0, **labels: str) -> None:
        key = _counter_key(name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value
            self._help.setdefault(name, help_text)

    def observe(self, name: str, value_ms: float, help_text: str = "") -> None:
        self.observe_many(name, (value_ms,), help_text)

    def observe_many(self, name: str, values_ms: Iterable[float], help_text: str = "") -> None:
        """Several observations under one lock (a batch's requests)."""
        with self._lock:
            self._observe(name, values_ms, help_text)

    def _observe(self, name: str, values_ms: Iterable[float], help_text: str) -> None:
        counts, total = self._hists.setdefault(
            name, ([0] * (len(LATENCY_BUCKETS_MS) + 1), [0.0, 0.0])
        )
        for value in values_ms:
            counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value)] += 1
            total[0] += value
            total[1] += 1
        self._help.setdefault(name, help_text)

    def key(self, metric: MetricName, **labels: str) -> CounterKey:
        """A counter's key for `update`, built once: the per-request path then neither sorts
        labels nor takes the lock once per counter."""
        with self._lock:
            self._help.setdefault(metric.name, metric.help)
        return _counter_key(metric.name, labels)

    def update(
        self,
        counts: Iterable[tuple[CounterKey, float]] = (),
        observations: Iterable[tuple[MetricName, Iterable[float]]] = (),
    ) -> None:
        """Several counters (keys from `key`) and histograms under one lock: what a server
        records per reply, in one call instead of one locked call each."""
        with self._lock:
            counters = self._counters
            for key, value in counts:
                counters[key] = counters.get(key, 0.0) + value
            for metric, values in observations:
                self._observe(metric.name, values, metric.help)

    def add_source(self, group: str, read: Callable[[], dict[str, int]]) -> None:
        """Counters kept elsewhere (e.g. a transport's `stats`), read at every scrape and shown
        as `<prefix>_<group>_<name>_total`."""
        self._sources.append((group, read))

    def counter(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        """Prometheus exposition format 0.0.4."""
        return generate_latest(self.registry).decode()

    def collect(self) -> Iterator[Metric]:
        """The prometheus_client collector protocol: a snapshot of every counter and histogram.
        Counter names end in `_total` (prometheus_client adds it to a family name)."""
        for group, read in self._sources:
            for name, count in sorted(read().items()):
                full = f"{self.prefix}_{group}_{name}"
                yield CounterMetricFamily(full, f"{group} {name}", value=count)
        with self._lock:
            counters = sorted(self._counters.items())
            hists = sorted((n, (list(c), list(t))) for n, (c, t) in self._hists.items())
            help_texts = dict(self._help)
        families: dict[str, CounterMetricFamily] = {}
        for (name, labels), value in counters:
            family = families.get(name)
            if family is None:
                full = f"{self.prefix}_{name}"
                family = CounterMetricFamily(
                    full, help_texts.get(name) or name, labels=[k for k, _ in labels]
                )
                families[name] = family
            family.add_metric([str(v) for _, v in labels], value)
        yield from families.values()
        for name, (counts, (total, _)) in hists:
            running, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS_MS, "+Inf"), counts, strict=True):
                running += count
                buckets.append((str(bound), running))
            yield HistogramMetricFamily(
                f"{self.prefix}_{name}", help_texts.get(name) or name,
                buckets=buckets, sum_value=total,
            )  # fmt: skip


def parse_samples(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed `name{k="v",...}` (labels as written) or
    `name`; for benchmarks and tests that scrape a server."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class MetricsServer(Service):
    """Serves /metrics and /healthz on a loopback port (0 picks a free one); `port` is the
    bound port once started."""

    def __init__(
        self, metrics: Metrics, healthy: Callable[[], bool], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.metrics = metrics
        self.healthy = healthy
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._exposition(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            ok = self.healthy()
            status, body = (
                ("200 OK", b"ok\n") if ok else ("503 Service Unavailable", b"unhealthy\n")
            )
        else:
            status, body = "404 Not Found", b"not found: try /metrics or /healthz\n"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> Self:
        """Bind the port and serve on a thread."""
        if self._server is not None:
            return self
        self._exposition = make_wsgi_app(self.metrics.registry)
        self._server = make_server(
            self.host, self.port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
