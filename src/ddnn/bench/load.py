"""`ddnn bench load`: how much open-loop load `ddnn serve` holds on this machine.

K simulated devices, each its own MQTT connection and reply topic, send offloaded requests at R
requests/s each for T seconds, paced by a schedule and never waiting for answers: a slow server
cannot slow the senders down and so hide its latency (coordinated omission). Latency is measured
from the time a request was *scheduled*, so a late send counts against the step.

The devices live in separate load-generator processes (`--generators`, devices split among
them), the server in its own `ddnn serve` process (or `--servers N` of them, one shared
subscription), all on one private Mosquitto: the generators share no GIL with the server, and
their achieved send rate and CPU time are reported so a step that the generator, not the server,
could not keep up with is named as such. Linux only: CPU and memory come from /proc.

Every request ends as exactly one of: `ok` (a reply before its deadline), `shed` (an OVERLOADED
error), `error` (any other error reply, or a publish the transport refused) or `lost` (nothing
before the deadline; a reply after it is counted in `late` too). p50 / p99 are over the
requests answered with a reply (late ones included) and the unanswered ones (as infinitely late);
shed and error answers, which come back fast, are left out so they cannot flatter the latency.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import secrets
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ddnn.bench.child import ConfiguredChild
from ddnn.errors import DdnnError
from ddnn.runtime.broker import broker_or_own, free_port
from ddnn.runtime.metrics import parse_samples
from ddnn.runtime.processes import Process

log = logging.getLogger(__name__)

HELD_SEND_FRACTION = 0.95  # a step offered less than this share of its rate: generator-bound
GENERATOR_START_S = 0.5  # head start between "go" and the first scheduled send
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- the load generator (runs in its own process) --------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """What one generator process sends; passed as one JSON line on its stdin."""

    url: str
    model: str
    version: int
    shape: tuple[int, ...]  # per-request section-1 input, [D, *device output]
    device_ids: tuple[int, ...]  # global device numbers this generator plays (of `devices`)
    devices: int  # K: all devices of the step, to stagger their phases evenly
    rate: float  # R: requests/s per device
    seconds: float
    deadline_ms: float
    out: str  # where the results JSON goes
    window: int = 0  # > 0: closed loop, this many requests in flight per device (rate unused)


def _schedule(cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(due times s after start, local device index, request number), sorted by time. Device k
    sends request n at (n + k / K) / R: evenly spread, no synchronized bursts."""
    per_device = max(1, round(cfg.seconds * cfg.rate))
    n = np.arange(per_device)
    times = np.concatenate([(n + k / cfg.devices) / cfg.rate for k in cfg.device_ids])  # [L*N]
    local = np.repeat(np.arange(len(cfg.device_ids)), per_device)  # [L*N]
    number = np.tile(n, len(cfg.device_ids))  # [L*N]
    order = np.argsort(times, kind="stable")
    return times[order], local[order], number[order]


def _start_time(ready: IO[str], go: IO[str]) -> float:
    """Say `ready`, read the common start (epoch seconds) from `go`; as a perf_counter time."""
    ready.write("ready\n")
    ready.flush()
    start_epoch = float(go.readline())
    return time.perf_counter() + (start_epoch - time.time())


