"""`profile_run`: measure a run on a device and link profile, and keep the result in the run
folder (RUN/profiles/<device>-<link>.json; <device>-<link>-c.json for the C agent) for reuse.

Times come from two timing children (planning/timer.py), both at host speed: the device
section's layers (or, for the C agent, its generated C in the harness, planning/ctime.py),
dilated by `Calibration.slowdown(device)` (as the emulated run dilates the device's inference,
emulation/cpu.py and agent/c/ddnn_dilate.c: one mechanism in both), and the server's.
The offload's path beyond the link (the device's encoding, the broker, the relay, the server
process's own work and its layers, the reply) is measured through a real `ddnn serve` on a
private broker with the design's real requests (planning/overhead.py); the per-layer server
times stay in the profile for display (docs/planning.md). Exit rates and
accuracy per threshold come from the validation split, through evaluate's sweep; bytes from
the wire format (planning/wire.py); device RAM and flash from the C export's footprint,
computed without a compiler.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.config import to_dict
from ddnn.emulation.calibrate import Calibration, host_calibration
from ddnn.emulation.profiles import DeviceProfile, LinkProfile
from ddnn.errors import DdnnError
from ddnn.evaluate.calibrate import sweep
from ddnn.evaluate.runner import collect_outputs, evaluate_outputs
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import payload_bytes
from ddnn.planning.ctime import time_c_device
from ddnn.planning.overhead import Offload, server_paths
from ddnn.planning.predict import link_ms
from ddnn.planning.records import (
    FORMAT,
    LayerTime,
    RunProfile,
    ServerPath,
    ThresholdRow,
    Timing,
)
from ddnn.planning.timer import time_layers
from ddnn.planning.wire import server_only_wire, split_wire
from ddnn.runtime.config import DEVICE_IMPLS
from ddnn.runtime.protocol import DEVICE_SERVER, SERVER_ONLY
from ddnn.store.artifact import StoredModel, open_model
from ddnn.store.durable import json_bytes, replace_files

log = logging.getLogger(__name__)

PROFILES_DIR = "profiles"
DEFAULT_REPEATS = 200
OFFLOAD_INPUTS = 50  # validation samples whose real requests the server path is timed with


def profile_path(
    run_dir: str | Path, device: DeviceProfile, link: LinkProfile, device_impl: str = "python"
) -> Path:
    """Where the profile of one device implementation is stored (the Python one's name has no
    suffix, as before there was a C one)."""
    suffix = "" if device_impl == "python" else f"-{device_impl}"
    return Path(run_dir) / PROFILES_DIR / f"{device.name}-{link.name}{suffix}.json"


def profile_figures(profile: DeviceProfile | LinkProfile) -> dict[str, Any]:
    """The figures a profile stands for (not where its file lies)."""
    return {k: v for k, v in to_dict(profile).items() if k != "path"}


def model_id(stored: StoredModel) -> str:
    """Names the exact weights: a retrained run is measured again."""
    text = json.dumps([stored.name, stored.version, sorted(stored.hashes.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checked(run_dir: str | Path) -> StoredModel:
    stored = open_model(run_dir)
    if stored.spec.devices > 1:
        raise DdnnError(
            f"{run_dir}: model {stored.name!r} has {stored.spec.devices} devices; the planner "
            "models one device and one server (train a model with devices = 1)"
        )
    return stored


def _key(
    stored: StoredModel, device: DeviceProfile, link: LinkProfile, repeats: int, device_impl: str
) -> dict:
    """What a stored profile must have been measured with to be reused."""
    if device_impl not in DEVICE_IMPLS:
        allowed = ", ".join(DEVICE_IMPLS)
        raise DdnnError(f"device_impl must be one of {allowed}, not {device_impl!r}")
    return {
        "model_id": model_id(stored), "host": platform.node(), "repeats": repeats,
        "device_profile": profile_figures(device), "link_profile": profile_figures(link),
        "device_impl": device_impl,
    }  # fmt: skip


def stored_profile(
    run_dir: str | Path,
    device: DeviceProfile,
    link: LinkProfile,
    repeats: int = DEFAULT_REPEATS,
    device_impl: str = "python",
) -> RunProfile | None:
    """The stored profile of `run_dir` if it was measured for the same weights, profiles, host,
    repeats and device implementation; None when there is none or it is stale."""
    key = _key(_checked(run_dir), device, link, repeats, device_impl)
    return _stored_profile(profile_path(run_dir, device, link, device_impl), key)


def profile_run(
    run_dir: str | Path,
    device: DeviceProfile,
    link: LinkProfile,
    calibration: Calibration | None = None,
    *,
    repeats: int = DEFAULT_REPEATS,
    remeasure: bool = False,
    recalibrate: bool = False,
    limit: int | None = None,
    device_impl: str = "python",
) -> RunProfile:
    """The profile of `run_dir` on `device` and `link`: the stored one (`stored_profile`)
    unless `remeasure` or it was measured under another calibration than the host's current
    one, else measured now and stored. `calibration` None: the host's shared one
    (emulation/calibrate.py `host_calibration`, measured again if `recalibrate`).
    `device_impl`: what runs the device section, "python" (its torch layers, as `ddnn device`)
    or "c" (its generated C, as the C agent of `ddnn run --device-impl c`)."""
    if repeats < 5:
        raise DdnnError(f"repeats must be at least 5 for a p95, got {repeats}")
    stored = _checked(run_dir)
    path = profile_path(run_dir, device, link, device_impl)
    key = _key(stored, device, link, repeats, device_impl)
    calibration = calibration or host_calibration(remeasure=recalibrate)
    if not remeasure:
        found = _stored_profile(path, key)
        if found is not None and found.calibration.get("host_gflops") == calibration.host_gflops:
            log.info("reusing %s", path)
            return found
        if found is not None:
            log.info("%s was measured under another calibration: measuring again", path)
    profile = _measure(stored, device, link, calibration, key, repeats=repeats, limit=limit)
    replace_files(Path(run_dir), {f"{PROFILES_DIR}/{path.name}": json_bytes(profile.to_dict())})
    return profile


def _stored_profile(path: Path, key: dict[str, Any]) -> RunProfile | None:
    """The stored profile if it matches `key`; None when absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and doc.get("format") != FORMAT and "format" in doc:
            log.info("%s is %s, not %s: measuring again", path, doc["format"], FORMAT)
            return None
        profile = RunProfile.from_dict(doc, str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, DdnnError) as exc:
        log.warning("%s is unreadable (%s): measuring again", path, exc)
        return None
    stale = [k for k, v in key.items() if doc.get(k) != v]
    if stale:
        log.info("%s was measured with another %s: measuring again", path, ", ".join(stale))
        return None
    return profile


