"""`plan`: profile every candidate, predict it at every threshold, choose under the budgets, and
render the answer (table, PNG, JSON)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddnn.emulation.calibrate import Calibration, host_calibration
from ddnn.emulation.profiles import DeviceProfile, LinkProfile
from ddnn.errors import DdnnError
from ddnn.planning.choose import Budgets, Choice, choose, latency_of
from ddnn.planning.predict import Prediction, predict_all
from ddnn.planning.profile import DEFAULT_REPEATS, profile_figures, profile_run
from ddnn.planning.report import impl_text
from ddnn.planning.sweep import is_sweep_file, read_sweep, train_candidates
from ddnn.tables import markdown_table

log = logging.getLogger(__name__)

COLUMNS = (
    "run", "mode", "T", "local exit", "T_device", "T_comm", "T_server", "T_total mean",
    "T_total p95", "MQTT B/sample", "accuracy", "RAM KiB", "flash KiB",
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    device: DeviceProfile
    link: LinkProfile
    calibrations: dict[str, dict[str, Any]]  # run -> the calibration its profile was measured under
    budgets: Budgets
    predictions: tuple[Prediction, ...]
    choice: Choice
    device_impl: str = "python"  # what the device times are for: the Python device or the C agent

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_profile": profile_figures(self.device),
            "link_profile": profile_figures(self.link),
            "device_impl": self.device_impl,
            "calibrations": self.calibrations,
            "budgets": asdict(self.budgets),
            "predictions": [p.to_dict() for p in self.predictions],
            **self.choice.to_dict(),
        }


def candidate_runs(candidates: Sequence[str], progress: bool = False) -> list[Path]:
    """Run folders as given, and the trained candidates of any sweep file among them."""
    runs: list[Path] = []
    for c in candidates:
        if is_sweep_file(c):
            runs += train_candidates(read_sweep(c), progress=progress)
        elif (Path(c) / "spec.json").is_file():
            runs.append(Path(c))
        else:
            raise DdnnError(f"{c}: neither a run folder (no spec.json) nor a sweep .toml file")
    if not runs:
        raise DdnnError("no candidates: give run folders or a sweep file")
    return runs


def make_plan(
    runs: Sequence[Path],
    device: DeviceProfile,
    link: LinkProfile,
    budgets: Budgets,
    calibration: Calibration | None = None,
    *,
    repeats: int = DEFAULT_REPEATS,
    remeasure: bool = False,
    recalibrate: bool = False,
    device_impl: str = "python",
) -> Plan:
    """Profile (or reuse the profiles of) `runs` under one calibration (the host's shared one
    unless given) and choose among their predictions; the device times are `device_impl`'s
    (profile_run)."""
    preds: list[Prediction] = []
    used: dict[str, dict[str, Any]] = {}
    calibration = calibration or host_calibration(remeasure=recalibrate)
    for run in runs:
        profile = profile_run(
            run, device, link, calibration, repeats=repeats, remeasure=remeasure,
            device_impl=device_impl,
        )  # fmt: skip
        used[str(run)] = profile.calibration
        preds += predict_all(profile, link.rate_mbit, link.delay_ms)
    choice = choose(preds, budgets)
    return Plan(device, link, used, budgets, tuple(preds), choice, device_impl)


def _row(p: Prediction) -> list[Any]:
    kib = [None if b is None else b / 1024 for b in (p.device_ram_bytes, p.device_flash_bytes)]
    return [
        Path(p.run).name, p.mode, p.threshold, p.local_exit_fraction, p.t_device_ms.mean,
        p.t_comm_ms.mean, p.t_server_ms.mean, p.t_total_ms.mean, p.t_total_ms.p95,
        p.mqtt_bytes_per_sample, p.accuracy, *kib,
    ]  # fmt: skip


def plan_text(plan: Plan) -> str:
    """The Pareto front, then the recommendation or the budgets nobody meets."""
    host = sorted(
        {f"{c.get('host_gflops', float('nan')):.3g} ({c.get('source', 'measured')}, "
         f"{c.get('measured_at', '?')})" for c in plan.calibrations.values()}
    )  # fmt: skip
    lines = [
        f"device {plan.device.name} ({plan.device.gflops:g} GFLOPS), link {plan.link.name} "
        f"({plan.link.rate_mbit:g} Mbit/s, {plan.link.delay_ms:g} ms one way); host "
        f"calibrated at {', '.join(host)} GFLOPS (when each run was profiled); device times: "
        f"{impl_text(plan.device_impl)}",
        f"{len(plan.predictions)} predictions; Pareto front (mean T_total vs accuracy; "
        "times in ms, means over all samples):",
        "",
        markdown_table(COLUMNS, [_row(p) for p in plan.choice.front]),
        "",
    ]
    best = plan.choice.recommended
    if best is not None:
        how = "" if best.threshold is None else f" at threshold {best.threshold:g}"
        lines.append(
            f"recommended: {Path(best.run).name}, {best.mode}{how}: T_total mean "
            f"{best.t_total_ms.mean:.3g} ms (p95 {best.t_total_ms.p95:.3g}), accuracy "
            f"{best.accuracy:.4f}, {best.mqtt_bytes_per_sample:.1f} B/sample"
        )
    else:
        lines.append("no candidate meets the budgets:")
        lines += [f"  {m.text()}" for m in plan.choice.misses]
    return "\n".join(lines)


def plot_plan(plan: Plan, path: str | Path) -> None:
    """Accuracy against mean T_total of every prediction, the front joined, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    stat = plan.budgets.latency
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in dict.fromkeys(p.run for p in plan.predictions):
        mine = [p for p in plan.predictions if p.run == run]
        split = [p for p in mine if p.threshold is not None]
        dots = ax.scatter(
            [latency_of(p, stat) for p in split], [p.accuracy for p in split], s=12,
            label=f"{Path(run).name} (thresholds)",
        )  # fmt: skip
        only = [p for p in mine if p.threshold is None]
        ax.scatter(
            [latency_of(p, stat) for p in only], [p.accuracy for p in only], s=40, marker="x",
            color=dots.get_facecolor()[0] if split else None, label=f"{Path(run).name} server-only",
        )  # fmt: skip
    front = plan.choice.front
    ax.plot([latency_of(p, stat) for p in front], [p.accuracy for p in front], "k--", lw=1,
            label="Pareto front")  # fmt: skip
    best = plan.choice.recommended
    if best is not None:
        ax.scatter([latency_of(best, stat)], [best.accuracy], s=120, facecolors="none",
                   edgecolors="red", label="recommended")  # fmt: skip
    if plan.budgets.max_latency_ms is not None:
        ax.axvline(plan.budgets.max_latency_ms, color="grey", lw=0.8)
    if plan.budgets.min_accuracy is not None:
        ax.axhline(plan.budgets.min_accuracy, color="grey", lw=0.8)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"predicted T_total, {stat} (ms)")
    ax.set_ylabel("accuracy (validation)")
    ax.set_title(f"{plan.device.name} on {plan.link.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
