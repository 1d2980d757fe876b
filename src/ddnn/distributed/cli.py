"""CLI glue for distributed training: `ddnn cluster`, `ddnn dist-report`, `ddnn bench
distributed`, and the `--nproc` / `--strategy` options of `ddnn train` (wired in by cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ddnn import logs
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)


# ---- ddnn train --nproc N --strategy ... -------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The distributed options of `ddnn train`."""
    g = p.add_argument_group("distributed (see docs/distributed.md)")
    g.add_argument("--nproc", type=int, help="train with N local worker processes (gloo)")
    g.add_argument("--strategy", choices=("allreduce", "ps"), help="default: allreduce (DDP)")
    g.add_argument("--ps-mode", choices=("sync", "async"), help="parameter server: default sync")
    g.add_argument("--compress", choices=("none", "fp16"), help="all-reduce gradient compression")
    g.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"),
                   help="sync: lr x workers (linear) or x sqrt(workers); default none")  # fmt: skip
    g.add_argument("--warmup-epochs", type=float,
                   help="lr rises from the base to the scaled lr over these epochs")  # fmt: skip
    g.add_argument("--timeout", type=float, help="seconds before a dead node fails the run")
    g.add_argument("--max-restarts", type=int, help="elastic restarts (resume from checkpoint)")


def is_distributed(args: argparse.Namespace) -> bool:
    """True for `--nproc`, or when running as a rank of torchrun / `ddnn cluster`."""
    from ddnn.distributed.launch import in_distributed_env

    return getattr(args, "nproc", None) is not None or in_distributed_env()


def dist_config(args: argparse.Namespace) -> Any:
    """DistConfig from the config file's [distributed] table, then command-line options."""
    from dataclasses import replace

    from ddnn.config import from_dict
    from ddnn.distributed.config import DistConfig
    from ddnn.model.presets import load_config_dict

    cfg = DistConfig()
    if getattr(args, "config", None):
        cfg = from_dict(DistConfig, load_config_dict(args.config).get("distributed", {}), "dist")
    options = (
        "strategy", "ps_mode", "compress", "lr_scaling", "warmup_epochs", "timeout",
        "max_restarts",
    )  # fmt: skip
    cfg = replace(cfg, **{k: getattr(args, k) for k in options if getattr(args, k, None)})
    cfg.validate()
    return cfg


def train_distributed(args: argparse.Namespace, experiment: Any, run_dir: Path) -> dict | None:
    """Train as `ddnn train` would, distributed. Returns the test report on rank 0 (or from the
    local launcher), None on the other ranks (which should print nothing)."""
    from ddnn.distributed.launch import in_distributed_env, launch_local
    from ddnn.distributed.trainer import restarted, run_rank
    from ddnn.train.trainer import prepare_run_dir

    cfg = dist_config(args)
    init_from, resume = getattr(args, "init_from", None), bool(getattr(args, "resume", None))
    if not resume and os.environ.get("RANK", "0") == "0" and not restarted():
        prepare_run_dir(run_dir, getattr(args, "overwrite", False))  # rank 0 owns the folder
    if in_distributed_env():
        if args.nproc is not None:
            log.warning("--nproc ignored: this process is already one rank of a distributed run")
        return run_rank(experiment, run_dir, cfg, init_from, resume)
    return launch_local(experiment, run_dir, cfg, args.nproc, init_from, resume)


# ---- ddnn cluster -------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="run a command on an emulated device cluster (namespaces, tc, cgroups; root)",
        description="One process per emulated node, each in its own network namespace with a "
        "rate-limited link and a CPU quota. Example: ddnn cluster --nodes 4 --bandwidth 100mbit "
        "-- ddnn train lenet5 --strategy ps",
    )
    p.add_argument("--nodes", type=int, required=True, help="training workers (ps adds a server)")
    p.add_argument("--bandwidth", default="100mbit", help="per-node link rate, e.g. 100mbit")
    p.add_argument("--delay", help="one-way link delay, e.g. 1ms (needs netem in the kernel)")
    p.add_argument("--cpu", type=float, help="CPU cores per node, e.g. 0.4")
    p.add_argument("--slow-node", action="append", default=[], metavar="K:CORES",
                   help="node K gets CORES instead of --cpu (repeatable)")  # fmt: skip
    p.add_argument("--logs", default="cluster-logs", help="folder for nodes 1.. output")
    p.add_argument("--grace", type=float, default=30.0, help="seconds after a failure to stop")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command every node runs")
    p.set_defaults(handler=cmd_cluster)
    r = sub.add_parser("dist-report", help="table and PNG over distributed run folders")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--plot", help="PNG path")
    r.add_argument("--title", default="data-parallel LeNet-5")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=cmd_dist_report)


