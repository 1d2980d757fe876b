"""`ddnn bench runtime`, on one Mosquitto in one run, for each MQTT client library
(`--mqtt-client`) side by side:

1. the framework's round trip for an offloaded request (device -> broker -> server worker ->
   broker -> device, the server's compute subtracted) against a bare echo of a payload of the
   same size built on the same library (`ddnn.bench.echo`), and against the paho echo as the
   common reference;
2. bytes on the wire per offloaded request against its payload;
3. server throughput (many requests in flight, from load generator processes) against the same
   section's in-process batched forward, and throughput / p95 latency as closed-loop devices
   are added;
4. the same load against a bare paho responder (`ddnn.bench.floor`), which splits the server's
   CPU per request into the model's forward, the MQTT client's floor and ddnn's own code.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddnn.bench.echo import ECHOES
from ddnn.bench.floor import FloorConfig, FloorProcess, FloorResponder
from ddnn.bench.load import Target, closed_loop_step
from ddnn.bench.offload import offload_request, offload_shape
from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, free_port
from ddnn.runtime.client import Requester
from ddnn.runtime.config import ConnectionConfig, ServerConfig, to_argv
from ddnn.runtime.executor import SectionExecutor
from ddnn.runtime.processes import Process
from ddnn.runtime.protocol import request_topic
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.transport import DEFAULT_MQTT_CLIENT, create_transport, mqtt_client_names
from ddnn.runtime.wire import Reply, Request


@dataclass(frozen=True)
class _Served:
    """The benchmarked model, loaded once per run: its server-side executors and what an
    offloaded request to it carries."""

    run_dir: str
    db: ModelDB
    name: str
    version: int
    shape: tuple[int, ...]  # section 1's input per request: [D, *device section output]

    @classmethod
    def load(cls, run_dir: str) -> _Served:
        db = ModelDB([run_dir])
        (name, version), executor = next(iter(db.models.items()))
        return cls(run_dir, db, name, version, offload_shape(executor.model))

    def request(self, rid: int, device: str) -> Request:
        return offload_request(self.shape, self.name, self.version, rid, device)

    def target(
        self, url: str, pids: tuple[int, ...], broker_pid: int, ports: tuple[int, ...], work: Path
    ) -> Target:
        """What the load generators drive: the processes `pids` answering this model."""
        return Target(url, self.name, self.version, self.shape, pids, broker_pid, ports, work)


def _device_round_trips(
    url: str, served: _Served, repeats: int, client: str = DEFAULT_MQTT_CLIENT
) -> tuple[list[float], int, int, int]:
    """A ddnn device's offloaded requests, one at a time, to whatever answers section 1:
    (round trips ms minus the compute the reply reports, frame bytes, packet bytes, payload
    bytes)."""
    with create_transport(url, mqtt_client=client) as dt:
        topic = request_topic(served.name, 1, "bench0")
        times = []
        with Requester(dt, "bench0") as req:
            for _ in range(repeats):
                r = served.request(req.next_id(), "bench0")
                pending, sent = req.send(topic, r)
                answer = req.wait(r.request_id, pending, 5.0)
                if not isinstance(answer, Reply):
                    raise RuntimeError(f"offloaded request failed: {answer}")
                times.append((pending.received_at - pending.sent_at) * 1000 - answer.compute_ms)
        return times, sent.frame_bytes, sent.packet_bytes, len(r.tensors[0].payload)


def framework_rtt(
    url: str, served: _Served, repeats: int, client: str = DEFAULT_MQTT_CLIENT
) -> tuple[list[float], int, int, int]:
    """A ddnn device to a ddnn server (in this process, as the echo's two clients are), both
    on MQTT client library `client`."""
    with (
        create_transport(url, mqtt_client=client) as st,
        InferenceServer(st, served.db, ServerConfig(workers=1)),
    ):
        return _device_round_trips(url, served, repeats, client)


def floor_rtt(url: str, served: _Served, repeats: int) -> list[float]:
    """A ddnn device to the paho floor responder, which only replies: what is left of the gap
    to the echo with no ddnn server code."""
    with FloorResponder(FloorConfig(url, served.name, 1)):
        return _device_round_trips(url, served, repeats)[0]


def capacity_sweep(
    url: str,
    served: _Served,
    broker_pid: int,
    devices: list[int],
    window: int,
    seconds: float,
    servers: int,
    generators: int,
    work: Path,
    client: str = DEFAULT_MQTT_CLIENT,
) -> list[dict[str, Any]]:
    """Throughput / latency as closed-loop devices are added, against `servers` `ddnn serve
    --mqtt-client <client>` processes (as deployed: no GIL shared with the load). The load
    comes from `generators` processes in which each reply sends the next request, so that
    the generator is not the bound (one process with a thread per request in flight was:
    75 % of a core for 830 requests/s)."""
    ports = tuple(free_port() for _ in range(servers))
    procs: list[Process] = []
    try:
        for i, port in enumerate(ports):
            config = ServerConfig(workers=1, max_batch=_BATCH, queue_limit=4096, http_port=port)
            args = ["serve", served.run_dir, "--broker", url, *to_argv(config)]
            args += to_argv(ConnectionConfig(mqtt_client=client))
            procs.append(Process(f"bench-server-{client}-{i}", args, work, ready=True))
        for proc in procs:
            proc.wait_ready()
        pids = tuple(proc.proc.pid for proc in procs)
        target = served.target(url, pids, broker_pid, ports, work)
        return [closed_loop_step(target, d, window, seconds, generators) for d in devices]
    finally:
        for proc in procs:
            proc.stop()


def floor_step(
    url: str,
    served: _Served,
    broker_pid: int,
    devices: int,
    window: int,
    seconds: float,
    generators: int,
    work: Path,
) -> dict[str, Any]:
    """The capacity sweep's heaviest step against the paho floor responder instead of
    `ddnn serve`: what answering costs the MQTT client alone, under the same load."""
    port = free_port()
    floor = FloorProcess(FloorConfig(url, served.name, 1, port), work / "floor.log")
    try:
        target = served.target(url, (floor.pid,), broker_pid, (port,), work)
        return closed_loop_step(target, devices, window, seconds, generators)
    finally:
        floor.stop()


def cpu_split(
    server_per_cpu_s: float, floor_per_cpu_s: float, forward_per_cpu_s: float
) -> dict[str, float]:
    """CPU microseconds per request: the server's, split into the forward (in-process, full
    batches), the paho floor and the rest (ddnn's own code); and the ratio per CPU-second a
    server with no code of its own would reach, forward / (forward + floor)."""
    server, floor, forward = (
        1e6 / x for x in (server_per_cpu_s, floor_per_cpu_s, forward_per_cpu_s)
    )
    return {
        "server_us": server,
        "forward_us": forward,
        "mqtt_floor_us": floor,
        "ddnn_us": server - floor - forward,
        "bound_without_ddnn": forward / (forward + floor),
    }


def in_process_throughput(ex: SectionExecutor, batch: int, seconds: float) -> tuple[float, float]:
    """(samples/s, samples per CPU-second) of the same section called directly with full
    batches on one torch thread, as a `ddnn serve` process runs it: the ceiling per process."""
    shape = ex.input_shape(1)
    x = np.where(np.random.default_rng(0).standard_normal((batch, *shape)) >= 0, 1.0, -1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ex.run(1, x.astype(np.float32), None)  # warm-up
        n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            ex.run(1, x.astype(np.float32), None)
            n += batch
    finally:
        torch.set_num_threads(threads)
    return n / (time.perf_counter() - t0), n / max(time.process_time() - cpu0, 1e-9)


_RTT_ROUNDS = 5
_REFERENCE = "paho"  # the common reference echo, and the library of the top-level figures
RTT_TARGET = 1.3  # round trip / the same library's bare echo (issue 18)
_BATCH = 64  # the servers' max batch, and the ceiling's batch


def bench_runtime(
    run_dir: str,
    repeats: int = 300,
    seconds: float = 5.0,
    max_devices: int = 8,
    window: int = 16,
    servers: int = 1,
    generators: int = 2,
    *,
    clients: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Everything above for each MQTT client library in `clients` (default: all); paho's
    figures are the top-level ones, every library's are in `by_client`."""
    clients = tuple(dict.fromkeys((_REFERENCE, *(clients or mqtt_client_names()))))
    if min(repeats, max_devices, window, servers, generators) < 1 or seconds <= 0:
        raise DdnnError(
            "--repeats, --max-devices, --window, --servers and --generators must be at least 1 "
            "and --seconds above 0"
        )
    served = _Served.load(run_dir)
    fw: dict[str, list[float]] = {c: [] for c in clients}
    echo: dict[str, list[float]] = {c: [] for c in clients}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as logs:
        assert broker.pid is not None  # started by the `with`
        # interleaved blocks, so that a burst of load from elsewhere on a shared machine hits
        # both sides of each ratio alike
        floor_rt: list[float] = []
        for _ in range(_RTT_ROUNDS):
            for c in clients:
                times, frame_bytes, packet_bytes, payload = framework_rtt(
                    broker.url, served, max(repeats // _RTT_ROUNDS, 1), c
                )
                fw[c] += times
                echo[c] += ECHOES[c](broker.port, b"\x00" * frame_bytes, len(times))
            floor_rt += floor_rtt(broker.url, served, len(times))
        devices = [d for d in (1, 2, 4, 8, 16) if d <= max_devices]
        for c in clients:
            sweeps[c] = capacity_sweep(
                broker.url, served, broker.pid, devices, window, seconds, servers, generators,
                Path(logs), c,
            )  # fmt: skip
        floor = floor_step(
            broker.url, served, broker.pid, devices[-1], window, seconds, generators, Path(logs)
        )
    one, ceiling_per_cpu = in_process_throughput(
        served.db.get(served.name, served.version), _BATCH, seconds
    )
    # several server processes are held to as many single-thread forwards as the cores can run
    # side by side, counted as if they scaled perfectly
    parallel = min(servers, os.cpu_count() or 1)
    ceiling = one * parallel
    by_client = {
        c: _client_figures(fw[c], echo[c], echo[_REFERENCE], sweeps[c], ceiling, ceiling_per_cpu)
        for c in clients
    }
    sweep = sweeps[_REFERENCE]
    best = max(s["requests_per_s"] for s in sweep)
    best_per_cpu = max(s["requests_per_server_cpu_s"] for s in sweep)
    paho_fw, paho_echo = fw[_REFERENCE], echo[_REFERENCE]
    return {
        "model": served.name,
        "round_trip": {
            "framework_median_ms": statistics.median(paho_fw),
            "echo_median_ms": statistics.median(paho_echo),
            "ratio": statistics.median(paho_fw) / statistics.median(paho_echo),
            "target": RTT_TARGET,
            # ddnn's device against a responder that only replies (`ddnn.bench.floor`)
            "device_to_floor_median_ms": statistics.median(floor_rt),
            "repeats": len(paho_fw),
        },
        "bytes": {
            "payload": payload,
            "frame": frame_bytes,
            "frame_overhead": frame_bytes - payload,
            "mqtt_packet": packet_bytes,
            "mqtt_overhead": packet_bytes - payload,
            "target_overhead": 64,
        },
        "throughput": {
            "servers": servers,
            "window": window,
            "generators": generators,
            "server_best_per_s": best,
            "in_process_batched_per_s": ceiling,
            "in_process_one_thread_per_s": one,
            "in_process_processes": parallel,
            "ratio": best / ceiling,
            "target": 0.5,
            # the server's own efficiency, whatever the load generator and broker take
            "server_per_cpu_s": best_per_cpu,
            "in_process_per_cpu_s": ceiling_per_cpu,
            "per_cpu_ratio": best_per_cpu / ceiling_per_cpu,
            "sweep": sweep,
            "floor": floor,
            # at the heaviest step, which the floor ran too (server CPU summed over processes)
            "cpu_per_request": cpu_split(
                sweep[-1]["requests_per_server_cpu_s"],
                floor["requests_per_server_cpu_s"],
                ceiling_per_cpu,
            ),
        },
        "by_client": by_client,
    }


def _client_figures(
    fw: list[float],
    echo: list[float],
    paho_echo: list[float],
    sweep: list[dict[str, Any]],
    ceiling: float,
    ceiling_per_cpu: float,
) -> dict[str, float]:
    """One client library's row: its round trip against its own bare echo and paho's, and its
    server's best throughput against the in-process forward."""
    med = statistics.median
    best = max(s["requests_per_s"] for s in sweep)
    per_cpu = max(s["requests_per_server_cpu_s"] for s in sweep)
    heaviest = sweep[-1]
    return {
        "framework_median_ms": med(fw),
        "echo_median_ms": med(echo),
        "rtt_ratio": med(fw) / med(echo),
        "rtt_ratio_to_paho_echo": med(fw) / med(paho_echo),
        "server_best_per_s": best,
        "throughput_ratio": best / ceiling,
        "server_per_cpu_s": per_cpu,
        "per_cpu_ratio": per_cpu / ceiling_per_cpu,
        "server_us_per_request": 1e6 / heaviest["requests_per_server_cpu_s"],
        "p95_ms_heaviest": heaviest["p95_ms"],
    }


def bench_runtime_text(r: dict[str, Any]) -> str:
    rt, by, th = r["round_trip"], r["bytes"], r["throughput"]
    fl, cs = th["floor"], th["cpu_per_request"]
    rt_note = verdict(rt["ratio"], "<=", rt["target"])
    by_note = verdict(by["frame_overhead"], "<=", by["target_overhead"])
    lines = [
        f"model {r['model']}, one Mosquitto on loopback",
        f"round trip, offloaded request (server compute subtracted), median of {rt['repeats']}:",
        f"  bare paho echo, same payload  {rt['echo_median_ms']:.3f} ms",
        f"  ddnn device -> server         {rt['framework_median_ms']:.3f} ms",
        f"  ratio                         {rt['ratio']:.2f} {rt_note}",
        f"  ddnn device -> paho floor     {rt['device_to_floor_median_ms']:.3f} ms (a server "
        "that only replies: the rest of the gap is the ddnn server's)",
        f"bytes per offloaded request: payload {by['payload']}, ddnn frame {by['frame']} "
        f"(overhead {by['frame_overhead']} {by_note}), MQTT PUBLISH "
        f"packet {by['mqtt_packet']} (overhead {by['mqtt_overhead']})",
        f"throughput: {th['servers']} x `ddnn serve` {th['server_best_per_s']:.0f}/s vs "
        f"in-process batched forward (batch {_BATCH}, one torch thread, x "
        f"{th['in_process_processes']}) {th['in_process_batched_per_s']:.0f}/s: ratio "
        f"{th['ratio']:.2f} {verdict(th['ratio'], '>=', th['target'])}",
        f"per CPU-second: servers {th['server_per_cpu_s']:.0f} requests vs in-process "
        f"{th['in_process_per_cpu_s']:.0f} samples: ratio {th['per_cpu_ratio']:.2f}",
        f"paho floor (a bare paho responder, no ddnn code; the last row's devices and requests "
        f"in flight): {fl['requests_per_s']:.0f}/s at {fl['server_cpu_pct']:.0f} % CPU, load "
        f"generators {fl['generator_cpu_pct']:.0f} %",
        f"CPU per request at {fl['devices']} devices: server {cs['server_us']:.0f} us = forward "
        f"{cs['forward_us']:.0f} (in-process, batch {_BATCH}) + paho floor "
        f"{cs['mqtt_floor_us']:.0f} + the rest, ddnn's own {cs['ddnn_us']:.0f}; the per-CPU "
        f"ratio with no ddnn cost at all would be {cs['bound_without_ddnn']:.2f}",
        "",
        "Each MQTT client library (`--mqtt-client`; device, server and echo all on it; paho "
        "echo the common reference):",
        "",
        "| client | bare echo ms | ddnn round trip ms | / own echo | / paho echo | "
        "`ddnn serve` best/s | / in-process | per server CPU-s | / in-process per CPU-s | "
        "server us per request |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {c['echo_median_ms']:.3f} | {c['framework_median_ms']:.3f} | "
            f"{c['rtt_ratio']:.2f} {verdict(c['rtt_ratio'], '<=', RTT_TARGET)} | "
            f"{c['rtt_ratio_to_paho_echo']:.2f} | {c['server_best_per_s']:.0f} | "
            f"{c['throughput_ratio']:.2f} {verdict(c['throughput_ratio'], '>=', th['target'])} | "
            f"{c['server_per_cpu_s']:.0f} | {c['per_cpu_ratio']:.2f} | "
            f"{c['server_us_per_request']:.0f} |"
            for name, c in r["by_client"].items()
        ),
        "",
        f"Closed-loop devices ({_REFERENCE}), {th['window']} requests in flight each, from "
        f"{th['generators']} load generator process(es); CPU in % of one core "
        f"(the machine has {100 * (os.cpu_count() or 1)}):",
        "",
        "| devices | requests in flight | requests/s | p50 ms | p95 ms | p50 ms in the server "
        "(queue + compute) | mean batch | CPU % server / broker / load generators / machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['devices']} | {s['in_flight']} | {s['requests_per_s']:.0f} | {s['p50_ms']:.2f} | "
        f"{s['p95_ms']:.2f} | {s['server_p50_ms']:.2f} | {s['mean_batch']:.1f} | "
        f"{s['server_cpu_pct']:.0f} / {s['broker_cpu_pct']:.0f} / "
        f"{s['generator_cpu_pct']:.0f} / {s['machine_cpu_pct']:.0f} |"
        for s in th["sweep"]
    ]
    return "\n".join(lines)


def verdict(value: float, op: str, target: float) -> str:
    """`(target <= 1.5)`, or `MISSED (target <= 1.5)` so a missed target stands out in text."""
    met = value <= target if op == "<=" else value >= target
    return f"{'' if met else 'MISSED '}(target {op} {target})"


def capacity_figure(r: dict[str, Any]) -> Any:
    """Requests/s and p95 latency over the sweep; the legend sits below the axes, where it
    cannot cover the tick labels of either y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = r["throughput"]["sweep"]
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    d = [s["devices"] for s in sweep]
    ax.plot(d, [s["requests_per_s"] for s in sweep], "o-", label="requests/s")
    ax.set_xlabel(f"devices ({r['throughput']['window']} requests in flight each)")
    ax.set_ylabel("requests per second")
    ax2 = ax.twinx()
    ax2.plot(d, [s["p95_ms"] for s in sweep], "s--", color="tab:red", label="p95 latency")
    ax2.set_ylabel("p95 latency (ms)")
    ax.set_title(f"server capacity, {r['model']}")
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    return fig


def plot_capacity(r: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = capacity_figure(r)
    fig.savefig(path, dpi=120)
    plt.close(fig)
