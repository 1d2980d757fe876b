"""`ddnn export` and `ddnn bench device`; cli.py picks these up through its AREAS list."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ddnn.errors import DdnnError


def _say(text: str) -> None:
    print(text)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="device C code (with harness and Makefile) or ONNX files of a model"
    )
    p.add_argument("run_dir", help="a run or model folder from ddnn train")
    p.add_argument("--target", choices=("c", "onnx"), required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", type=int, default=0, help="which device section (c)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="compile and run the C (and onnxruntime), compare with PyTorch, write golden files",
    )
    p.add_argument("--samples", type=int, default=16, help="samples to verify on")
    p.add_argument("--no-cross", action="store_true", help="skip the aarch64 / qemu check")
    p.add_argument("--json", action="store_true", help="print the verify report as JSON")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise DdnnError(f"--samples must be >= 1, got {args.samples}")
    if args.target == "onnx":
        from ddnn.export.onnx_export import export_onnx
        from ddnn.export.verify import verify_onnx

        if args.verify:
            report = verify_onnx(args.run_dir, args.out, args.samples)
            if args.json:
                _say(json.dumps(report, indent=2))
            else:
                for r in report.values():
                    if isinstance(r, dict):
                        state = "ok" if r["passed"] else "FAILED"
                        _say(f"{r['file']}: {state}, max error {r['max_error']:.2e} vs PyTorch")
            return 0 if report["passed"] else 1
        for path in export_onnx(args.run_dir, args.out):
            _say(str(path))
        return 0
    from ddnn.export.cexport import export_c

    if not args.verify:
        out = export_c(args.run_dir, args.out, args.device)
        _say(f"C code for device {args.device} in {out}; build with: make -C {out}")
        return 0
    from ddnn.export.verify import verify, verify_text

    report = verify(args.run_dir, args.out, args.samples, args.device, cross=not args.no_cross)
    _say(json.dumps(report, indent=2) if args.json else verify_text(report))
    return 0 if report["passed"] else 1


def register_bench(bsub: Any) -> None:
    from ddnn.export.harness import DEFAULT_CFLAGS

    p = bsub.add_parser(
        "device", help="device section latency: PyTorch vs onnxruntime vs the generated C"
    )
    p.add_argument("target", help="a run folder, or a preset name (untrained weights)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--dataset", help="dataset giving a preset's shapes (default fashion-mnist)")
    p.add_argument("--data-dir", help="the dataset's folder or file (folder, npz, mnist)")
    p.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=2000, help="timed runs per engine")
    p.add_argument("--out", help="keep the generated files here (default: a temporary folder)")
    p.add_argument("--cc", default="cc", help="C compiler")
    p.add_argument("--cflags", default=DEFAULT_CFLAGS, help="C flags for the timed build")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench_device)


def cmd_bench_device(args: argparse.Namespace) -> int:
    from ddnn.export.bench import bench_device, bench_text

    if args.repeats < 10:
        raise DdnnError(f"--repeats must be >= 10 for a meaningful median, got {args.repeats}")
    source = None
    if args.dataset:
        from ddnn.data.source import DataSource

        source = DataSource.of(args.dataset, args.data_dir, args.image_size)
    result = bench_device(
        args.target, args.device, source, args.repeats, args.out, args.cc, args.cflags
    )
    _say(json.dumps(result, indent=2) if args.json else bench_text(result))
    return 0
