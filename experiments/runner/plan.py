"""A plan (what one invocation measures, and where it keeps results, report and scratch outputs) and an experiment
(its settings, its units, its part of the report).

The plan holds what the experiments share; each experiment's own settings sit in `Plan.settings` under its name, as
its module's `settings(size)` returned them for the plan's size, so that a new experiment adds no field here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from runner.units import Unit

if TYPE_CHECKING:
    from runner.statistics import Results


# The sizes of a plan: `full` (docs/RESULTS.md), `quick` (`--quick`: every code path on small slices, minutes) and
# `tiny` (the tests: a step or two of training per unit).
FULL, QUICK, TINY = "full", "quick", "tiny"
SIZES = (FULL, QUICK, TINY)


def no_settings(size: str) -> None:
    """The settings of an experiment that has none of its own."""
    return None


def no_lines(results: Results) -> list[str]:
    """No contribution to a part of the report."""
    return []


@dataclass(frozen=True)
class Experiment:
    """One experiment of the report. Adding one = a module defining it + its line in `run_all.EXPERIMENTS`.

    Its callables read its settings from `plan.settings[name]`. Experiments that share a measurement list the same
    unit (same key, same options); it runs once.
    """

    name: str
    units: Callable[[Plan], list[Unit]]
    section: Callable[[Results], list[str]]  # its report section(s), after writing its plots
    settings: Callable[[str], Any] = no_settings  # (size: FULL, QUICK or TINY) → its settings in a plan of that size
    setup: Callable[[Results], list[str]] = no_lines  # its bullets of the report's "Setup"
    profiled: Callable[[Results], str] | None = None  # its inputs in the Setup's profiles bullet: "256 test images"
    findings: Callable[[Results], list[str]] = no_lines  # its bullets of the findings and the README's headline
    findings_order: int = 0  # the findings list experiments by this number, then in report order
    headline_image: tuple[str, str] | None = None  # (alt text, file in `images_dir`) shown in the README's headline
    # False: the report is written before all of its units are measured (its section shows those that are); the
    # units another experiment lists are still required.
    report_needs_every_unit: bool = True


@dataclass(frozen=True)
class Plan:
    """What one invocation measures, and where it keeps results, report and scratch outputs."""

    name: str
    experiments: tuple[Experiment, ...]  # in report order
    settings: dict[str, Any]  # experiment name → its settings in this plan
    seeds: tuple[int, ...]
    profile_sequences: int
    results_path: Path
    report_path: Path
    images_dir: Path
    scratch_dir: Path
    readme_path: Path | None = None  # gets the headline plot and findings between its own markers
    # Units run alone use every core; the others, one core each, as many at once as there are cores.
    threads: int = field(default_factory=torch.get_num_threads)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


def all_units(plan: Plan) -> list[Unit]:
    """Every experiment's units in report order, a unit shared by several experiments once."""
    units: dict[str, Unit] = {}
    for experiment in plan.experiments:
        for unit in experiment.units(plan):
            if units.setdefault(unit.key, unit) != unit:
                raise ValueError(f"experiment {experiment.name} defines unit {unit.key} unlike an earlier experiment")
    return list(units.values())
