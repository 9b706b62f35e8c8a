"""Statistics over seeds (mean ± std, differences with the `*` rule) and lookups of the cached results of a plan."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.cache import ResultCache
from runner.plan import Plan, all_units


@dataclass
class Summary:
    """Mean and sample standard deviation over seeds (std is None for one seed)."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def format(self, digits: int = 3, scale: float = 1.0) -> str:
        if not self.values:
            return "—"
        text = f"{self.mean * scale:.{digits}f}"
        return text + (f" ± {self.std * scale:.{digits}f}" if self.std is not None else "")


PERCENT = 100.0  # the scale of a fraction reported in percent (and of its differences, in points)


def difference(summary: Summary, baseline: Summary, scale: float = PERCENT) -> str:
    """Mean difference to the baseline with its standard error; `*` when it exceeds two standard errors."""
    if not summary.values or not baseline.values or summary is baseline:
        return "—"
    delta = (summary.mean - baseline.mean) * scale
    if summary.std is None or baseline.std is None:
        return f"{delta:+.1f}"
    error = math.sqrt(summary.std**2 / len(summary.values) + baseline.std**2 / len(baseline.values)) * scale
    marker = " *" if error > 0 and abs(delta) > 2 * error else ""
    return f"{delta:+.1f} ± {error:.1f}{marker}"


class Results:
    """Looks up cached unit results; a unit of the plan that is missing is an error naming it."""

    def __init__(self, plan: Plan, cache: ResultCache):
        self.plan = plan
        self.cache = cache
        self.units = {unit.key: unit for unit in all_units(plan)}

    def __getitem__(self, key: str) -> dict[str, Any]:
        entry = self.cache.get(self.units[key])
        if entry is None:
            raise KeyError(key)
        return entry["result"]

    def missing(self) -> list[str]:
        return [key for key, unit in self.units.items() if self.cache.get(unit) is None]

    def measured(self, keys: Sequence[str]) -> list[str]:
        """The keys among `keys` whose units have a cached result."""
        return [key for key in keys if self.cache.get(self.units[key]) is not None]

    def summary(self, keys: Sequence[str], value: Callable[[dict[str, Any]], float]) -> Summary:
        return Summary([value(self[key]) for key in keys])


def accuracy_of(result: dict[str, Any]) -> float:
    return result["accuracy"]


def last_layer_cosine(result: dict[str, Any]) -> float:
    return result["profile"]["cosine_similarity"][-1]
