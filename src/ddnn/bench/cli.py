"""`ddnn bench runtime | load | fuzz | links | plan | table2 | crossover`: the round trip and
throughput of the runtime, how much load the server holds, how it takes malformed input, what
the emulated links measure, and the co-design checks on an emulated device and link (issue 13)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ddnn.runtime.config import DEVICE_IMPLS
from ddnn.runtime.transport import mqtt_client_names


def register(sub: Any) -> None:
    """No top-level commands: everything here is a benchmark."""


def cmd_bench_runtime(args: argparse.Namespace) -> int:
    from ddnn.bench.runtime import bench_runtime, bench_runtime_text, plot_capacity

    result = bench_runtime(
        args.run_dir, args.repeats, args.seconds, args.max_devices, args.window, args.servers,
        args.generators, clients=args.mqtt_clients,
    )  # fmt: skip
    if args.plot:
        plot_capacity(result, Path(args.plot))
    print(json.dumps(result) if args.json else bench_runtime_text(result))
    return 0


def cmd_bench_load(args: argparse.Namespace) -> int:
    from ddnn.bench.load import bench_load, bench_load_text

    result = bench_load(
        args.run_dir,
        devices=args.devices,
        rates=args.rate,
        seconds=args.seconds,
        deadline_ms=args.deadline_ms,
        broker=args.broker,
        generators=args.generators,
        servers=args.servers,
        workers=args.workers,
        max_batch=args.max_batch,
        queue_limit=args.queue_limit,
        keep_going=args.keep_going,
        progress=not args.json,
    )
    print(json.dumps(result) if args.json else bench_load_text(result))
    return 0


def cmd_bench_adaptive(args: argparse.Namespace) -> int:
    from ddnn.bench.adaptive.disturb import LinkSetting
    from ddnn.bench.adaptive.experiment import StreamSetup
    from ddnn.bench.adaptive.run import bench_adaptive, report_text

    setup = StreamSetup(
        budget_ms=args.budget_ms, deadline_ms=args.deadline_ms, rate=args.rate,
        phases=tuple(args.phases), engine=args.engine,
    )  # fmt: skip
    out = args.out or str(Path(args.run_dir) / f"adaptive-{args.scenario}")
    report = bench_adaptive(
        args.run_dir, out, setup, scenario=args.scenario, load=(args.load_devices, args.load_rate),
        server_cores=args.server_cores, workers=args.workers,
        links=(LinkSetting(*args.calm_link), LinkSetting(*args.slow_link)),
    )  # fmt: skip
    print(json.dumps(report) if args.json else f"{report_text(report)}\n\nreport and plot: {out}")
    return 0


def cmd_bench_fuzz(args: argparse.Namespace) -> int:
    from ddnn.bench.fuzz import bench_fuzz, bench_fuzz_text

    if args.verbose < 2:  # the server logs every bad message it answers: thousands of warnings
        logging.getLogger("ddnn.runtime").setLevel(logging.ERROR)
    result = bench_fuzz(
        args.examples, args.run_dir, args.live, args.seed, progress=not args.json,
        mqtt_client=args.mqtt_client,
    )  # fmt: skip
    print(json.dumps(result) if args.json else bench_fuzz_text(result))
    return 0 if result["ok"] else 1


def cmd_bench_plan(args: argparse.Namespace) -> int:
    from ddnn.bench.plan import bench_plan, bench_plan_text
    from ddnn.planning.choose import Budgets

    budgets = Budgets(
        max_latency_ms=args.max_latency_ms, min_accuracy=args.min_accuracy,
        max_device_ram_kb=args.max_device_ram_kb, max_bytes=args.max_bytes,
    )  # fmt: skip
    result = bench_plan(
        args.candidates, args.out, device_profile=args.device_profile, link=args.link,
        budgets=budgets, samples=args.samples, designs=args.designs, repeats=args.repeats,
        device_impl=args.device_impl,
    )  # fmt: skip
    print(json.dumps(result.to_dict()) if args.json else bench_plan_text(result))
    return 0


def cmd_bench_table2(args: argparse.Namespace) -> int:
    from ddnn.bench.table2 import bench_table2, table2_text

    result = bench_table2(
        args.runs, args.out, device_profile=args.device_profile, link=args.link,
        threshold=args.threshold, samples=args.samples,
    )  # fmt: skip
    print(json.dumps(result.to_dict()) if args.json else table2_text(result))
    return 0


def cmd_bench_crossover(args: argparse.Namespace) -> int:
    from ddnn.bench.crossover import log_rates
    from ddnn.bench.rates import bench_crossover, crossover_text, plot_crossover

    result = bench_crossover(
        args.runs, args.out, device_profile=args.device_profile, link=args.link,
        threshold=args.threshold, rates=args.rates or log_rates(0.25, 100.0, 8),
        measure_rates=args.measure, samples=args.samples, repeats=args.repeats,
    )  # fmt: skip
    if args.png:
        plot_crossover(result, args.png)
    print(json.dumps(result.to_dict()) if args.json else crossover_text(result))
    if args.png and not args.json:
        print(f"\nplot: {args.png}")
    return 0


def _add_emulation_flags(p: argparse.ArgumentParser, samples: int) -> None:
    p.add_argument("--device-profile", required=True, help="a device profile name or TOML file")
    p.add_argument("--link", required=True, help="a link profile name or TOML file")
    p.add_argument("--samples", type=int, default=samples, help="test samples per emulated run")
    p.add_argument(
        "--out", default="bench-codesign",
        help="folder for the runs' reports; a finished run of the same model, samples, threshold "
        "and profiles already in it is read back, not run again",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_repeats_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repeats", type=int, default=30,
        help="the planner's timed samples per layer (a stored profile with as many is reused)",
    )  # fmt: skip


def _register_codesign(bsub: Any) -> None:
    p = bsub.add_parser(
        "plan", help="the planner's recommendation and two other designs, run on the emulation"
    )
    p.add_argument("candidates", nargs="+", help="run folders, or a sweep .toml file")
    _add_emulation_flags(p, samples=300)
    p.add_argument("--max-latency-ms", type=float, help="budget on the mean T_total")
    p.add_argument("--min-accuracy", type=float, help="budget: a fraction, e.g. 0.88")
    p.add_argument("--max-device-ram-kb", type=float, help="budget: device static RAM (KiB)")
    p.add_argument("--max-bytes", type=float, help="budget: MQTT bytes sent upward per sample")
    p.add_argument("--designs", type=int, default=3, help="designs run: the recommended first")
    p.add_argument(
        "--device-impl", choices=DEVICE_IMPLS, default="python",
        help="what runs the device in the plan's profiles and in the runs (`ddnn run "
        "--device-impl`): python (`ddnn device`) or c (the generated C agent)",
    )  # fmt: skip
    _add_repeats_flag(p)
    p.set_defaults(handler=cmd_bench_plan)

    p = bsub.add_parser(
        "table2", help="seed 004's TABLE II: device+server vs server-only on the emulation"
    )
    p.add_argument("runs", nargs="+", help="run folders (one device each)")
    _add_emulation_flags(p, samples=200)
    p.add_argument("--threshold", type=float, default=0.4, help="every early exit's threshold")
    p.set_defaults(handler=cmd_bench_table2)

    p = bsub.add_parser("crossover", help="T_total against link rate: where the split wins")
    p.add_argument("runs", nargs="+", help="run folders (one device each)")
    _add_emulation_flags(p, samples=100)
    p.add_argument("--threshold", type=float, default=0.4, help="every early exit's threshold")
    p.add_argument(
        "--rates", type=float, nargs="+",
        help="predicted at these Mbit/s (default: 8 from 0.25 to 100, log scale)",
    )  # fmt: skip
    p.add_argument(
        "--measure",
        type=float,
        nargs="*",
        default=[],
        help="also run the emulation at these Mbit/s",
    )
    p.add_argument("--png", help="write the plot here")
    _add_repeats_flag(p)
    p.set_defaults(handler=cmd_bench_crossover)


def cmd_bench_links(args: argparse.Namespace) -> int:
    from ddnn.bench.links import bench_links, bench_links_text

    result = bench_links(args.link or None, args.count)
    print(json.dumps(result) if args.json else bench_links_text(result))
    return 0


def register_bench(bsub: Any) -> None:
    _register_codesign(bsub)
    p = bsub.add_parser(
        "links", help="calibration and the MQTT round trip through each emulated link (root)"
    )
    p.add_argument("--link", action="append", help="a link profile or file (repeat; default: all)")
    p.add_argument("--count", type=int, default=40, help="round trips per link")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench_links)

    p = bsub.add_parser(
        "runtime", help="round trip vs bare echo, bytes, server throughput, per MQTT client"
    )
    p.add_argument("run_dir", help="a trained model folder (a device section with bits)")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput point")
    p.add_argument("--max-devices", type=int, default=8, help="sweep 1, 2, 4, ... up to it")
    p.add_argument("--window", type=int, default=16, help="requests each device keeps in flight")
    p.add_argument("--servers", type=int, default=1, help="`ddnn serve` processes sharing the load")
    p.add_argument("--generators", type=int, default=2, help="load generator processes")
    p.add_argument(
        "--mqtt-clients", type=lambda text: tuple(text.split(",")),
        help=f"comma-separated MQTT client libraries to compare (default: all, "
        f"{','.join(mqtt_client_names())}; paho always runs, as the reference)",
    )  # fmt: skip
    p.add_argument("--plot", help="PNG of throughput and p95 against devices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench_runtime)

    p = bsub.add_parser("load", help="open-loop load: K devices x R requests/s against ddnn serve")
    p.add_argument("run_dir", help="a trained model folder (single device, bits features)")
    p.add_argument("--devices", type=int, nargs="+", default=[4, 8, 16], help="K values")
    p.add_argument(
        "--rate", type=float, nargs="+", default=[25.0, 50.0, 100.0],
        help="R values: requests/s per device",
    )  # fmt: skip
    p.add_argument("--seconds", type=float, default=10.0, help="sending time per step")
    p.add_argument("--deadline-ms", type=float, default=2000.0, help="after it: lost")
    p.add_argument("--broker", help="mqtt://host:port of a running broker (default: start one)")
    p.add_argument(
        "--generators", type=int, default=1,
        help="load-generator processes the devices are split among",
    )  # fmt: skip
    p.add_argument(
        "--servers", type=int, default=1,
        help="ddnn serve processes sharing the requests (one shared-subscription group)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="ddnn serve --workers")
    p.add_argument("--max-batch", type=int, default=32, help="ddnn serve --max-batch")
    p.add_argument("--queue-limit", type=int, default=1024, help="ddnn serve --queue-limit")
    p.add_argument(
        "--keep-going", action="store_true",
        help="run every step (default: skip steps heavier than one that failed)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_bench_load)

    p = bsub.add_parser(
        "adaptive", help="fixed threshold vs --latency-budget-ms while the link or server degrades"
    )
    p.add_argument("run_dir", help="a trained one-device model folder")
    p.add_argument(
        "--scenario",
        choices=("server", "link"),
        default="server",
        help="server: extra load mid-run; link: the emulated link slowed mid-run",
    )
    p.add_argument("--budget-ms", type=float, default=50.0, help="the adaptive run's budget")
    p.add_argument("--deadline-ms", type=float, default=100.0, help="the device's deadline")
    p.add_argument("--rate", type=float, default=100.0, help="samples/s the device streams")
    p.add_argument(
        "--phases",
        type=int,
        nargs=3,
        default=[2000, 3000, 3000],
        metavar=("CALM", "DISTURBED", "CALM_AGAIN"),
        help="samples in each phase",
    )
    p.add_argument("--engine", default="torch", help="the device's engine: torch, onnx or c")
    p.add_argument("--load-devices", type=int, default=8, help="server: extra devices")
    p.add_argument("--load-rate", type=float, default=50.0, help="server: requests/s each")
    p.add_argument("--server-cores", type=float, help="the server's CPU quota (cores)")
    p.add_argument("--workers", type=int, default=2, help="ddnn serve --workers")
    p.add_argument(
        "--calm-link",
        type=float,
        nargs=2,
        default=[100.0, 0.15],
        metavar=("MBIT", "DELAY_MS"),
        help="link: rate and one-way delay when calm",
    )
    p.add_argument(
        "--slow-link",
        type=float,
        nargs=2,
        default=[0.5, 25.0],
        metavar=("MBIT", "DELAY_MS"),
        help="link: rate and one-way delay when slow",
    )
    p.add_argument("--out", help="report folder (default RUN_DIR/adaptive-SCENARIO)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_bench_adaptive)

    p = bsub.add_parser("fuzz", help="fuzz the frame decoder and a live server (needs hypothesis)")
    p.add_argument(
        "run_dir", nargs="?",
        help="a trained model folder for the live part (a real server on memory://); "
        "without it only the decoder is fuzzed",
    )  # fmt: skip
    p.add_argument("--examples", type=int, default=10000, help="inputs per decoder property")
    p.add_argument("--live", type=int, help="messages sent to the live server (default: examples)")
    p.add_argument("--seed", type=int, help="hypothesis seed, to repeat a run")
    p.add_argument(
        "--mqtt-client", choices=mqtt_client_names(),
        help="run the live part on a Mosquitto of its own through this MQTT client library "
        "(default: an in-memory hub)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_bench_fuzz)
