"""`ddnn broker | serve | edge | device | run`: the runtime tiers as commands."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddnn.errors import DdnnError
from ddnn.runtime.config import (
    ConnectionConfig,
    DeploymentConfig,
    DeviceConfig,
    EdgeConfig,
    ServerConfig,
    StreamConfig,
    add_flags,
    from_args,
)
from ddnn.runtime.protocol import (
    EDGE_IDENTITY,
    OPERATOR_IDENTITY,
    SERVER_IDENTITY,
    default_device_ids,
)

if TYPE_CHECKING:
    from ddnn.runtime.security import BrokerAccess
    from ddnn.runtime.transport import Transport


def _access(args: argparse.Namespace) -> BrokerAccess | None:
    """The access file named by --auth, read once per command."""
    from ddnn.runtime.security import BrokerAccess

    return BrokerAccess.load(args.auth) if args.auth else None


@contextmanager
def _connect(
    args: argparse.Namespace, access: BrokerAccess | None
) -> Iterator[tuple[str, Transport]]:
    """A transport to the broker named by the access file or --broker, or to one started for
    this command's lifetime."""
    from ddnn.runtime.broker import broker_or_own
    from ddnn.runtime.transport import create_transport

    client = from_args(ConnectionConfig, args).mqtt_client
    if access is not None:
        url = args.broker or access.url
        with create_transport(url, mqtt_client=client, **access.transport_kwargs()) as transport:
            yield url, transport
        return
    with broker_or_own(args.broker) as url:
        if url != args.broker:
            print(f"started Mosquitto for this command at {url}", flush=True)
        with create_transport(url, mqtt_client=client) as transport:
            yield url, transport


def _identity(args: argparse.Namespace, access: BrokerAccess | None, default: str) -> str:
    """`--id`, else the access file's username, else `default`; on a secure broker the two
    must agree, or every publish would be refused by the ACL."""
    user = access.username if access is not None else None
    if args.id and user and args.id != user:
        raise DdnnError(
            f"--id {args.id} differs from the access file's identity {user!r}; the broker only "
            f"lets {user} publish as {user} (drop --id, or use {args.id}'s access file)"
        )
    return args.id or user or default