def _measure(
    stored: StoredModel,
    device: DeviceProfile,
    link: LinkProfile,
    calibration: Calibration,
    key: dict[str, Any],
    *,
    repeats: int,
    limit: int | None,
) -> RunProfile:
    run = str(stored.folder)
    model = stored.load()
    slowdown = max(1.0, calibration.slowdown(device))
    dev_layers: list[dict[str, Any]] = []
    dev = model.spec.device_section
    if dev is not None:
        # idling between samples as the dilated device does, so caches are as cold as in the run
        if key["device_impl"] == "c":
            timed = time_c_device(run, dev.name, repeats=repeats, idle_factor=slowdown - 1)
        else:
            timed = time_layers(run, "device", repeats=repeats, idle_factor=slowdown - 1)
        dev_layers = [_dilated(x, slowdown) for x in timed]
    srv_layers = time_layers(run, "server", repeats=repeats)
    dev_names = {s.name for s in model.spec.sections if s.tier == "device"}
    upper = [x for x in srv_layers if x["section"] not in dev_names]
    layers = [LayerTime(x["section"], x["layer"], "device", _timing(x)) for x in dev_layers]
    layers += [LayerTime(x["section"], x["layer"], "server", _timing(x)) for x in srv_layers]
    val = stored.data_source().load(val_fraction=0.1).val  # loaded once for rows and paths
    rows, cloud_only, samples = _threshold_rows(model, val.head(limit))
    wire, only_wire = split_wire(model), server_only_wire(model)
    ram, flash = _footprint(model)
    device_s = _per_sample(dev_layers, repeats).mean / 1e3
    # through the emulated link's relay (delay and rate), the split's requests paced by the
    # device time: the server and both clients idle between requests as long as in a run
    wires = {SERVER_ONLY_PATH: only_wire} | ({SPLIT_PATH: wire} if wire is not None else {})
    gaps = {k: device_s if k == SPLIT_PATH else 0.0 for k in wires}
    offloads = _offloads(stored, val.head(OFFLOAD_INPUTS).images, gaps)
    measured = server_paths(run, offloads, repeats, link)
    paths = {
        k: replace(path, link_ms=link_ms(wires[k], link.rate_mbit, link.delay_ms))
        for k, path in measured.items()
    }
    return RunProfile(
        run=run,
        model=stored.name,
        model_id=key["model_id"],
        host=key["host"],
        device_profile=key["device_profile"],
        link_profile=key["link_profile"],
        device_impl=key["device_impl"],
        calibration=calibration.to_dict(),
        slowdown=slowdown,
        repeats=repeats,
        layers=tuple(layers),
        device=_per_sample(dev_layers, repeats),
        server=_per_sample(upper, repeats),
        server_only=_per_sample(srv_layers, repeats),
        exit_bytes=_exit_bytes(model),
        split_wire=wire,
        server_only_wire=only_wire,
        thresholds=tuple(rows),
        cloud_only_accuracy=cloud_only,
        validation_samples=samples,
        device_ram_bytes=ram,
        device_flash_bytes=flash,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        split_path=paths.get(SPLIT_PATH, ServerPath()),
        server_only_path=paths[SERVER_ONLY_PATH],
    )


