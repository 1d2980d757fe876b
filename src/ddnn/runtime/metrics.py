"""A tiny Prometheus text-format registry and an HTTP endpoint (/metrics, /healthz), so a server
can be scraped without another dependency."""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from ddnn.runtime.lifecycle import Service

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    """Counters and histograms keyed by name and label values; thread-safe."""

    def __init__(self, prefix: str = "ddnn") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._hists: dict[str, tuple[list[int], list[float]]] = {}  # name -> (counts, [sum, n])
        self._help: dict[str, str] = {}
        self._sources: list[tuple[str, Callable[[], dict[str, int]]]] = []

    def inc(self, name: str, help_text: str = "", value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())) if labels else ())
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value
            self._help.setdefault(name, help_text)

    def observe(self, name: str, value_ms: float, help_text: str = "") -> None:
        self.observe_many(name, (value_ms,), help_text)

    def observe_many(self, name: str, values_ms: Iterable[float], help_text: str = "") -> None:
        """Several observations under one lock (a batch's requests)."""
        with self._lock:
            counts, total = self._hists.setdefault(
                name, ([0] * (len(LATENCY_BUCKETS_MS) + 1), [0.0, 0.0])
            )
            for value in values_ms:
                counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value)] += 1
                total[0] += value
                total[1] += 1
            self._help.setdefault(name, help_text)

    def add_source(self, group: str, read: Callable[[], dict[str, int]]) -> None:
        """Counters kept elsewhere (e.g. a transport's `stats`), read at every scrape and shown
        as `<prefix>_<group>_<name>_total`."""
        self._sources.append((group, read))

    def counter(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        """Prometheus exposition format 0.0.4."""
        lines: list[str] = []
        for group, read in self._sources:
            for name, value in sorted(read().items()):
                full = f"{self.prefix}_{group}_{name}_total"
                lines += [f"# TYPE {full} counter", f"{full} {value:g}"]
        with self._lock:
            for name in sorted({n for n, _ in self._counters}):
                full = f"{self.prefix}_{name}"
                lines += [f"# HELP {full} {self._help.get(name, name)}", f"# TYPE {full} counter"]
                for (n, labels), value in sorted(self._counters.items()):
                    if n == name:
                        text = ",".join(f'{k}="{v}"' for k, v in labels)
                        lines.append(f"{full}{{{text}}} {value:g}" if text else f"{full} {value:g}")
            for name, (counts, (total, n)) in sorted(self._hists.items()):
                full = f"{self.prefix}_{name}"
                lines += [f"# HELP {full} {self._help.get(name, name)}", f"# TYPE {full} histogram"]
                running = 0
                for bound, count in zip((*LATENCY_BUCKETS_MS, "+Inf"), counts, strict=True):
                    running += count
                    lines.append(f'{full}_bucket{{le="{bound}"}} {running}')
                lines += [f"{full}_sum {total:g}", f"{full}_count {n:g}"]
        return "\n".join(lines) + "\n"


def parse_samples(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed as written (`name{labels}`); for
    benchmarks and tests that scrape a server."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return samples


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
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind the port and serve on a thread."""
        if self._server is not None:
            return self
        metrics, outer = self.metrics, self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, code, ctype = metrics.render().encode(), 200, "text/plain; version=0.0.4"
                elif self.path == "/healthz":
                    ok = outer.healthy()
                    body, code, ctype = (
                        (b"ok\n" if ok else b"unhealthy\n"),
                        (200 if ok else 503),
                        "text/plain",
                    )
                else:
                    body, code, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("http: " + fmt, *args)

        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.daemon_threads = True
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
