"""`ddnn deploy`: load a new version into the running servers, roll back, or ask what they
serve."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ddnn.errors import DdnnError
from ddnn.runtime.protocol import OPERATOR_IDENTITY


def cmd_deploy(args: argparse.Namespace) -> int:
    from ddnn.rollout.operator import new_command, send_command
    from ddnn.runtime.rollout_wire import DEPLOY, ROLLBACK, STATUS
    from ddnn.runtime.security import BrokerAccess
    from ddnn.runtime.transport import create_transport

    given = sum(map(bool, (args.run_dir, args.rollback, args.status, args.version is not None)))
    if given != 1:
        raise DdnnError("give one of: RUN_DIR, --version N (with --model), --rollback, --status")
    if args.rollback or args.status:
        command = new_command(ROLLBACK if args.rollback else STATUS, model=args.model)
    elif args.version is not None:
        if not args.model:
            raise DdnnError("--version N needs --model NAME: which model to move to version N")
        command = new_command(DEPLOY, model=args.model, version=args.version)
    else:  # the server reads the folder: give it an absolute path
        command = new_command(DEPLOY, run=str(Path(args.run_dir).resolve()))
    access = BrokerAccess.load(args.auth) if args.auth else None
    url = args.broker or (access.url if access is not None else None)
    if url is None:
        raise DdnnError("give --broker URL (or --auth FILE): the broker the servers are on")
    operator = args.id or (access.username if access and access.username else OPERATOR_IDENTITY)
    kwargs = access.transport_kwargs() if access is not None else {}
    with create_transport(url, **kwargs) as transport:
        reply = send_command(transport, command, operator=operator, timeout_s=args.timeout)
    if args.json:
        print(json.dumps({"ok": reply.ok, "message": reply.message, "current": reply.current,
                          "served": list(reply.served), "known": list(reply.known),
                          "devices": reply.devices}))  # fmt: skip
    if not reply.ok:
        raise DdnnError(reply.message)
    if not args.json:
        print(f"{reply.server}: {reply.message}; serving {', '.join(reply.served)}")
        if args.status and reply.devices:
            using = ", ".join(f"{d} v{v}" for d, v in sorted(reply.devices.items()))
            print(f"versions devices last used: {using}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("deploy", help="load a new version into running servers, or roll back")
    p.add_argument("run_dir", nargs="?", help="the new version's folder (the server must read it)")
    p.add_argument("--model", help="with --version, --rollback, --status: which model")
    p.add_argument("--version", type=int, help="make a version the servers know current again")
    p.add_argument("--rollback", action="store_true", help="back to the previous version")
    p.add_argument("--status", action="store_true", help="what the servers serve")
    p.add_argument("--broker", help="mqtt[s]://host:port of the servers' broker")
    p.add_argument("--auth", metavar="FILE", help="the operator's access file (secure broker)")
    p.add_argument(
        "--id", help=f"operator identity (default: the access file's, or {OPERATOR_IDENTITY})"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_deploy)