def _wait_for_signal(ready_file: str | None) -> None:
    """Block until SIGINT or SIGTERM; announce readiness first."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if ready_file:
        Path(ready_file).write_text("ready\n")
    while not stop.wait(0.5):
        pass


def _one_thread_per_worker() -> None:
    """Tier processes get their parallelism from processes and worker threads; torch's own
    intra-op threads on top of that oversubscribe a small machine (seen here: with other jobs on
    the 2 cores, a LeNet-5 epoch took 14 s with 1 torch thread and 100-250 s with 2)."""
    import torch

    torch.set_num_threads(1)


def _add_broker_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="mqtt[s]://host:port of a running broker (default: start one)")
    p.add_argument(
        "--auth", metavar="FILE",
        help="access file (URL, identity, password, CA) from `ddnn broker --secure`",
    )  # fmt: skip
    add_flags(p, ConnectionConfig)


def cmd_broker(args: argparse.Namespace) -> int:
    import shutil
    from contextlib import ExitStack

    from ddnn.runtime.broker import DEFAULT_TLS_PORT, MosquittoBroker

    setup = None
    created = None  # a folder made by this command, removed if the broker does not start
    if args.secure:
        from ddnn.runtime.security import provision

        devices = _device_ids(args.devices)
        created = None if Path(args.secure).exists() else Path(args.secure).resolve()
        setup = provision(
            args.secure, devices, args.servers.split(","), args.edges.split(","),
            operators=args.operators.split(","), tls=not args.no_tls,
            hostnames=[args.host, *filter(None, [args.public_host])],
            cert_file=args.cert, key_file=args.key, ca_file=args.ca,
        )  # fmt: skip
    elif args.cert or args.key or args.ca or args.no_tls:
        raise DdnnError("--cert, --key, --ca and --no-tls only apply with --secure DIR")
    elif not args.host.startswith("127."):
        print(
            f"warning: anyone who can reach {args.host} may connect, read and publish: "
            "there are no passwords, ACL or TLS without --secure DIR",
            file=sys.stderr,
        )
    port = args.port or (DEFAULT_TLS_PORT if setup is not None and setup.tls else None)
    with ExitStack() as stack:
        try:
            broker = stack.enter_context(
                MosquittoBroker(
                    port=port, security=setup, host=args.host, public_host=args.public_host
                )
            )
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        print(f"Mosquitto listening at {broker.url} (Ctrl-C stops it)", flush=True)
        if setup is not None:
            print(
                f"passwords, ACL and TLS in {setup.folder}; give each process its own access "
                f"file: --auth {setup.folder / 'access'}/<identity>.json "
                f"({', '.join(sorted(setup.identities))})",
                flush=True,
            )
        _wait_for_signal(args.ready_file)
    return 0


def _device_ids(text: str) -> list[str]:
    """`4` -> dev0..dev3; `cam1,cam2` -> those names."""
    if text.isdigit():
        return default_device_ids(int(text))
    return [d for d in text.split(",") if d]


def cmd_serve(args: argparse.Namespace) -> int:
    _one_thread_per_worker()
    from ddnn.runtime.control import RolloutControl
    from ddnn.runtime.metrics import MetricsServer
    from ddnn.runtime.server import InferenceServer
    from ddnn.runtime.versions import LiveModels

    access = _access(args)
    # on a secure broker the servers' shared-subscription group is the access file's secret one
    group = {"group": access.share_group} if access is not None and access.share_group else {}
    config = from_args(ServerConfig, args, **group)
    db = LiveModels(args.run_dirs, grace_s=config.unload_after_s)
    identity = access.username if access is not None and access.username else SERVER_IDENTITY
    with (
        _connect(args, access) as (url, transport),
        InferenceServer(transport, db, config) as server,
        RolloutControl(
            transport, db, metrics=server.metrics, group=config.group, identity=identity
        ),
        MetricsServer(server.metrics, server.healthy, port=config.http_port) as http,
    ):
        models = ", ".join(f"{n} v{v}" for n, v in sorted(db.models))
        print(
            f"serving {models} on {url} with {config.workers} workers; "
            f"metrics http://127.0.0.1:{http.port}/metrics",
            flush=True,
        )
        _wait_for_signal(args.ready_file)
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    _one_thread_per_worker()
    from ddnn.runtime.edge import EdgeAggregator

    access = _access(args)
    config = from_args(EdgeConfig, args)
    config = replace(config, identity=_identity(args, access, config.identity))
    with (
        _connect(args, access) as (url, transport),
        EdgeAggregator(transport, args.run_dir, config) as edge,
    ):
        print(f"edge for {edge.model_name} v{edge.version} on {url}: devices {edge.device_ids}")
        _wait_for_signal(args.ready_file)
    return 0


def _device_inputs(args: argparse.Namespace, spec: Any) -> Iterator[tuple[int, Any, int]]:
    """(frame id, this device's view [C, h, w], label) from image files or the test split.

    A test sample whose view for this device is missing (multi-view data) is not sent: the
    device is absent for it, as a camera that saw nothing would be."""
    import torch

    from ddnn.model.views import device_view

    if args.images:
        for i, path in enumerate(args.images):
            x = torch.from_numpy(_read_image(path, spec)).float().div_(255.0)[None]  # [1, C, H, W]
            view = x if spec.views.kind == "channels" else device_view(x, spec, args.index)
            yield i, view[0].numpy(), -1
        return
    from ddnn.store.artifact import open_model

    source = open_model(args.run_dir).data_source(args.dataset, args.data_dir)
    test = source.load(val_fraction=0.0).test.head(args.samples)
    for i in range(args.offset, len(test), args.stride):
        if test.present is not None and not bool(test.present[i, args.index]):
            continue
        x = test.images[i : i + 1].float().div(255)  # [1, C, H, W]
        yield i, device_view(x, spec, args.index)[0].numpy(), int(test.labels[i])


def _read_image(path: str, spec: Any) -> Any:
    """[C, H, W] uint8 of a PNG or JPEG file, in the model's channels (grey or RGB); the size
    must be what the model takes (for multi-view data: one camera's view)."""
    from ddnn.data.images import read_image

    c, h, w = spec.view_shape if spec.views.kind == "channels" else spec.input_shape
    pixels = read_image(path, channels=c)
    if pixels.shape[1:] != (h, w):
        got = "x".join(map(str, pixels.shape[1:]))
        raise DdnnError(f"{path}: image is {got}, the model takes {h}x{w}")
    return pixels


def _start_together(ready_file: str | None, start_file: str | None, timeout: float = 300.0) -> None:
    """Say this device is connected and loaded, then wait for the go: devices that fuse their
    views must start streaming together, not one process start-up apart."""
    if ready_file:
        Path(ready_file).write_text("ready\n")
    if not start_file:
        return
    deadline = time.monotonic() + timeout
    while not Path(start_file).exists():
        if time.monotonic() > deadline:
            raise DdnnError(f"no start signal ({start_file}) within {timeout:.0f} s")
        time.sleep(0.01)


def cmd_device(args: argparse.Namespace) -> int:
    _one_thread_per_worker()
    from ddnn.runtime.device import DeviceClient
    from ddnn.runtime.report import summarize
    from ddnn.store.artifact import open_model

    spec = open_model(args.run_dir).spec
    access = _access(args)
    config = from_args(DeviceConfig, args)
    config = replace(config, device_id=_identity(args, access, config.device_id))
    feed = from_args(StreamConfig, args)
    device_id = config.device_id
    records = []
    misses = 0
    with (
        Path(feed.records).open("w") if feed.records else nullcontext() as out,
        _connect(args, access) as (_, transport),
    ):
        try:
            with DeviceClient(transport, args.run_dir, config) as client:
                inputs = list(_device_inputs(args, spec))
                _start_together(args.ready_file, args.start_file)
                start = time.perf_counter()
                for n, (frame_id, view, label) in enumerate(inputs):
                    if feed.rate > 0:  # paced: sample n leaves at start + n / rate
                        time.sleep(max(0.0, start + n / feed.rate - time.perf_counter()))
                    rec = client.infer(view, frame_id, label).to_dict()
                    records.append(rec)
                    if out is not None:
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                    elif args.images:
                        print(json.dumps(rec), flush=True)
                misses = client.deadline_misses
        finally:
            for stat, what in (
                ("publishes_unrouted", "reached no subscriber: no server or edge serves this "
                 "model on that broker (start `ddnn serve` with it)"),
                ("publishes_refused", "were refused by the broker: this identity may not "
                 "publish there (the device id must match the access file's username)"),
            ):  # fmt: skip
                if transport.stats.get(stat, 0):
                    count = transport.stats[stat]
                    print(f"{count} request(s) from {device_id} {what}", file=sys.stderr)
    if not args.images and not feed.records:
        summary = {**summarize(records), "deadline_misses": misses, "mqtt": transport.stats}
        print(json.dumps(summary, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ddnn.runtime.report import report_markdown
    from ddnn.runtime.runner import run_deployment

    out = args.out or str(Path(args.run_dir) / "deployment")
    report = run_deployment(args.run_dir, out, from_args(DeploymentConfig, args))
    if args.json:
        print(json.dumps(report))
    else:
        runs = "the C agent" if report["device_impl"] == "c" else f"engine {report['engine']}"
        print(f"{report['model']} v{report['version']}, {report['devices']} device(s), "
              f"{runs}:\n")  # fmt: skip
        print(report_markdown(report))
        print(f"\nreport, records and plot: {out}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("broker", help="run Mosquitto with ddnn's settings (loopback by default)")
    p.add_argument("--port", type=int, help="default: 8883 with TLS, else a free port")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument(
        "--public-host", help="with --secure: the name clients reach the broker by (access files, "
        "certificate); default: --host, or 127.0.0.1 for 0.0.0.0",
    )  # fmt: skip
    p.add_argument(
        "--secure", metavar="DIR",
        help="passwords, ACL and TLS: generated in DIR (kept across restarts), access files in "
        "DIR/access/<identity>.json",
    )  # fmt: skip
    p.add_argument("--devices", default="4", help="with --secure: a count, or comma-separated ids")
    p.add_argument("--servers", default=SERVER_IDENTITY, help="with --secure: server identities")
    p.add_argument("--edges", default=EDGE_IDENTITY, help="with --secure: edge identities")
    p.add_argument(
        "--operators", default=OPERATOR_IDENTITY,
        help="with --secure: identities that may deploy and roll back (ddnn deploy)",
    )  # fmt: skip
    p.add_argument("--no-tls", action="store_true", help="with --secure: passwords and ACL only")
    p.add_argument("--cert", help="with --secure: your broker certificate (PEM) instead of ours")
    p.add_argument("--key", help="with --secure: its private key")
    p.add_argument("--ca", help="with --secure: the CA that signed it (given to clients)")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_broker)

    p = sub.add_parser("serve", help="the server tier: answer offloaded requests")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more model folders")
    _add_broker_option(p)
    add_flags(p, ServerConfig)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("edge", help="the edge tier: fuse devices, local and edge exits")
    p.add_argument("run_dir")
    _add_broker_option(p)
    add_flags(p, EdgeConfig)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_edge)

    p = sub.add_parser("device", help="an end device: local exit, offload when unsure")
    p.add_argument("run_dir")
    add_flags(p, DeviceConfig, "device_id", "index")
    _add_broker_option(p)
    add_flags(
        p,
        DeviceConfig,
        "engine",
        "mode",
        "deadline_ms",
        "thresholds",
        "latency_budget_ms",
        "follow",
    )
    p.add_argument("--images", nargs="*", help="image files instead of the test split")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    add_flags(p, StreamConfig)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument("--start-file", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_device)

    p = sub.add_parser("run", help="broker + server + edge + N devices on this machine, report")
    p.add_argument("run_dir")
    add_flags(p, DeploymentConfig)
    p.add_argument("--out", help="report folder (default RUN_DIR/deployment)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_run)
