"""The scheduler: runs the units a plan's cache lacks, recording each result as soon as it is in.

Units marked `alone` run one at a time on every core (their training times are compared), in the order the
experiments list them; the others run one per core, as many at once as the plan has workers, longest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from hf_centered.reporting import machine_description
from runner.cache import ResultCache
from runner.plan import Plan, all_units
from runner.units import Unit
from runner.worker import run_in_worker


def run_units(
    units: Sequence[Unit], workers: int, plan: Plan, cache: ResultCache, log: Callable[[str], None]
) -> list[str]:
    """Runs the units not cached yet on `workers` processes; returns the failures (the others are cached)."""
    pending = [unit for unit in units if cache.get(unit) is None]
    if not pending:
        return []
    failures = []
    context = get_context("spawn")  # fork would copy the parent's torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {
            pool.submit(
                run_in_worker, unit, str(plan.scratch_dir), plan.profile_sequences, plan.threads if unit.alone else 1
            ): unit
            for unit in pending
        }
        for done, future in enumerate(as_completed(futures), start=1):
            unit = futures[future]
            try:
                result, summary, wall_seconds = future.result()
            except BrokenProcessPool:
                raise
            except Exception as error:
                failures.append(f"{unit.key}: {error}")
                log(f"[{done}/{len(pending)}] {unit.key} FAILED: {error}")
                continue
            cache.put(unit, result, wall_seconds)
            log(f"[{done}/{len(pending)}] {unit.key}: {summary}{wall_seconds:.0f} s")
    return failures


def run_plan(plan: Plan, log: Callable[[str], None] = print) -> list[str]:
    """Runs every missing unit of `plan`, recording the invocation with each result, and returns the failures."""
    cache = ResultCache(plan.results_path)
    units = all_units(plan)
    missing = sum(cache.get(unit) is None for unit in units)
    log(f"plan {plan.name}: {len(units)} units, {missing} to run; results in {plan.results_path}")
    cache.start_invocation(machine_description())
    failures = run_units([unit for unit in units if unit.alone], 1, plan, cache, log)
    side_by_side = sorted((unit for unit in units if not unit.alone), key=lambda unit: -unit.cost)
    failures += run_units(side_by_side, plan.workers, plan, cache, log)
    return failures
