"""Device code generation and export: plain C99 for a model's device section (with a harness and
a Makefile), ONNX files per section, device engines (torch, onnx, c) behind one interface, and
verification of the generated code against PyTorch.

Attributes load lazily, so `ddnn.export.cli` (imported by the CLI for every command) stays
cheap; `from ddnn.export import export_c` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "export_c": "ddnn.export.cexport",
    "build": "ddnn.export.cexport",
    "export_onnx": "ddnn.export.onnx_export",
    "verify": "ddnn.export.verify",
    "verify_onnx": "ddnn.export.verify",
    "DeviceEngine": "ddnn.export.engines",
    "create_engine": "ddnn.export.engines",
    "engine_names": "ddnn.export.engines",
    "bench_device": "ddnn.export.bench",
    "write_inputs": "ddnn.export.fileformat",
    "read_outputs": "ddnn.export.fileformat",
    "pack_features": "ddnn.export.bits",
    "unpack_features": "ddnn.export.bits",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'ddnn.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