def run_generator(cfg: GeneratorConfig, ready: IO[str], go: IO[str]) -> dict[str, Any]:
    """Connect the devices, say `ready`, wait for the start time on `go`, send on schedule,
    wait for every answer until its deadline and classify each request."""
    if cfg.window > 0:
        return run_closed_loop(cfg, ready, go)
    from ddnn.bench.offload import offload_features, offload_request
    from ddnn.runtime.client import Requester
    from ddnn.runtime.protocol import request_topic
    from ddnn.runtime.transport import create_transport
    from ddnn.runtime.wire import ErrorFrame, Reply, Status

    names = [f"load{k}" for k in cfg.device_ids]
    transports, requesters = [], []
    try:
        for name in names:
            transports.append(create_transport(cfg.url))
            requesters.append(Requester(transports[-1], name).start())
        topics = [request_topic(cfg.model, 1, name) for name in names]
        feats = [offload_features(cfg.shape, k) for k in cfg.device_ids]
        due, local, number = _schedule(cfg)
        t0 = _start_time(ready, go)
        cpu0 = time.process_time()
        sent: list[Any] = []  # Pending, or None when the publish was refused
        for t, j, n in zip(due.tolist(), local.tolist(), number.tolist(), strict=True):
            wait = t0 + t - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            req = requesters[j]
            request = offload_request(
                cfg.shape, cfg.model, cfg.version, req.next_id(), names[j], feats[j], n
            )
            try:
                sent.append(req.send(topics[j], request)[0])
            except DdnnError as exc:
                log.debug("%s: publish refused: %s", names[j], exc)
                sent.append(None)
        last_send = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        deadline = cfg.deadline_ms / 1000
        for t, pending in zip(due.tolist(), sent, strict=True):
            if pending is not None:
                pending.done.wait(max(0.0, t0 + t + deadline - time.perf_counter()))
    finally:
        for r in requesters:
            r.close()
        for t in transports:
            t.close()
    counts: Counter[str] = Counter()
    latency, lag = [], []  # ms from the scheduled send; ms the send was late
    for t, pending in zip(due.tolist(), sent, strict=True):
        if pending is None:
            counts["error"] += 1
            counts["send_errors"] += 1
            continue
        counts["sent"] += 1
        lag.append((pending.sent_at - t0 - t) * 1000)
        answer = pending.answer
        took = (pending.received_at - t0 - t) * 1000 if answer is not None else math.inf
        if isinstance(answer, Reply):
            latency.append(took)
        if answer is None or took > cfg.deadline_ms:
            counts["lost"] += 1
            counts["late"] += answer is not None
        elif isinstance(answer, ErrorFrame) and answer.code is Status.OVERLOADED:
            counts["shed"] += 1
        elif isinstance(answer, ErrorFrame):
            counts["error"] += 1
        else:
            counts["ok"] += 1
    unanswered = counts["lost"] - counts["late"]
    return {
        "scheduled": len(due),
        "counts": dict(counts),
        "latency_ms": [round(x, 3) for x in latency] + [math.inf] * unanswered,
        "lag_ms": [round(x, 3) for x in lag],
        "last_send_s": last_send,
        "cpu_s": cpu,  # while sending
    }


def run_closed_loop(cfg: GeneratorConfig, ready: IO[str], go: IO[str]) -> dict[str, Any]:
    """Capacity load: every device keeps `cfg.window` requests in flight for `cfg.seconds`.
    Each reply sends the device's next request from the transport's network thread, so the
    generator needs no thread per request and stays cheap next to the server it loads."""
    from ddnn.bench.offload import offload_features, offload_request
    from ddnn.runtime.protocol import reply_topic, request_topic
    from ddnn.runtime.transport import create_transport
    from ddnn.runtime.wire import Reply, decode_frame, encode_frame

    lock = threading.Lock()
    sent: dict[tuple[int, int], float] = {}  # (device, request id) -> perf_counter at send
    answered: list[tuple[float, float]] = []  # (round trip ms, of which in the server ms)
    counts: Counter[str] = Counter()
    stop = math.inf
    transports: list[Any] = []

    def send(j: int, rid: int) -> None:
        request = offload_request(cfg.shape, cfg.model, cfg.version, rid, names[j], feats[j])
        with lock:
            sent[j, rid] = time.perf_counter()
        try:
            transports[j].publish(topics[j], encode_frame(request))
        except DdnnError as exc:
            log.debug("%s: publish refused: %s", names[j], exc)
            with lock:
                sent.pop((j, rid), None)
                counts["send_errors"] += 1

    def handler(j: int) -> Callable[[str, bytes], None]:
        def on_reply(topic: str, payload: bytes) -> None:
            now = time.perf_counter()
            try:
                frame = decode_frame(payload)
            except DdnnError:
                frame = None
            with lock:
                t = None if frame is None else sent.pop((j, frame.request_id), None)
                if frame is None or t is None:  # that request stays in flight: lost
                    counts["unmatched"] += 1
                    return
                if isinstance(frame, Reply):
                    answered.append(((now - t) * 1000, frame.queue_ms + frame.compute_ms))
                else:
                    counts["errors"] += 1
                nxt = next(ids[j])
            if now < stop:
                send(j, nxt)

        return on_reply

    names = [f"load{k}" for k in cfg.device_ids]
    topics = [request_topic(cfg.model, 1, name) for name in names]
    feats = [offload_features(cfg.shape, k) for k in cfg.device_ids]
    # a random start, as Requester does: the server drops an id it has seen from a device as a
    # duplicate, and the same device names come back in every step against the same server
    ids = [itertools.count(secrets.randbits(40) + 1) for _ in names]
    try:
        for j, name in enumerate(names):
            transports.append(create_transport(cfg.url))
            transports[j].subscribe(reply_topic(name), handler(j))
        t0 = _start_time(ready, go)
        time.sleep(max(0.0, t0 - time.perf_counter()))
        cpu0 = time.process_time()
        stop = t0 + cfg.seconds
        for j in range(len(names)):
            for _ in range(cfg.window):
                with lock:
                    rid = next(ids[j])
                send(j, rid)
        time.sleep(max(0.0, stop - time.perf_counter()))
        cpu = time.process_time() - cpu0
        with lock:
            done = len(answered)
        end = stop + cfg.deadline_ms / 1000  # the last requests' answers
        while time.perf_counter() < end and sent:
            time.sleep(0.01)
    finally:
        for t in transports:
            t.close()
    with lock:
        counts["lost"] = len(sent)
    return {
        "answered_in_window": done,  # replies before `stop`: the throughput
        "counts": dict(counts),
        "latency_ms": [round(x, 3) for x, _ in answered],
        "server_ms": [round(x, 3) for _, x in answered],
        "cpu_s": cpu,
        "last_send_s": cfg.seconds,
    }


