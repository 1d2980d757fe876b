"""`ddnn agent` (run the C agent as a device, in place of `ddnn device`), `ddnn export --agent`
(write it) and `ddnn bench agent`; cli.py picks these up through its AREAS list."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ddnn.errors import DdnnError
from ddnn.runtime.config import DeviceConfig, StreamConfig, add_flags, from_args


def register(sub: Any) -> None:
    from ddnn.runtime.cli import _add_broker_option

    p = sub.add_parser(
        "agent",
        help="an end device run by the generated C agent (libmosquitto): `ddnn device`'s flags",
    )
    p.add_argument("run_dir")
    add_flags(p, DeviceConfig, "device_id", "index")
    _add_broker_option(p)
    add_flags(p, DeviceConfig, "engine", "mode", "deadline_ms", "thresholds", "latency_budget_ms")
    p.add_argument("--images", nargs="*", help="image files instead of the test split")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    add_flags(p, StreamConfig)
    p.add_argument("--build-dir", help="where the agent is built (default RUN_DIR/export/agent-N)")
    p.add_argument("--cc", default="cc", help="C compiler")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument("--start-file", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_agent)

    export = sub.choices["export"]  # `ddnn export --agent`: export/ cannot import this package
    export.add_argument(
        "--agent", action="store_true",
        help="with --target c: also the C device agent (MQTT over libmosquitto, docs/agent.md)",
    )  # fmt: skip
    export.set_defaults(handler=_export_with_agent(export.get_default("handler")))


def register_bench(bsub: Any) -> None:
    p = bsub.add_parser(
        "agent", help="CPU per offloaded sample: the C agent against the Python device"
    )
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=300, help="offloaded samples per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench_agent)


def cmd_bench_agent(args: argparse.Namespace) -> int:
    import json

    from ddnn.agent.bench import bench_agent, bench_text

    if args.samples < 10 or args.repeats < 1:
        raise DdnnError("--samples must be >= 10 and --repeats >= 1")
    result = bench_agent(args.run_dir, args.samples, args.repeats)
    print(json.dumps(result, indent=2) if args.json else bench_text(result))
    return 0


def _export_with_agent(export_handler: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        if not args.agent:
            return export_handler(args)
        if args.target != "c":
            raise DdnnError("--agent needs --target c")
        code = export_handler(args) if args.verify else 0
        from ddnn.agent.generate import write_agent

        out = write_agent(args.run_dir, args.out, args.device)
        print(f"C agent for device {args.device} in {out}; build with: make -C {out} agent")
        return code

    return handler


def cmd_agent(args: argparse.Namespace) -> int:
    """Build (or reuse) the agent, hand it this device's inputs on stdin, and exec it: the
    process becomes the agent, so whoever started it (ddnn run, a test) manages the agent."""
    from ddnn.agent.build import ensure_agent
    from ddnn.export.fileformat import write_inputs
    from ddnn.runtime.cli import _device_inputs
    from ddnn.runtime.executor import exit_thresholds
    from ddnn.store.artifact import open_model

    config = from_args(DeviceConfig, args)
    feed = from_args(StreamConfig, args)
    if config.latency_budget_ms is not None:
        raise DdnnError(
            "--latency-budget-ms: the C agent keeps a fixed threshold; use `ddnn device` to adapt"
        )
    if not (args.broker or args.auth):
        raise DdnnError("the C agent needs a broker: give --broker mqtt://host:port or --auth FILE")
    spec = open_model(args.run_dir).spec
    folder = args.build_dir or Path(args.run_dir) / "export" / f"agent-{config.index}"
    binary = ensure_agent(args.run_dir, config.index, folder, args.cc)
    inputs = list(_device_inputs(args, spec))
    if not inputs:
        raise DdnnError("no samples to send (check --samples, --offset, --stride)")
    import numpy as np

    argv = [str(binary), "--mode", config.mode, "--deadline-ms", str(config.deadline_ms)]
    argv += ["--broker", args.broker] if args.broker else []
    argv += ["--auth", args.auth] if args.auth else []
    argv += ["--id", args.id] if args.id else []
    argv += ["--rate", str(feed.rate)]
    argv += ["--records", feed.records] if feed.records else []
    if config.thresholds is not None:
        local = spec.exit_sections[0].name
        threshold = exit_thresholds(spec, config.thresholds).get(local)
        argv += ["--threshold", repr(threshold)] if threshold is not None else []
    for flag in ("ready_file", "start_file"):
        value = getattr(args, flag)
        argv += [f"--{flag.replace('_', '-')}", value] if value else []
    with tempfile.TemporaryDirectory() as tmp:  # unlinked once open: the agent holds the fds
        views = np.stack([view for _, view, _ in inputs])
        samples = open(write_inputs(Path(tmp) / "inputs.bin", views), "rb")  # noqa: SIM115
        frames = open(Path(tmp) / "frames.txt", "w+")  # noqa: SIM115
        frames.write("".join(f"{f} {label}\n" for f, _, label in inputs))
        frames.seek(0)
    os.dup2(samples.fileno(), 0)
    os.dup2(frames.fileno(), 3)
    os.set_inheritable(3, True)
    argv += ["--inputs", "-", "--frames", "/dev/fd/3"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 1  # not reached
