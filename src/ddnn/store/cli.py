"""`ddnn collect STORE`: what a server's collection store holds, and a training set from it."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ddnn.tables import markdown_table


def register(sub: Any) -> None:
    p = sub.add_parser(
        "collect", help="summarise a collection store (ddnn serve --collect); --to: training set"
    )
    p.add_argument("store", help="the folder ddnn serve --collect wrote")
    p.add_argument("--to", metavar="OUT.npz", help="write a training set of the labelled records")
    p.add_argument(
        "--max-entropy", type=float, default=0.2,
        help="label a record with the cloud's answer when its normalized entropy is at most this",
    )  # fmt: skip
    p.add_argument("--labels", help="CSV of `seq,label` lines: given labels win over the cloud's")
    p.add_argument("--version", type=int, help="only this model version's records (--to)")
    p.add_argument(
        "--model", metavar="RUN",
        help="the stored model the records came from: computes the local exit's answers the "
        "frames did not carry (for the local/cloud agreement)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_collect)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"


def summary_text(s: dict[str, Any]) -> str:
    """The summary as lines and one table of the cloud's confidence."""
    span = (s["last_time"] - s["first_time"]) if s["records"] else 0.0
    agree = s["local_agrees"]
    lines = [
        f"records: {s['records']} in {s['shards']} shards, {s['bytes'] / 1e6:.2f} MB",
        "versions: " + (", ".join(f"{k}: {v}" for k, v in s["versions"].items()) or "-"),
        "kinds: " + (", ".join(f"{k}: {v}" for k, v in s["groups"].items()) or "-"),
        f"time: {_when(s['first_time'])} .. {_when(s['last_time'])} ({span:.0f} s)",
        "local vs cloud: "
        + (
            f"{agree:.1%} agree over {s['with_local_answer']} records with a local answer"
            if agree is not None
            else "no record carries the device's local answer"
        ),
        "",
        "cloud confidence (normalized entropy of the answering exit), median "
        + ("-" if s["cloud_entropy_median"] is None else f"{s['cloud_entropy_median']:.3f}"),
        markdown_table(
            ["entropy at most", "share of records"],
            [[b, f"{v:.1%}"] for b, v in s["cloud_entropy_at_most"].items()],
        ),
    ]
    return "\n".join(lines)


def _fill_local(coll: Any, run: str) -> None:
    from ddnn.store.artifact import open_model
    from ddnn.store.local import fill_local_answers

    stored = open_model(run)
    model = stored.load()
    for group in coll.groups:
        if (group.model, group.version) == (stored.name, stored.version):
            fill_local_answers(model, group)


def cmd_collect(args: argparse.Namespace) -> int:
    from ddnn.store.collected import export_npz, load_collection, read_labels, summarize

    coll = load_collection(args.store)
    if args.model:
        _fill_local(coll, args.model)
    summary = summarize(coll)
    exported = None
    if args.to:
        labels = read_labels(args.labels) if args.labels else None
        exported = export_npz(
            coll, args.to, max_entropy=args.max_entropy, labels=labels, version=args.version
        )
    if args.json:
        print(json.dumps(summary | ({"exported": exported} if exported else {})))
        return 0
    print(summary_text(summary))
    if exported:
        print(
            f"\n{args.to}: {exported['samples']} samples ({exported['given']} with given labels, "
            f"the rest the cloud's answers at entropy <= {args.max_entropy})"
        )
    return 0