SPLIT_PATH, SERVER_ONLY_PATH = DEVICE_SERVER, SERVER_ONLY  # the two deployments' paths


def _offloads(stored: StoredModel, images: Any, gaps: dict[str, float]) -> dict[str, Offload]:
    """The design's real requests for validation `images` [N, C, H, W] uint8: raw views for
    server-only and, with a device section (a SPLIT_PATH gap), the device's own features of the
    same samples, encoded by the device's code; each path's requests `gaps` seconds apart, as a
    run sends them."""
    from ddnn.export.engines import create_engine
    from ddnn.model.views import device_view
    from ddnn.runtime.device import offload_tensor, view_tensor

    views = device_view(images.float().div(255), stored.spec, 0).numpy()  # [N, C, h, w]
    found = {SERVER_ONLY_PATH: Offload(0, list(views), view_tensor, gaps[SERVER_ONLY_PATH])}
    if SPLIT_PATH in gaps:
        engine = create_engine("torch", stored.folder)
        rows = [(v, engine.run(v[None])[1][0]) for v in views]  # (view, its features row)
        found[SPLIT_PATH] = Offload(1, rows, lambda r: offload_tensor(engine, *r), gaps[SPLIT_PATH])
    return found


def _dilated(layer: dict[str, Any], slowdown: float) -> dict[str, Any]:
    """A layer (torch) or a section (C) timed at host speed, as long as the emulated device
    takes: its wall time plus (`slowdown` - 1) x its CPU time, what `emulation.cpu.dilated`
    makes a Python device take and `ddnn_dilate` the C agent."""
    pairs = zip(layer["samples_ms"], layer["cpu_ms"], strict=True)
    return {**layer, "samples_ms": [float(w) + (slowdown - 1) * float(c) for w, c in pairs]}


def _timing(layer: dict[str, Any]) -> Timing:
    return Timing(tuple(float(v) for v in layer["samples_ms"]))


def _per_sample(layers: list[dict[str, Any]], repeats: int) -> Timing:
    """A sample's time: the sum of its own layers' times in the same repeat."""
    if not layers:
        return Timing(tuple(0.0 for _ in range(repeats)))
    total = np.sum([np.asarray(x["samples_ms"]) for x in layers], axis=0)  # [repeats]
    return Timing(tuple(float(v) for v in total))


def _exit_bytes(model: HierarchicalModel) -> dict[str, int]:
    """Payload bytes of one sample's features past each section (what a cut there sends)."""
    out = {}
    if model.spec.device_section is not None:
        out[model.spec.device_section.name] = payload_bytes(model.devices[0])  # type: ignore[arg-type]
    for name, section in model.upper.items():
        out[name] = payload_bytes(section)  # type: ignore[arg-type]
    return out


def _threshold_rows(model: HierarchicalModel, split: Any) -> tuple[list[ThresholdRow], float, int]:
    """Exit rate, accuracy and payload per threshold on (part of) the validation split."""
    outputs = collect_outputs(model, split)
    reports = sweep(outputs, lambda t: evaluate_outputs(model, outputs, t))
    rows = [
        ThresholdRow(
            threshold=float(r["threshold"]),
            local_exit_fraction=float(r["local_exit_fraction"]),
            accuracy=float(r["accuracy"]["overall"]),
            payload_bytes_per_sample=float(r["bytes_per_sample"]),
        )
        for r in reports
    ]
    return rows, float(reports[0]["accuracy"]["cloud_only"]), len(outputs)


def _footprint(model: HierarchicalModel) -> tuple[int | None, int | None]:
    """(static RAM, const weights) in bytes of the device section's C export, or Nones when it
    cannot be lowered to C (the export says why; logged)."""
    from ddnn.export.cexport import exit_rule
    from ddnn.export.csource import generate
    from ddnn.export.ir import lower_device

    if model.spec.device_section is None:
        return None, None
    try:
        footprint = generate(lower_device(model, 0), exit_rule(model), "profile").footprint
    except DdnnError as exc:
        log.warning("no C export of the device section: %s", exc)
        return None, None
    return footprint.activation_bytes, footprint.weight_bytes
