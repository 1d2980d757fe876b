"""Device engines: the same device section run by PyTorch, onnxruntime or the generated C.

The runtime's device process picks one with `create_engine(name, run_dir, device)`. Every engine
returns the same thing: exit logits [B, C_exit] float32 and the features to send upward, packed
uint8 [B, ceil(n / 8)] for a binary section (numpy.packbits order), float32 [B, C, h, w] otherwise.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ddnn.errors import DdnnError
from ddnn.evaluate.policy import confident, exit_predictions
from ddnn.export.bits import pack_features
from ddnn.export.cexport import (
    LIBRARY,
    MANIFEST,
    build,
    export_c,
    load_device_model,
    model_id,
)
from ddnn.export.fileformat import DeviceResults
from ddnn.export.ir import check_device
from ddnn.model.hierarchy import HierarchicalModel, Section
from ddnn.model.outputs import OTHER, binary_output, class_map, payload_bytes
from ddnn.nn.entropy import normalized_entropy_np

log = logging.getLogger(__name__)


def default_artifacts(run_dir: str | Path, engine: str, device: int) -> Path:
    """Where engines keep exported files when not told: inside the run folder."""
    sub = f"c-device{device}" if engine == "c" else "onnx"
    return Path(run_dir) / "export" / sub


class DeviceEngine(ABC):
    """Runs one device section. Subclasses implement `_run`; `run` checks the input."""

    name = ""

    def __init__(self, run_dir: str | Path, device: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.device = device
        self.model: HierarchicalModel = load_device_model(run_dir, device)
        self.section: Section = check_device(self.model, device)
        self.view_shape = tuple(self.model.spec.view_shape)
        self.feature_shape = tuple(self.section.out_shape)
        self.binary_features = binary_output(self.section)
        dev = self.model.spec.device_section
        self.exit = dev.exit if dev is not None else None
        self.num_logits = self.model.spec.exit_num_classes(dev) if self.exit and dev else 0

    def run(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """view [B, C, h, w] float32 in [0, 1] -> (logits [B, C_exit], features)."""
        x = np.asarray(view)
        if x.ndim == 3:
            raise DdnnError(f"view has shape {x.shape}: add the batch dimension ([1, ...])")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.view_shape:
            raise DdnnError(
                f"view has shape {x.shape}; device {self.device} expects [B, "
                f"{', '.join(map(str, self.view_shape))}]"
            )
        return self._run(np.ascontiguousarray(x, dtype=np.float32))

    @abstractmethod
    def _run(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def results(self, view: np.ndarray) -> DeviceResults:
        """run() plus the exit decision, the record the harness writes."""
        logits, features = self.run(view)
        decision, argmax, eta = device_decisions(self.model, logits)
        raw = features if self.binary_features else features.reshape(len(features), -1)
        return DeviceResults(
            decision, argmax, eta, logits, raw.view(np.uint8), self.binary_features
        )

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release what the engine holds (sessions, libraries)."""


def device_decisions(model: HierarchicalModel, logits: np.ndarray) -> tuple[np.ndarray, ...]:
    """The device exit's decision per sample, as the exit policy makes it: (decision [B]: the
    dataset class answered locally or -1, argmax [B], normalized entropy [B])."""
    n = len(logits)
    dev = model.spec.device_section
    if dev is None or dev.exit is None or logits.shape[1] == 0:
        return np.full(n, -1, np.int32), np.full(n, -1, np.int32), np.ones(n, np.float32)
    eta = normalized_entropy_np(logits).astype(np.float32)
    pred = exit_predictions(logits, class_map(model, dev.name)).astype(np.int32)
    threshold = model.spec.thresholds.get(dev.name)
    # no threshold: the device exit is the model's final exit and answers unless "other"
    leave = pred != OTHER if threshold is None else confident(eta, pred, threshold)
    return np.where(leave, pred, -1).astype(np.int32), logits.argmax(axis=1).astype(np.int32), eta


