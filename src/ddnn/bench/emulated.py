"""One design run for real on an emulated device and link: `ddnn run` with one device, and what
its device recorded, frame by frame. Shared by `ddnn bench plan`, `table2` and `crossover`.

A link at any rate is a profile file written beside the run's report (the delay of the given
link, another rate), so every emulated run goes through the same `ddnn run` code as a user's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddnn.emulation.profiles import LinkProfile, load_link_profile
from ddnn.runtime.config import ALL_MODES, DeploymentConfig
from ddnn.runtime.protocol import MODES
from ddnn.runtime.report import frames
from ddnn.runtime.runner import run_deployment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Emulated:
    """What one `ddnn run` on the emulation gave: the report and each mode's per-frame rows."""

    report: dict[str, Any]
    rows: dict[str, list[dict[str, Any]]]  # mode -> rows of runtime.report.frames


def link_at_rate(link: LinkProfile, rate_mbit: float, folder: Path) -> Path:
    """A link profile file like `link` but at `rate_mbit`, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{link.name}-at-{rate_mbit:g}mbit.toml"
    path.write_text(
        f'description = "{link.name} at {rate_mbit:g} Mbit/s (ddnn bench)"\n'
        f"rate_mbit = {rate_mbit!r}\ndelay_ms = {link.delay_ms!r}\n"
        f'source = "{link.name} ({link.source.replace(chr(34), chr(39))}) with another rate"\n'
    )
    load_link_profile(path)  # the file must read back as a valid profile
    return path


def run_emulated(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    device_profile: str,
    link: str,
    threshold: float | None,
    samples: int,
    modes: tuple[str, ...] = MODES,
    reuse: bool = False,
    device_impl: str = "python",
) -> Emulated:
    """`ddnn run RUN --devices 1 --samples N [--threshold T] [--mode M] --device-profile P
    --link L --device-impl I`: one device, back to back (a sample's time is its own, not a
    queue's); both modes share one broker, server and emulation. `reuse`: a finished run of the
    same model, samples, threshold, profiles and device implementation already in `out_dir` is
    read instead of run again."""
    config = DeploymentConfig(
        devices=1,
        device_impl=device_impl,
        samples=samples,
        mode=modes[0] if len(modes) == 1 else ALL_MODES,
        thresholds=None if threshold is None else (threshold,),
        device_profile=device_profile,
        link=link,
    )
    out = Path(out_dir)
    report = _finished(run_dir, out, config) if reuse else None
    if report is None:
        report = run_deployment(run_dir, out, config)
    else:
        log.info("%s: reusing the finished run", out)
    rows = {}
    for mode in config.modes:
        lines = (out / f"records-{mode}.jsonl").read_text().splitlines()
        rows[mode] = frames(json.loads(x) for x in lines)
    return Emulated(report, rows)


def _finished(run_dir: str | Path, out: Path, config: DeploymentConfig) -> dict[str, Any] | None:
    """The report of a finished run in `out` that `config` would repeat, or None."""
    from ddnn.emulation.profiles import load_device_profile
    from ddnn.runtime.executor import exit_thresholds
    from ddnn.store.artifact import open_model

    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    stored = open_model(run_dir)
    emulation = report.get("emulation") or {}
    assert config.device_profile is not None and config.link is not None
    device = asdict(load_device_profile(config.device_profile))
    link = asdict(load_link_profile(config.link))
    same = {
        "model": (report.get("model"), report.get("version")) == (stored.name, stored.version),
        "samples": report.get("samples_requested") == config.samples,
        "thresholds": report.get("thresholds") == exit_thresholds(stored.spec, config.thresholds),
        "device": _figures(emulation.get("device_profile")) == _figures(device),
        "link": _figures(emulation.get("link_profile")) == _figures(link),
        "modes": all((out / f"records-{m}.jsonl").is_file() for m in config.modes),
        "device_impl": report.get("device_impl", "python") == config.device_impl,
    }
    return report if all(same.values()) else None


def _figures(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """A profile's figures, not where its file lies."""
    return None if profile is None else {k: v for k, v in profile.items() if k != "path"}
