"""The `ddnn` command. The only place that prints and configures logging."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ddnn import logs
from ddnn.errors import DdnnError

log = logging.getLogger("ddnn.cli")

Handler = Callable[[argparse.Namespace], int]


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a preset or TOML config; writes a run folder")
    p.add_argument("config", nargs="?", help="preset name (ddnn, lenet5, ...) or .toml path")
    p.add_argument(
        "--dataset", help="fashion-mnist, mnist, digits, synthetic, folder (image folders), npz"
    )
    p.add_argument("--data-dir", help="folder (or .npz file) with the dataset's files")
    p.add_argument(
        "--image-size", nargs=2, type=int, metavar=("H", "W"), help="resize every image to H x W"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="train on the first N samples only")
    p.add_argument("--out", help="run folder (default: runs/<preset>)")
    p.add_argument("--from", dest="init_from", help="fine-tune this stored model: new version")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (deletes its files)"
    )
    p.add_argument(
        "--distill", metavar="STORE",
        help="with --from: teach the local exit from a collection store (ddnn serve --collect)",
    )  # fmt: skip
    p.add_argument(
        "--max-entropy", type=float, default=0.2,
        help="with --distill: the cloud's answers at most this uncertain are the targets",
    )  # fmt: skip
    p.add_argument("--labels", help="with --distill: CSV of `seq,label` lines (given labels win)")
    from ddnn.distributed.cli import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ddnn.evaluate.tables import report_text
    from ddnn.train.config import load_experiment, resume_experiment
    from ddnn.train.trainer import how_to_continue, train_experiment

    if args.verbose == 0:  # one line per epoch even without -v
        logging.getLogger("ddnn.train").setLevel(logging.INFO)
    if args.resume and args.overwrite:
        raise DdnnError("--resume continues a run, --overwrite replaces it: give one of them")
    if args.distill:
        return _distill(args)
    if args.resume:
        exp, run_dir = resume_experiment(args.resume), Path(args.resume)
    else:
        if not args.config and not args.init_from:
            raise DdnnError("name a preset or config to train, or --from a stored model")
        overrides = {
            "dataset": args.dataset, "data_dir": args.data_dir, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "limit": args.limit,
            "image_size": tuple(args.image_size) if args.image_size else None,
        }  # fmt: skip
        exp = load_experiment(args.config or _stored_config(args.init_from), **overrides)
        run_dir = Path(args.out or f"runs/{exp.model.name}")
    from ddnn.distributed.cli import is_distributed, train_distributed

    try:
        if is_distributed(args):
            distributed = train_distributed(args, exp, run_dir)
            if distributed is None:  # a rank other than 0: rank 0 reports
                return 0
            report = distributed
        else:
            report = train_experiment(
                exp, run_dir, args.init_from, resume=bool(args.resume), overwrite=args.overwrite
            )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(how_to_continue(run_dir)) from None
    print(report_text(report, f"{exp.model.name}: test split, thresholds calibrated on validation"))
    print(f"\nrun folder: {run_dir}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from ddnn.train.distill import DistillConfig, distill, distill_text

    if not args.init_from or args.resume:
        raise DdnnError("--distill teaches a stored model: give --from RUN (and no --resume)")
    given = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
             "seed": args.seed}  # fmt: skip
    config = DistillConfig(
        max_entropy=args.max_entropy, labels=args.labels,
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    out = Path(args.out or f"{args.init_from.rstrip('/')}-distilled")
    report = distill(args.init_from, args.distill, out, config, overwrite=args.overwrite)
    print(distill_text(report))
    print(f"\nrun folder: {out}")
    return 0


def _stored_config(folder: str) -> str:
    """Fine-tuning without a config: reuse the training config saved in the model's run folder."""
    from ddnn.model.presets import preset_names
    from ddnn.store.artifact import open_model

    name = open_model(folder).name
    if name not in preset_names():
        raise DdnnError(
            f"{folder}: name the config to fine-tune with (model {name!r} is no preset)"
        )
    return name


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="run the exit policy on the test split and report")
    p.add_argument("run_dir")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="one threshold for every early exit")
    g.add_argument("--sweep", action="store_true", help="table and PNG over thresholds 0..1")
    p.add_argument("--dataset", help="default: the dataset the model was trained on")
    p.add_argument("--data-dir", help="default: where the model's training data was read from")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--limit", type=int, help="evaluate on the first N samples only")
    p.add_argument("--plot", help="PNG path for --sweep (default: RUN_DIR/sweep.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ddnn.evaluate.calibrate import plot_sweep, sweep
    from ddnn.evaluate.policy import check_threshold
    from ddnn.evaluate.runner import collect_outputs, device_ablation, evaluate_outputs
    from ddnn.evaluate.tables import REPORT_COLUMNS, ablation_text, report_row, report_text
    from ddnn.store.artifact import open_model
    from ddnn.tables import markdown_table

    if args.threshold is not None:  # before the minutes of loading a model and its data
        check_threshold(args.threshold, "--threshold")
    stored = open_model(args.run_dir)
    model = stored.load()
    source = stored.data_source(args.dataset, args.data_dir)
    name = source.dataset
    data = source.load(val_fraction=0.1)
    split = (data.test if args.split == "test" else data.val).head(args.limit)
    outputs = collect_outputs(model, split)
    n_free = len(outputs.names) - 1
    if args.sweep:
        rows = sweep(outputs, lambda t: evaluate_outputs(model, outputs, t))
        plot = args.plot or str(Path(args.run_dir) / "sweep.png")
        plot_sweep(rows, plot, f"{stored.name} v{stored.version} on {name} {args.split}")
        if args.json:
            print(json.dumps({"sweep": rows, "plot": plot}))
        else:
            print(markdown_table(REPORT_COLUMNS, [report_row(r) for r in rows]))
            print(f"\nplot: {plot}")
        return 0
    thresholds = None if args.threshold is None else [args.threshold] * n_free
    report = evaluate_outputs(model, outputs, thresholds)
    ablation = device_ablation(model, split) if model.spec.devices > 1 else None
    if args.json:
        print(json.dumps(report | ({"device_ablation": ablation} if ablation else {})))
        return 0
    print(report_text(report, f"{stored.name} v{stored.version} on {name} {args.split}"))
    if ablation:
        print("\nwith devices missing:\n" + ablation_text(ablation))
    return 0


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="what a stored model is: sections, tiers, sizes, metrics")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from ddnn.store.info import model_info, model_info_text

    info = model_info(args.run_dir)
    print(json.dumps(info, indent=2) if args.json else model_info_text(info))
    return 0


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a same-run baseline")
    bsub = p.add_subparsers(dest="bench", required=True)
    for area in AREAS:
        module = importlib.import_module(area)
        if hasattr(module, "register_bench"):
            module.register_bench(bsub)
    t = bsub.add_parser("train", help="framework epoch vs a plain PyTorch loop")
    t.add_argument("--preset", default="ddnn")
    t.add_argument("--dataset", default="fashion-mnist")
    t.add_argument("--data-dir")
    t.add_argument("--samples", type=int, default=12800, help="training samples per epoch")
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--json", action="store_true")
    t.set_defaults(handler=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from ddnn.bench.train_overhead import bench_train, bench_train_text

    result = bench_train(args.preset, args.dataset, args.data_dir, args.samples, args.repeats)
    print(json.dumps(result) if args.json else bench_train_text(result))
    return 0


def _add_data(sub: Any) -> None:
    p = sub.add_parser("data", help="make data sets")
    dsub = p.add_subparsers(dest="data", required=True)
    m = dsub.add_parser(
        "make-colour", help="Fashion-MNIST tinted onto textured colour backgrounds, as PNG folders"
    )
    m.add_argument("out", help="new folder to write train/ and test/ into")
    m.add_argument("--source", help="Fashion-MNIST IDX folder (default: the Debian package's)")
    m.add_argument("--size", type=int, default=32, help="image height and width")
    m.add_argument("--train", type=int, default=6000, help="training samples")
    m.add_argument("--test", type=int, default=1000, help="test samples")
    m.add_argument("--views", type=int, default=1, help="cameras per sample (multi-view)")
    m.add_argument("--missing", type=float, default=0.1, help="chance a camera misses a sample")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(handler=cmd_make_colour)
    s = dsub.add_parser(
        "make-shifted", help="Fashion-MNIST with contrast, brightness and position shifted, as npz"
    )
    s.add_argument("out", help="folder to write train.npz and test.npz into")
    s.add_argument("--source", help="Fashion-MNIST IDX folder (default: the Debian package's)")
    s.add_argument("--contrast", type=float, default=0.5, help="pixels times this")
    s.add_argument("--brightness", type=float, default=0.4, help="plus this times 255")
    s.add_argument("--shift", type=int, default=2, help="random translation of up to N pixels")
    s.add_argument("--train", type=int, default=6000, help="training samples")
    s.add_argument("--test", type=int, default=4000, help="test samples")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler=cmd_make_shifted)