def _slow_nodes(items: list[str]) -> dict[int, float]:
    out = {}
    for item in items:
        try:
            node, cores = item.split(":")
            out[int(node)] = float(cores)
        except ValueError:
            raise DdnnError(f"--slow-node {item!r}: write NODE:CORES, e.g. 2:0.1") from None
    return out


def _strategy_of(command: list[str]) -> str | None:
    """The --strategy a wrapped `ddnn train` command asks for (ps needs one node more)."""
    for i, token in enumerate(command):
        if token == "--strategy" and i + 1 < len(command):
            return command[i + 1]
        if token.startswith("--strategy="):
            return token.split("=", 1)[1]
    return None


def cmd_cluster(args: argparse.Namespace) -> int:
    from ddnn.distributed.cluster import EmulatedCluster, run_on_cluster
    from ddnn.distributed.config import parse_rate, parse_seconds

    logs.show_progress("ddnn.distributed.cluster")  # set-up and start take about a minute

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise DdnnError("give the command after --, e.g. ddnn cluster --nodes 2 -- ddnn train ...")
    ps = _strategy_of(command) == "ps"
    nodes = args.nodes + 1 if ps else args.nodes  # node 0 = the parameter server
    if ps:
        print(f"--strategy ps: node 0 is the parameter server, nodes 1..{args.nodes} are workers")
    cluster = EmulatedCluster(
        nodes, parse_rate(args.bandwidth), parse_seconds(args.delay) if args.delay else 0.0,
        args.cpu, _slow_nodes(args.slow_node),
    )  # fmt: skip
    with cluster:
        for note in cluster.notes:
            print(f"cluster: {note}")
        codes = run_on_cluster(cluster, command, Path(args.logs), args.grace)
    for i, code in enumerate(codes):
        if code != 0:
            where = "above" if i == 0 else str(Path(args.logs) / f"node{i}.log")
            print(f"node {i} exited with code {code} (output: {where})", file=sys.stderr)
    return next((c for c in codes if c != 0), 0)


def cmd_dist_report(args: argparse.Namespace) -> int:
    from ddnn.distributed.report import COLUMNS, plot_summaries, summarize, summary_row
    from ddnn.tables import markdown_table

    rows = [summarize(d) for d in args.run_dirs]
    if args.plot:
        plot_summaries(rows, args.plot, args.title)
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown_table(COLUMNS, [summary_row(r) for r in rows]))
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


# ---- ddnn bench distributed ---------------------------------------------------------------------


def register_bench(bsub: Any) -> None:
    b = bsub.add_parser(
        "distributed", help="communication per step vs the bandwidth bound (emulated cluster)"
    )
    b.add_argument("--nodes", type=int, nargs="+", default=[2, 4], help="worker counts")
    b.add_argument("--strategy", choices=("allreduce", "ps", "both"), default="both")
    b.add_argument("--ps-mode", choices=("sync", "async"), default="sync")
    b.add_argument("--compress", choices=("none", "fp16"), default="none")
    b.add_argument("--bandwidth", default="100mbit")
    b.add_argument("--cpu", type=float, help="CPU cores per node")
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--preset", default="lenet5")
    b.add_argument("--json", action="store_true")
    b.set_defaults(handler=cmd_bench_distributed)


def cmd_bench_distributed(args: argparse.Namespace) -> int:
    from ddnn.distributed.bench import COLUMNS, bench_distributed, bench_row
    from ddnn.distributed.config import parse_rate
    from ddnn.tables import markdown_table

    strategies = ["allreduce", "ps"] if args.strategy == "both" else [args.strategy]
    rows = bench_distributed(
        args.nodes, strategies, parse_rate(args.bandwidth), args.cpu, args.steps,
        args.ps_mode, args.compress, args.preset,
    )  # fmt: skip
    if args.json:
        print(json.dumps(rows))
        return 0
    print(markdown_table(COLUMNS, [bench_row(r) for r in rows]))
    for note in sorted({n for r in rows for n in r["notes"]}):
        print(f"cluster: {note}")
    print("ratio = measured / bound (target: within 1.5x); bounds in docs/distributed.md")
    return 0
