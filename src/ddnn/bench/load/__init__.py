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

Modules: `generator` (a generator process: config, results, handle), `openloop` and
`closedloop` (the sending, inside a generator), `measure` (/proc and the servers' metrics),
`drive` (one step's generators and measurements), `steps` (a step's row and verdict), `grid`
(the (K, R) grid against `ddnn serve`), `text` (the table).
"""

from ddnn.bench.load.drive import Target
from ddnn.bench.load.generator import GeneratorConfig
from ddnn.bench.load.grid import bench_load, serve_argv
from ddnn.bench.load.measure import rss_mb, server_counters
from ddnn.bench.load.steps import closed_loop_step, run_step, verdict
from ddnn.bench.load.text import bench_load_text

__all__ = [
    "GeneratorConfig",
    "Target",
    "bench_load",
    "bench_load_text",
    "closed_loop_step",
    "rss_mb",
    "run_step",
    "serve_argv",
    "server_counters",
    "verdict",
]
