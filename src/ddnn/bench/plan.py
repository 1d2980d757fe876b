"""`ddnn bench plan`: the planner's predictions checked against runs on the same emulation.

The planner recommends a design from profiles (layer times, the device's dilated to its speed,
bytes, exit rates on the validation split) and arithmetic. This runs the recommendation and two
other designs for real: `ddnn run` on the same device profile and link, one device of the same
implementation (`--device-impl`: the Python device or the C agent), the same threshold, and
compares what the devices recorded with what was predicted (`bench/compare.py`).

Where the two sides differ by construction: the prediction's accuracy is measured on the
validation split, the run streams the first `samples` of the test split (with 400 samples the
standard error of an accuracy near 0.9 is 1.5 points); the prediction's times are the model's
compute and the link's arithmetic, the run's include the device process, MQTT and the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddnn.bench.compare import Check, Figures, comparison_table, measured_figures, misses_text

log = logging.getLogger(__name__)

# a design that ran: one prediction -> the per-frame rows of its run (runtime.report.frames)
Measure = Callable[[Any], list[dict[str, Any]]]


def design_key(p: Any) -> tuple[str, str, float | None]:
    """What a deployment is: the run, the mode and the threshold (server-only has none)."""
    return (str(p.run), p.mode, p.threshold)


def design_name(p: Any) -> str:
    """Run folder name, mode and threshold, e.g. `shallow device+server T=0.4`."""
    t = "" if p.threshold is None else f" T={p.threshold:g}"
    return f"{Path(p.run).name} {p.mode}{t}"


def pick_designs(
    predictions: Sequence[Any], recommended: Any | None, front: Sequence[Any], n: int = 3
) -> list[Any]:
    """The recommendation, then others that differ from it as much as possible: the fastest
    and the most accurate designs of the Pareto front, then other runs and modes, then the
    rest. Without a recommendation (no design meets the budgets) the front's own extremes."""
    fastest = sorted(front, key=lambda p: p.t_total_ms.mean)
    order = [recommended] if recommended is not None else []
    order += fastest[:1] + fastest[-1:]
    taken_runs_modes = {(str(p.run), p.mode) for p in order}
    order += [p for p in predictions if (str(p.run), p.mode) not in taken_runs_modes]
    order += list(predictions)
    picked, seen = [], set()
    for p in order:
        if design_key(p) not in seen:
            seen.add(design_key(p))
            picked.append(p)
    return picked[:n]


def predicted_figures(p: Any) -> Figures:
    """The side of a planner `Prediction` that is compared."""
    return Figures(
        mean_total_ms=p.t_total_ms.mean,
        p95_total_ms=p.t_total_ms.p95,
        bytes_per_sample=p.mqtt_bytes_per_sample,
        accuracy=p.accuracy,
    )


@dataclass(frozen=True)
class PlanBench:
    """The planner's answer and the designs checked against runs."""

    device: str
    link: str
    recommended: str | None
    checks: tuple[Check, ...]
    calibration: dict[str, Any]  # the planner's ("plan") and each run's ("runs")
    device_impl: str = "python"  # what ran the device, in the plan's profiles and in the runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_profile": self.device,
            "link_profile": self.link,
            "device_impl": self.device_impl,
            "recommended": self.recommended,
            "calibration": self.calibration,
            "checks": [
                asdict(c)
                | {
                    "time_error": c.time_error,
                    "p95_error": c.p95_error,
                    "bytes_error": c.bytes_error,
                    "accuracy_points": c.accuracy_points,
                    "misses": c.misses,
                }
                for c in self.checks
            ],
        }


def check_designs(designs: Sequence[Any], measure: Measure) -> list[Check]:
    """Run each design and put its measured figures beside its predicted ones."""
    checks = []
    for p in designs:
        log.info("running %s", design_name(p))
        rows = measure(p)
        checks.append(
            Check(
                candidate=design_name(p),
                threshold=p.threshold,
                predicted=predicted_figures(p),
                measured=measured_figures(rows),
                samples=len(rows),
            )
        )
    return checks


def bench_plan_text(result: PlanBench) -> str:
    head = (
        f"predicted vs measured on {result.device} + {result.link}, device: "
        f"{'the C agent' if result.device_impl == 'c' else 'the Python device'} "
        f"(recommended: {result.recommended or 'none meets the budgets'})"
    )
    misses = misses_text(result.checks)
    tail = f"\n\nmissed targets:\n{misses}" if misses else "\n\nevery target met"
    return f"{head}\n\n{comparison_table(result.checks)}{tail}"


def bench_plan(
    candidates: Sequence[str],
    out_dir: str | Path,
    *,
    device_profile: str,
    link: str,
    budgets: Any,
    samples: int,
    designs: int = 3,
    repeats: int = 30,
    device_impl: str = "python",
) -> PlanBench:
    """Plan (a profile stored in a run with the same `repeats` is reused), then run the
    recommendation and `designs - 1` others on `device_profile` + `link` and compare; the
    device is `device_impl`'s (`ddnn run --device-impl`) in both the plan and the runs."""
    from ddnn.bench.emulated import run_emulated
    from ddnn.emulation.profiles import load_device_profile, load_link_profile
    from ddnn.planning.plan import candidate_runs, make_plan

    device, link_profile = load_device_profile(device_profile), load_link_profile(link)
    plan = make_plan(
        candidate_runs(candidates), device, link_profile, budgets, repeats=repeats,
        device_impl=device_impl,
    )  # fmt: skip
    recommended = plan.choice.recommended
    picked = pick_designs(plan.predictions, recommended, plan.choice.front, designs)
    calibrations: list[dict[str, Any]] = []

    def measure(p: Any) -> list[dict[str, Any]]:
        folder = Path(out_dir) / design_name(p).replace(" ", "_").replace("+", "-")
        found = run_emulated(
            p.run, folder, device_profile=device_profile, link=link, threshold=p.threshold,
            samples=samples, modes=(p.mode,), reuse=True, device_impl=device_impl,
        )  # fmt: skip
        calibrations.append(found.report.get("emulation", {}).get("calibration", {}))
        return found.rows[p.mode]

    checks = check_designs(picked, measure)
    return PlanBench(
        device.name, link_profile.name, design_name(recommended) if recommended else None,
        tuple(checks), {"plan": plan.calibrations, "runs": calibrations}, device_impl,
    )  # fmt: skip