def generator_main() -> None:
    """Entry point of a generator process: config on stdin, results to `cfg.out`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = json.loads(sys.stdin.readline())
    raw["shape"], raw["device_ids"] = tuple(raw["shape"]), tuple(raw["device_ids"])
    cfg = GeneratorConfig(**raw)
    result = run_generator(cfg, sys.stdout, sys.stdin)
    Path(cfg.out).write_text(json.dumps(result))


class _Generator(ConfiguredChild):
    """A generator child process, driven over its pipes."""

    def __init__(self, cfg: GeneratorConfig, log_path: Path) -> None:
        super().__init__("ddnn.bench.load:generator_main", asdict(cfg), log_path, "load generator")
        self.cfg = cfg

    def go(self, start_epoch: float) -> None:
        self.send(repr(start_epoch), last=True)

    def result(self, timeout: float) -> dict[str, Any]:
        code = self.finish(timeout)
        if code != 0:
            raise DdnnError(f"load generator exited with code {code}:\n{self.tail()}")
        return dict(json.loads(Path(self.cfg.out).read_text()))


# --- measuring the server process ------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise DdnnError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def machine_cpu() -> float:
    """CPU seconds all cores spent busy so far (/proc/stat, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _CLK_TCK  # up to steal; guests are in user


def child_pid(command: str) -> int | None:
    """Pid of this process's child running `command` (the private Mosquitto), if any."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
        if comm == command and rest.split()[1] == me:
            return int(entry.name)
    return None


def server_counters(ports: Sequence[int]) -> dict[str, float]:
    """The serve processes' metrics from their Prometheus endpoints, summed over labels and
    processes (per-code error counts also as `errors_<code>`)."""
    out: dict[str, float] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            samples = parse_samples(resp.read().decode())
        for key, value in samples.items():
            name = key.split("{", 1)[0]
            if "{" in key and name == "ddnn_errors_total":
                code = key.split('code="', 1)[1].split('"', 1)[0]
                out[f"errors_{code}"] = out.get(f"errors_{code}", 0.0) + value
            out[name] = out.get(name, 0.0) + value
    return out


def _processed(c: dict[str, float]) -> float:
    return (
        c.get("ddnn_replies_total", 0.0)
        + c.get("ddnn_errors_total", 0.0)
        + c.get("ddnn_duplicates_dropped_total", 0.0)
    )


def _drain(ports: Sequence[int], timeout: float) -> dict[str, float]:
    """Wait until the server answered everything it received and nothing more arrives (a
    backlog can sit in the broker or the socket, not only in the server's queue), so the next
    step starts from an idle server."""
    end = time.monotonic() + timeout
    last = server_counters(ports)
    while True:
        time.sleep(0.3)
        c = server_counters(ports)
        received = c.get("ddnn_requests_received_total", 0.0)
        settled = received == last.get("ddnn_requests_received_total", 0.0)
        if settled and _processed(c) >= received:
            return c
        if time.monotonic() > end:
            log.warning("server still has a backlog after %.0f s", timeout)
            return c
        last = c


# --- the benchmark ---------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; inf (unanswered) sorts last, so a lost request shows."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))])


@dataclass(frozen=True)
class Target:
    """The servers under load and where the generators reach them."""

    url: str
    model: str
    version: int
    shape: tuple[int, ...]
    server_pids: tuple[int, ...]  # `ddnn serve` processes sharing the requests
    broker_pid: int | None  # None: an external broker, not measured
    metrics_ports: tuple[int, ...]
    work: Path  # generator configs, results and logs


@dataclass
class _Drive:
    """What one step's generators returned and what the servers did while they sent."""

    parts: list[dict[str, Any]]  # one result per generator process
    delta: dict[str, float]  # the servers' counters over the step, answered backlog included
    cpu_shares: dict[str, float | None]  # over the sending window (see _cpu_shares)
    rss_mb: dict[str, float]  # servers' RSS at the start and end of the sending window


def _drive(
    target: Target, devices: int, generators: int, tag: str, result_timeout: float, **kw: Any
) -> _Drive:
    """Split `devices` over generator processes configured by `kw` (GeneratorConfig fields),
    start them together and measure the servers while they send."""
    g = max(1, min(generators, devices))
    cfgs = [
        GeneratorConfig(
            url=target.url,
            model=target.model,
            version=target.version,
            shape=target.shape,
            device_ids=tuple(range(i, devices, g)),
            devices=devices,
            out=str(target.work / f"{tag}-{i}.json"),
            **kw,
        )
        for i in range(g)
    ]
    seconds = cfgs[0].seconds
    gens: list[_Generator] = []
    try:
        for i, cfg in enumerate(cfgs):
            gens.append(_Generator(cfg, target.work / f"{tag}-{i}.log"))
        for gen in gens:
            gen.wait_ready()
        before = server_counters(target.metrics_ports)
        start = time.time() + GENERATOR_START_S
        for gen in gens:
            gen.go(start)
        # CPU shares over the sending window only (the wait for late answers would dilute them)
        time.sleep(max(0.0, start - time.time()))
        rss0, cpu0, all0 = _rss(target), _cpu(target), machine_cpu()
        time.sleep(max(0.0, start + seconds - time.time()))
        cpu1, all1 = _cpu(target), machine_cpu()
        window = time.time() - start
        parts = [gen.result(result_timeout) for gen in gens]
        rss1 = _rss(target)
    finally:
        for gen in gens:
            gen.close()
    after = _drain(target.metrics_ports, 30.0)
    return _Drive(
        parts,
        {k: after[k] - before.get(k, 0.0) for k in after},
        _cpu_shares(parts, cpu0, cpu1, all1 - all0, window),
        {"start": rss0, "end": rss1},
    )


def run_step(
    target: Target,
    devices: int,
    rate: float,
    seconds: float,
    deadline_ms: float,
    generators: int,
) -> dict[str, Any]:
    """One (K, R) step: start the generators, send, collect, and measure the server."""
    run = _drive(
        target, devices, generators, f"gen-{devices}x{rate:g}", seconds + deadline_ms / 1000 + 60,
        rate=rate, seconds=seconds, deadline_ms=deadline_ms,
    )  # fmt: skip
    parts, delta = run.parts, run.delta
    counts: Counter[str] = Counter()
    for p in parts:
        counts.update(p["counts"])
    latency = [x for p in parts for x in p["latency_ms"]]
    lag = [x for p in parts for x in p["lag_ms"]]
    scheduled = sum(p["scheduled"] for p in parts)
    send_window = max(seconds, max(p["last_send_s"] for p in parts))
    offered = devices * rate
    server = {k: v for k, v in delta.items() if k.endswith("_total") or "errors_" in k}

    def mean(name: str) -> float | None:  # of a histogram, over this step
        n = delta.get(f"ddnn_{name}_count", 0.0)
        return delta.get(f"ddnn_{name}_sum", 0.0) / n if n else None

    return {
        "devices": devices,
        "rate_per_device": rate,
        "offered_per_s": offered,
        "achieved_send_per_s": counts["sent"] / send_window,
        "scheduled": scheduled,
        "sent": counts["sent"],
        "ok": counts["ok"],
        "shed": counts["shed"],
        "errors": counts["error"],
        "send_errors": counts["send_errors"],
        "lost": counts["lost"],
        "late": counts["late"],
        "p50_ms": _percentile(latency, 50),
        "p99_ms": _percentile(latency, 99),
        "max_ms": _percentile(latency, 100),
        "send_lag_p99_ms": _percentile(lag, 99),
        "generators": len(parts),
        "mean_batch": _mean_batch(delta),
        # time inside the server: a long latency with a short queue means the backlog sat
        # before the workers (broker, socket, the server's network thread)
        "server_queue_ms_mean": mean("queue_ms"),
        "server_batch_compute_ms_mean": mean("batch_compute_ms"),
        **run.cpu_shares,
        "server_rss_mb": run.rss_mb,
        "server_received": server.get("ddnn_requests_received_total", 0.0),
        "server_counters": server,
    }


def closed_loop_step(
    target: Target, devices: int, window: int, seconds: float, generators: int
) -> dict[str, Any]:
    """Capacity with `devices` closed-loop devices keeping `window` requests in flight each:
    answers per second, latency, time in the server and who used the CPU."""
    run = _drive(
        target, devices, generators, f"closed-{devices}x{window}", seconds + 60,
        rate=0.0, seconds=seconds, deadline_ms=10_000.0, window=window,
    )  # fmt: skip
    latency = [x for p in run.parts for x in p["latency_ms"]]
    inside = [x for p in run.parts for x in p["server_ms"]]
    if not latency:
        raise DdnnError(f"no request was answered in {seconds:g} s with {devices} device(s)")
    counts: Counter[str] = Counter()
    for p in run.parts:
        counts.update(p["counts"])
    rate = sum(p["answered_in_window"] for p in run.parts) / seconds
    server_cores = (run.cpu_shares["server_cpu_pct"] or 0.0) / 100
    return {
        "devices": devices,
        "in_flight": devices * window,
        "requests_per_s": rate,
        "p50_ms": _percentile(latency, 50),
        "p95_ms": _percentile(latency, 95),
        "server_p50_ms": _percentile(inside, 50),  # queue + compute, as the replies say
        "mean_batch": _mean_batch(run.delta),
        # unreadable or unmatched replies too: a device whose request got one stops sending
        "errors": counts["errors"] + counts["send_errors"] + counts["unmatched"],
        "lost": counts["lost"],
        **run.cpu_shares,
        "requests_per_server_cpu_s": rate / max(server_cores, 1e-9),
    }


def _mean_batch(delta: dict[str, float]) -> float:
    return delta.get("ddnn_replies_total", 0.0) / max(delta.get("ddnn_batches_total", 0.0), 1.0)


def _cpu(target: Target) -> tuple[float, float | None]:
    """(servers, broker) CPU seconds so far."""
    broker = None if target.broker_pid is None else cpu_seconds(target.broker_pid)
    return sum(cpu_seconds(pid) for pid in target.server_pids), broker


def _rss(target: Target) -> float:
    """Resident memory of all server processes, MB."""
    return sum(rss_mb(pid) for pid in target.server_pids)


def _cpu_shares(
    parts: list[dict[str, Any]],
    before: tuple[float, float | None],
    after: tuple[float, float | None],
    machine_s: float,
    window: float,
) -> dict[str, float | None]:
    """CPU while sending, in % of one core (the machine has os.cpu_count() * 100): who used the
    cores, and how much went to processes outside the benchmark (`other`)."""
    server = 100 * (after[0] - before[0]) / window
    broker = None
    if before[1] is not None and after[1] is not None:
        broker = 100 * (after[1] - before[1]) / window
    gens = [100 * p["cpu_s"] / max(p["last_send_s"], 1e-3) for p in parts]
    machine = 100 * machine_s / window
    return {
        "server_cpu_pct": server,
        "broker_cpu_pct": broker,
        "generator_cpu_pct": sum(gens),
        "generator_cpu_pct_max": max(gens),  # one generator near 100: it was the bound
        "machine_cpu_pct": machine,
        "other_cpu_pct": max(0.0, machine - server - (broker or 0.0) - sum(gens)),
    }


def verdict(step: dict[str, Any], deadline_ms: float) -> str:
    """held: the rate was offered and every request answered in time, none shed.
    generator-bound: the senders could not offer the rate and one of them used a whole core, so
    the server's limit was not what was measured. overloaded: anything else (the server, or the
    machine it shares with the broker and the generators, could not keep up)."""
    short = step["achieved_send_per_s"] < HELD_SEND_FRACTION * step["offered_per_s"]
    if short and step["generator_cpu_pct_max"] >= 90:
        return "generator-bound"
    failed = step["lost"] or step["shed"] or step["errors"] or step["p99_ms"] > deadline_ms
    return "overloaded" if failed or short else "held"


def bench_load(
    run_dir: str,
    devices: Sequence[int] = (4, 8, 16),
    rates: Sequence[float] = (25, 50, 100),
    seconds: float = 10.0,
    deadline_ms: float = 2000.0,
    broker: str | None = None,
    generators: int = 1,
    workers: int = 2,
    max_batch: int = 32,
    queue_limit: int = 1024,
    servers: int = 1,
    keep_going: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the (K, R) grid against `servers` `ddnn serve` processes (one shared-subscription
    group). Unless `keep_going`, a step that fails skips every step at least as heavy (as many
    devices or more and as high a rate or higher)."""
    from tqdm.auto import tqdm

    from ddnn.bench.offload import offload_shape
    from ddnn.runtime.config import ServerConfig, to_argv
    from ddnn.store.artifact import open_model  # torch: not in the generators

    if not devices or not rates or min(devices) < 1 or min(rates) <= 0 or seconds <= 0:
        raise DdnnError("give at least one device count >= 1, rate > 0 and seconds > 0")
    if servers < 1 or generators < 1:
        raise DdnnError("--servers and --generators must be at least 1")
    stored = open_model(run_dir)
    name, version = stored.name, stored.version
    shape = offload_shape(stored.load())
    grid = [(k, r) for k in sorted(set(devices)) for r in sorted(set(rates))]
    steps: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[tuple[int, float]] = []
    with broker_or_own(broker) as url, tempfile.TemporaryDirectory(prefix="ddnn-load-") as tmp:
        work = Path(tmp)
        ports = tuple(free_port() for _ in range(servers))
        procs: list[Process] = []
        bar = tqdm(grid, desc="bench load", unit="step", disable=not progress)
        try:
            for i, port in enumerate(ports):
                config = ServerConfig(
                    workers=workers, max_batch=max_batch, queue_limit=queue_limit, http_port=port
                )
                args = ["serve", run_dir, "--broker", url, *to_argv(config)]
                procs.append(Process(f"load-server-{i}", args, work, ready=True))
            for proc in procs:
                proc.wait_ready()
            mosquitto = None if broker else child_pid("mosquitto")
            pids = tuple(proc.proc.pid for proc in procs)
            target = Target(url, name, version, shape, pids, mosquitto, ports, work)
            rss_idle = _rss(target)
            for k, r in bar:
                worse_than = next(((fk, fr) for fk, fr in failed if k >= fk and r >= fr), None)
                if worse_than is not None and not keep_going:
                    skipped.append({"devices": k, "rate_per_device": r, "after": worse_than})
                    continue
                bar.set_postfix_str(f"{k} devices x {r:g}/s")
                step = run_step(target, k, r, seconds, deadline_ms, generators)
                step["verdict"] = verdict(step, deadline_ms)
                for key in ("p50_ms", "p99_ms", "max_ms", "send_lag_p99_ms"):  # JSON: inf -> null
                    step[key] = step[key] if math.isfinite(step[key]) else None
                log.info("%d x %g/s: %s", k, r, step["verdict"])
                steps.append(step)
                if step["verdict"] != "held":
                    failed.append((k, r))
                for proc in procs:
                    if proc.proc.poll() is not None:
                        raise DdnnError(f"ddnn serve died during the benchmark:\n{proc.tail()}")
        finally:
            bar.close()
            for proc in procs:
                proc.stop()
    held = [s for s in steps if s["verdict"] == "held"]
    best = max(held, key=lambda s: (s["offered_per_s"], s["devices"]), default=None)
    keys = ("devices", "rate_per_device", "offered_per_s", "p50_ms", "p99_ms")
    return {
        "model": name,
        "version": version,
        "seconds": seconds,
        "deadline_ms": deadline_ms,
        "cpus": os.cpu_count(),
        "server": {
            "processes": servers,
            "workers": workers,
            "max_batch": max_batch,
            "queue_limit": queue_limit,
            "rss_idle_mb": rss_idle,
        },
        "generators": generators,
        "steps": steps,
        "skipped": skipped,
        "best": None if best is None else {k: best[k] for k in keys},
    }


def _ms(x: float | None, deadline_ms: float) -> str:
    """None: the percentile fell on a request never answered in time (no deadline: no data)."""
    if x is None:
        return "-" if math.isinf(deadline_ms) else f"> {deadline_ms:g}"
    return "-" if math.isnan(x) else f"{x:.1f}"


def _cpu_text(s: dict[str, Any]) -> str:
    broker = "-" if s["broker_cpu_pct"] is None else f"{s['broker_cpu_pct']:.0f}"
    return (
        f"{s['server_cpu_pct']:.0f} / {broker} / {s['generator_cpu_pct']:.0f} / "
        f"{s['other_cpu_pct']:.0f}"
    )


def _row(s: dict[str, Any], dl: float) -> str:
    if "after" in s:  # skipped
        k, r = s["devices"], s["rate_per_device"]
        blank = " |" * 12
        return f"| {k} | {r:g} | {k * r:g} |{blank} skipped (failed at {s['after'][0]} x " + (
            f"{s['after'][1]:g}) |"
        )
    rss = s["server_rss_mb"]
    return (
        f"| {s['devices']} | {s['rate_per_device']:g} | {s['offered_per_s']:g} | "
        f"{s['achieved_send_per_s']:.0f} | {s['ok']} | {s['shed']} | {s['errors']} | "
        f"{s['lost']} | {_ms(s['p50_ms'], dl)} | {_ms(s['p99_ms'], dl)} | "
        f"{_ms(s['send_lag_p99_ms'], dl)} | {_ms(s['server_queue_ms_mean'], math.inf)} | "
        f"{s['mean_batch']:.1f} | {_cpu_text(s)} | "
        f"{rss['start']:.0f} -> {rss['end']:.0f} | {s['verdict']} |"
    )


def bench_load_text(r: dict[str, Any]) -> str:
    """A Markdown table, one row per step in grid order, and the highest load held."""
    srv, dl = r["server"], r["deadline_ms"]
    lines = [
        f"model {r['model']} v{r['version']}: {srv['processes']} x `ddnn serve` "
        f"({srv['workers']} workers, max batch {srv['max_batch']}, queue {srv['queue_limit']}) "
        f"+ Mosquitto + {r['generators']} load generator process(es) on {r['cpus']} CPUs; "
        f"{r['seconds']:g} s a step, open loop, deadline {dl:g} ms, latency from the scheduled "
        f"send. CPU while sending, in % of one core (the machine has {100 * (r['cpus'] or 1)}); "
        "other = processes outside the benchmark.",
        "",
        "| devices | req/s each | offered/s | sent/s | ok | shed | errors | lost | p50 ms | "
        "p99 ms | send lag p99 ms | server queue ms | mean batch | "
        "CPU % server / broker / gen / other | server RSS MB | verdict |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    rows = sorted(r["steps"] + r["skipped"], key=lambda s: (s["devices"], s["rate_per_device"]))
    lines += [_row(s, dl) for s in rows]
    b = r["best"]
    held = (
        "none"
        if b is None
        else f"{b['devices']} devices x {b['rate_per_device']:g} req/s = "
        f"{b['offered_per_s']:g} req/s, p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms"
    )
    lines += ["", f"highest load held (lost 0, none shed, p99 under the deadline): {held}"]
    return "\n".join(lines)
