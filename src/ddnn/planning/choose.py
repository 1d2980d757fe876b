"""Choosing among predictions: budgets, the Pareto front, a recommendation or what no design can
meet. Pure functions: a budget nothing meets is an answer (which budget, by how much), not an
error."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ddnn.errors import DdnnError
from ddnn.planning.predict import Prediction

LATENCY_STATS = ("mean", "p95")


@dataclass(frozen=True)
class Budgets:
    """Limits a deployment must meet; None: no limit."""

    max_latency_ms: float | None = None
    min_accuracy: float | None = None  # a fraction, 0..1
    max_device_ram_kb: float | None = None
    max_bytes: float | None = None  # MQTT bytes sent upward per sample
    latency: str = "mean"  # which T_total the latency budget limits: mean or p95

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_STATS:
            raise DdnnError(f"latency statistic {self.latency!r}; valid: {LATENCY_STATS}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise DdnnError(
                f"--min-accuracy {self.min_accuracy:g}: give a fraction in [0, 1], e.g. 0.88"
            )
        for name in ("max_latency_ms", "max_device_ram_kb", "max_bytes"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise DdnnError(f"--{name.replace('_', '-')} {value:g} must be >= 0")


@dataclass(frozen=True)
class Miss:
    """A budget no design meets (with the other budgets met where some design meets them)."""

    budget: str  # the flag
    limit: float
    best: float | None  # the closest any design comes; None: no design states the value
    by: float | None  # how far the closest design is from the limit (same unit)
    unit: str

    def text(self) -> str:
        if self.best is None:
            return f"{self.budget} {self.limit:g}: no design states this value"
        return (
            f"{self.budget} {self.limit:g} {self.unit}: the best design reaches "
            f"{self.best:.4g} {self.unit}, missing it by {self.by:.4g} {self.unit}"
        )


@dataclass(frozen=True)
class Choice:
    recommended: Prediction | None
    front: tuple[Prediction, ...]
    misses: tuple[Miss, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended.to_dict() if self.recommended else None,
            "front": [p.to_dict() for p in self.front],
            "misses": [asdict(m) for m in self.misses],
        }


def latency_of(p: Prediction, stat: str) -> float:
    return p.t_total_ms.mean if stat == "mean" else p.t_total_ms.p95


def _ram_kb(p: Prediction) -> float | None:
    if p.device_ram_bytes is None:
        return 0.0 if p.local_exit_fraction == 0.0 and p.threshold is None else None
    return p.device_ram_bytes / 1024


# (flag, Budgets field, value of a prediction, larger is better, unit)
Rule = tuple[str, str, Callable[[Prediction, Budgets], float | None], bool, str]
RULES: tuple[Rule, ...] = (
    ("--max-latency-ms", "max_latency_ms", lambda p, b: latency_of(p, b.latency), False, "ms"),
    ("--min-accuracy", "min_accuracy", lambda p, b: p.accuracy, True, ""),
    ("--max-device-ram-kb", "max_device_ram_kb", lambda p, b: _ram_kb(p), False, "KiB"),
    ("--max-bytes", "max_bytes", lambda p, b: p.mqtt_bytes_per_sample, False, "B/sample"),
)


def shortfall(p: Prediction, budgets: Budgets, rule: Rule) -> float | None:
    """How far `p` is from meeting one budget: <= 0 meets it; None: it states no value."""
    _, field, value_of, higher_better, _ = rule
    limit = getattr(budgets, field)
    if limit is None:
        return 0.0
    value = value_of(p, budgets)
    if value is None:
        return None
    return limit - value if higher_better else value - limit


def meets(p: Prediction, budgets: Budgets) -> bool:
    return all((s := shortfall(p, budgets, r)) is not None and s <= 0 for r in RULES)


def pareto_front(preds: Sequence[Prediction], stat: str = "mean") -> list[Prediction]:
    """Designs no other design beats on both latency and accuracy, fastest first."""
    ordered = sorted(preds, key=lambda p: (latency_of(p, stat), -p.accuracy))
    front: list[Prediction] = []
    for p in ordered:
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front


def misses(preds: Sequence[Prediction], budgets: Budgets) -> list[Miss]:
    """For every budget no design meets while meeting the others (or, when no design meets
    the others, no design meets at all): the closest design and the gap."""
    out = []
    for rule in RULES:
        flag, field, value_of, _, unit = rule
        limit = getattr(budgets, field)
        if limit is None:
            continue
        others = [r for r in RULES if r is not rule]
        pool = [
            p for p in preds
            if all((s := shortfall(p, budgets, r)) is not None and s <= 0 for r in others)
        ] or list(preds)  # fmt: skip
        gaps = [(s, p) for p in pool if (s := shortfall(p, budgets, rule)) is not None]
        if gaps and min(s for s, _ in gaps) <= 0:
            continue
        if not gaps:
            out.append(Miss(flag, limit, None, None, unit))
            continue
        gap, closest = min(gaps, key=lambda sp: sp[0])
        out.append(Miss(flag, limit, value_of(closest, budgets), gap, unit))
    return out


def choose(preds: Sequence[Prediction], budgets: Budgets) -> Choice:
    """The most accurate design that meets every budget (ties: the faster, then fewer bytes);
    when none does, the budgets that cannot be met and by how much."""
    front = tuple(pareto_front(preds, budgets.latency))
    ok = [p for p in preds if meets(p, budgets)]
    if ok:
        best = max(
            ok,
            key=lambda p: (p.accuracy, -latency_of(p, budgets.latency), -p.mqtt_bytes_per_sample),
        )
        return Choice(best, front, ())
    found = misses(preds, budgets)
    if not found:  # each budget is met alone by some design, but never all at once
        found = _joint_miss(preds, budgets)
    return Choice(None, front, tuple(found))


def _joint_miss(preds: Sequence[Prediction], budgets: Budgets) -> list[Miss]:
    """Every budget can be met, but not together: the misses of the design that comes closest
    (fewest budgets missed, then the smallest relative gaps)."""

    def cost(p: Prediction) -> tuple[int, float]:
        gaps = [(shortfall(p, budgets, r), getattr(budgets, r[1])) for r in RULES]
        missed = [(g, lim) for g, lim in gaps if g is None or g > 0]
        return len(missed), sum((g or 0.0) / max(abs(lim or 1.0), 1e-9) for g, lim in missed)

    closest = min(preds, key=cost)
    out = []
    for rule in RULES:
        gap = shortfall(closest, budgets, rule)
        if gap is None or gap > 0:
            limit = getattr(budgets, rule[1])
            out.append(Miss(rule[0], limit, rule[2](closest, budgets), gap, rule[4]))
    return out