def cmd_make_colour(args: argparse.Namespace) -> int:
    from ddnn.data.colour import make_colour
    from ddnn.data.datasets import FASHION_MNIST_DIR

    written = make_colour(
        args.out, source=args.source or FASHION_MNIST_DIR, size=args.size, train=args.train,
        test=args.test, views=args.views, missing=args.missing, seed=args.seed,
    )  # fmt: skip
    print(f"{args.out}: {written['train']} train and {written['test']} test images")
    return 0


def cmd_make_shifted(args: argparse.Namespace) -> int:
    from ddnn.data.datasets import FASHION_MNIST_DIR
    from ddnn.data.shifted import make_shifted

    written = make_shifted(
        args.out, source=args.source or FASHION_MNIST_DIR, contrast=args.contrast,
        brightness=args.brightness, shift=args.shift, train=args.train, test=args.test,
        seed=args.seed,
    )  # fmt: skip
    print(f"{args.out}: {written['train']} train and {written['test']} test images (npz)")
    return 0


COMMANDS: Sequence[Callable[[Any], None]] = (
    _add_train, _add_evaluate, _add_info, _add_bench, _add_data,
)  # fmt: skip
# Feature areas register their own subcommands: module.register(sub) for top-level commands and
# module.register_bench(bench_sub) for `ddnn bench ...`; imported lazily so a command's heavy
# dependencies load only when it runs.
AREAS: Sequence[str] = (
    "ddnn.runtime.cli",
    "ddnn.export.cli",
    "ddnn.agent.cli",  # after export: it adds --agent to `ddnn export`
    "ddnn.distributed.cli",
    "ddnn.rollout.cli",
    "ddnn.bench.cli",
    "ddnn.planning.cli",
    "ddnn.store.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddnn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for area in AREAS:
        module = importlib.import_module(area)
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `ddnn` command; returns its exit code."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit flush
    except BrokenPipeError:  # `ddnn info RUN | head -2`: the reader left, say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit flush
        return 141  # what a shell reports for a process ended by SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.WARNING
        if args.verbose == 0
        else logging.INFO
        if args.verbose == 1
        else logging.DEBUG
    )
    logs.configure(level)
    try:
        return int(args.handler(args))
    except DdnnError as exc:
        print(f"ddnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"ddnn {args.command}: error: {exc.filename or exc}: not found", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        hint = f": {exc}" if str(exc) else ""  # a command may say how to continue
        print(f"ddnn {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
