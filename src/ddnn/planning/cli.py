"""`ddnn profile` and `ddnn plan`. Imported for every command: heavy imports stay inside the
handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ddnn.runtime.config import DEVICE_IMPLS  # loaded for every command (runtime/cli.py)

PROFILE_HELP = "a device profile name (ddnn profile --help lists them) or a TOML file"
IMPL_HELP = (
    "what runs the device section, as `ddnn run --device-impl`: python (its torch layers, "
    "default) or c (its generated C, timed in the export's harness; needs a C compiler and a "
    "section that lowers to C); each has its own stored profile"
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "profile", help="measure a run on an emulated device and link: layer times, bytes, exits"
    )
    p.add_argument("run_dir")
    _add_profile_flags(p)
    p.add_argument("--limit", type=int, help="validation samples for the exit rates (default all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_profile)

    q = sub.add_parser(
        "plan", help="predict candidates on a device and link and recommend one under budgets"
    )
    q.add_argument("candidates", nargs="+", help="run folders, or a sweep .toml file")
    _add_profile_flags(q)
    q.add_argument("--max-latency-ms", type=float, help="budget on T_total (see --latency)")
    q.add_argument("--latency", choices=("mean", "p95"), default="mean",
                   help="which T_total the latency budget limits")  # fmt: skip
    q.add_argument("--min-accuracy", type=float, help="budget: a fraction, e.g. 0.88")
    q.add_argument("--max-device-ram-kb", type=float, help="budget: device static RAM (KiB)")
    q.add_argument("--max-bytes", type=float, help="budget: MQTT bytes sent upward per sample")
    q.add_argument("--png", help="write the accuracy-latency plot here")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(handler=cmd_plan)


def _add_profile_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-profile", required=True, help=PROFILE_HELP)
    p.add_argument("--link", required=True, help="a link profile name or a TOML file")
    p.add_argument("--repeats", type=int, default=200, help="timed samples per layer")
    p.add_argument("--device-impl", choices=DEVICE_IMPLS, default="python", help=IMPL_HELP)
    p.add_argument("--remeasure", action="store_true", help="ignore a stored profile")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure the host's speed again (else the cached one, if under a day "
                   "old, that `ddnn run --device-profile` also uses)")  # fmt: skip


def _profiles(args: argparse.Namespace) -> tuple[Any, Any]:
    from ddnn.emulation.profiles import load_device_profile, load_link_profile

    return load_device_profile(args.device_profile), load_link_profile(args.link)


def cmd_profile(args: argparse.Namespace) -> int:
    from ddnn.planning.profile import profile_run
    from ddnn.planning.report import profile_text

    device, link = _profiles(args)
    profile = profile_run(
        args.run_dir, device, link, repeats=args.repeats, remeasure=args.remeasure,
        recalibrate=args.recalibrate, limit=args.limit, device_impl=args.device_impl,
    )  # fmt: skip
    print(json.dumps(profile.to_dict()) if args.json else profile_text(profile, link))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ddnn.planning.choose import Budgets
    from ddnn.planning.plan import candidate_runs, make_plan, plan_text, plot_plan

    budgets = Budgets(
        max_latency_ms=args.max_latency_ms, min_accuracy=args.min_accuracy,
        max_device_ram_kb=args.max_device_ram_kb, max_bytes=args.max_bytes,
        latency=args.latency,
    )  # fmt: skip
    device, link = _profiles(args)  # before training: a wrong name fails at once
    runs = candidate_runs(args.candidates, progress=not args.json)
    plan = make_plan(
        runs, device, link, budgets, repeats=args.repeats, remeasure=args.remeasure,
        recalibrate=args.recalibrate, device_impl=args.device_impl,
    )  # fmt: skip
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        plot_plan(plan, args.png)
    if args.json:
        print(json.dumps(plan.to_dict() | {"png": args.png}))
    else:
        print(plan_text(plan))
        if args.png:
            print(f"\nplot: {args.png}")
    return 0