class TorchEngine(DeviceEngine):
    """PyTorch eager, the reference."""

    name = "torch"

    @torch.inference_mode()
    def _run(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.model.run_device(self.device, torch.from_numpy(view))
        logits = (
            out.logits.numpy() if out.logits is not None else np.zeros((len(view), 0), np.float32)
        )
        feats = out.features.numpy()
        return logits, pack_features(feats) if self.binary_features else feats


class OnnxEngine(DeviceEngine):
    """onnxruntime on `device<i>.onnx` (exported on first use when missing or stale)."""

    name = "onnx"

    def __init__(
        self,
        run_dir: str | Path,
        device: int = 0,
        artifacts: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(run_dir, device)
        import onnx
        import onnxruntime as ort

        from ddnn.export.onnx_export import ID_KEY, export_onnx, part_id

        folder = Path(artifacts or default_artifacts(run_dir, "onnx", device))
        part = f"device{device}"
        path = folder / f"{part}.onnx"
        ident = part_id(run_dir, part)
        meta = {}
        if path.is_file():
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                    .metadata_props}  # fmt: skip
        if meta.get(ID_KEY) != ident:
            log.info("exporting %s to %s", part, folder)
            export_onnx(run_dir, folder, parts=[part])
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = dict(zip(self.outputs, self.session.run(None, {"view": view}), strict=True))
        logits = got.get("logits", np.zeros((len(view), 0), np.float32))
        feats = got["features"]
        return logits, pack_features(feats) if self.binary_features else feats


class CEngine(DeviceEngine):
    """The generated C, as a shared library through ctypes (exported and built on first use
    when missing or stale; needs a C compiler then)."""

    name = "c"

    def __init__(
        self,
        run_dir: str | Path,
        device: int = 0,
        artifacts: str | Path | None = None,
        cflags: str | None = None,
    ) -> None:
        super().__init__(run_dir, device)
        folder = Path(artifacts or default_artifacts(run_dir, "c", device))
        ident = model_id(run_dir, device)
        manifest = folder / MANIFEST
        built = manifest.is_file() and json.loads(manifest.read_text()).get("model") == ident
        if not built or not (folder / LIBRARY).is_file():
            log.info("generating and building C for device %d in %s", device, folder)
            export_c(run_dir, folder, device)
            build(folder, ("lib",), cflags=cflags)
        self.lib = _load_library(folder / LIBRARY)
        if self.lib.ddnn_device_model().decode() != ident:
            raise DdnnError(f"{folder / LIBRARY} is not built from {ident}: delete {folder}")
        self.path = folder
        self.feature_bytes = payload_bytes(self.section)

    def _run(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(view)
        logits = np.zeros((n, self.num_logits), np.float32)
        feats = np.zeros((n, self.feature_bytes), np.uint8)
        self.lib.ddnn_device_run_batch(
            n, view.ctypes.data, logits.ctypes.data, None, None, None, feats.ctypes.data
        )
        if self.binary_features:
            return logits, feats
        return logits, feats.view(np.float32).reshape(n, *self.feature_shape)

    def single(self) -> Callable[[np.ndarray], int]:
        """A minimal-overhead call for one sample (benchmarks): view [C, h, w] -> decision."""
        logits = np.zeros(max(self.num_logits, 1), np.float32)
        feats = np.zeros(self.feature_bytes, np.uint8)
        fn, lp, fp = self.lib.ddnn_device_run, logits.ctypes.data, feats.ctypes.data

        def call(view: np.ndarray, _keep: tuple = (logits, feats)) -> int:
            # _keep: the output arrays must outlive the raw pointers lp and fp
            return int(fn(view.ctypes.data, lp, None, None, fp))

        return call


def _load_library(path: Path) -> ctypes.CDLL:
    """dlopen a private copy: the loader caches libraries by path, so a library rebuilt at the
    same path would otherwise not be reloaded in this process. The copy is unlinked at once."""
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix="ddnn_device_", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(path.read_bytes())
        lib = ctypes.CDLL(tmp)
    finally:
        os.unlink(tmp)
    lib.ddnn_device_model.restype = ctypes.c_char_p
    ptr = ctypes.c_void_p
    lib.ddnn_device_run.argtypes = [ptr] * 5
    lib.ddnn_device_run.restype = ctypes.c_int
    lib.ddnn_device_run_batch.argtypes = [ctypes.c_int] + [ptr] * 6
    lib.ddnn_device_run_batch.restype = ctypes.c_int
    return lib


ENGINES: dict[str, type[DeviceEngine]] = {
    TorchEngine.name: TorchEngine,
    OnnxEngine.name: OnnxEngine,
    CEngine.name: CEngine,
}


def engine_names() -> list[str]:
    return sorted(ENGINES)


def create_engine(
    name: str, run_dir: str | Path, device: int = 0, **options: object
) -> DeviceEngine:
    """The engine `name` (c, onnx, torch) for device section `device` of a stored model.
    options: `artifacts` (folder of exported files, default RUN_DIR/export/...), `threads` (onnx),
    `cflags` (c)."""
    if name not in ENGINES:
        raise DdnnError(f"unknown engine {name!r}; valid: {', '.join(engine_names())}")
    return ENGINES[name](run_dir, device, **options)  # type: ignore[arg-type]
