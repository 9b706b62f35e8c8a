"""The generated report (between markers in the report file) and the README's headline, and what every
experiment's plots share.

The report is the plan's setup, then each experiment's section in report order, then the findings; the README's
headline shows the experiments' headline images and the same findings.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hf_centered.reporting import machine_description, write_generated_section
from runner import REPO_ROOT
from runner.cache import ResultCache
from runner.plan import Plan
from runner.statistics import PERCENT, Results, Summary, difference
from runner.variants import BASELINE, MAIN_FIELD, default_value

REPORT_BEGIN, REPORT_END = "<!-- experiments/run_all.py: begin -->", "<!-- experiments/run_all.py: end -->"
HEADLINE_BEGIN = "<!-- experiments/run_all.py: headline begin -->"
HEADLINE_END = "<!-- experiments/run_all.py: headline end -->"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported when a plot is drawn: the runs do not need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> None:
    """Writes `figure` at the report's resolution and frees it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot().close(figure)


def image_link(plan: Plan, path: Path) -> str:
    """`path` as the report links it (relative to the report's folder)."""
    return os.path.relpath(path, plan.report_path.parent)


def machines_line(machines: list[dict[str, str]]) -> str:
    """The distinct machines the invocations ran on (units of one plan may come from several), with how many ran on
    each when there is more than one."""
    counts = Counter(
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, transformers {machine['transformers']}"
        for machine in machines
    )
    if len(counts) == 1:
        return f"Machine: {next(iter(counts))}"
    return "Machines: " + "; ".join(f"{name} ({count} invocation{'s' * (count > 1)})" for name, count in counts.items())


def setup_section(results: Results) -> list[str]:
    """What the experiments share (seeds, machine, method defaults), each experiment's setup, what is profiled."""
    plan = results.plan
    invocations = results.cache.data["invocations"]
    machines = machines_line([entry["machine"] for entry in invocations] or [machine_description()])
    total = sum(entry["wall_seconds"] for entry in invocations)
    config_defaults = ", ".join(f"{name} = {default_value(name):g}" for name in MAIN_FIELD.values())
    lines = [
        "## Setup",
        "",
        f"- Plan `{plan.name}`: seeds {', '.join(map(str, plan.seeds))}. A seed sets the weight initialisation, the "
        "data order and the train/evaluation split. Mean ± sample standard deviation over the seeds.",
        f"- {machines}, fp32. Wall time of the run(s) that produced these results: {total / 60:.1f} min over "
        f"{len(invocations)} invocation(s).",
        f"- Method hyper-parameters, unless swept: the configuration defaults ({config_defaults}, dgn_groups = "
        f"{default_value('dgn_groups')}, contranorm_tau = {default_value('contranorm_tau'):g}); every layer corrected.",
    ]
    lines.append(compute_line(results))
    for experiment in plan.experiments:
        lines += experiment.setup(results)
    profiled = [experiment.profiled(results) for experiment in plan.experiments if experiment.profiled is not None]
    if profiled:
        inputs = profiled[-1] if len(profiled) == 1 else f"{', '.join(profiled[:-1])} or {profiled[-1]}"
        lines.append(
            f"- Profiles: the first {inputs}, every real token, the raw residual stream of each layer. "
            '"Head input" is what the classifier reads: the fused output under a fusion, after ViT\'s final norm.'
        )
    return [*lines, ""]


def compute_line(results: Results) -> str:
    """The core-hours of the units measured and an estimate of those missing: each at its experiment's measured
    seconds per unit of `cost` (one core for units run side by side, every core for those run alone), or at the mean
    rate of all measured units for an experiment with none measured yet."""
    plan = results.plan
    spent: dict[str, float] = {}  # experiment → core-seconds of its measured units
    costs: dict[str, float] = {}  # experiment → total cost of its measured units
    pending: dict[str, list] = {}  # experiment → its units not measured yet
    seen: set[str] = set()
    for experiment in plan.experiments:
        for unit in experiment.units(plan):
            if unit.key in seen:  # shared with an earlier experiment: counted there
                continue
            seen.add(unit.key)
            entry = results.cache.get(unit)
            cores = plan.threads if unit.alone else 1
            if entry is None:
                pending.setdefault(experiment.name, []).append((unit.cost, cores))
            else:
                spent[experiment.name] = spent.get(experiment.name, 0.0) + entry["wall_seconds"] * cores
                costs[experiment.name] = costs.get(experiment.name, 0.0) + unit.cost
    mean_rate = sum(spent.values()) / sum(costs.values()) if costs else 0.0
    estimate = sum(
        cost * (spent[name] / costs[name] if costs.get(name) else mean_rate)
        for name, units in pending.items()
        for cost, _ in units
    )
    measured_hours = sum(spent.values()) / 3600
    line = f"- Compute: the measured units took {measured_hours:.1f} core-hours"
    if pending:
        count = sum(len(units) for units in pending.values())
        line += (
            f"; {count} unit(s) not measured yet, estimated at {estimate / 3600:.1f} core-hours more (each at its "
            "experiment's measured seconds per unit of cost, or the mean rate where none is measured)"
        )
    total = (sum(spent.values()) + estimate) / 3600
    return line + f": about {total / plan.workers:.0f} hours for the whole plan on {plan.workers} cores."


def findings(results: Results) -> list[str]:
    """Bullet sentences derived from the numbers, so that the summary can never disagree with the tables."""
    ordered = sorted(results.plan.experiments, key=lambda experiment: experiment.findings_order)
    return [line for experiment in ordered for line in experiment.findings(results)]


def write_report(plan: Plan) -> Path:
    """Regenerates the report's tables and plots (and the README's headline) from the cached results of `plan`."""
    results = Results(plan, ResultCache(plan.results_path))
    required = {
        unit.key
        for experiment in plan.experiments
        if experiment.report_needs_every_unit
        for unit in experiment.units(plan)
    }
    missing = [key for key in results.missing() if key in required]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SystemExit(f"error: {len(missing)} unit(s) of plan {plan.name} have no cached result ({shown}); run them")
    summary = findings(results)
    generated = [
        f"*Generated by `python experiments/run_all.py{' --quick' if plan.name == 'quick' else ''}` from "
        f"`{os.path.relpath(plan.results_path, REPO_ROOT)}`; do not edit between the markers.*",
        "",
        *setup_section(results),
        *(line for experiment in plan.experiments for line in experiment.section(results)),
        "## Findings (computed from the tables above)",
        "",
        *summary,
    ]
    heading = f"# Results ({plan.name} plan)\n\nOver-smoothing corrections measured offline on this machine."
    write_generated_section(plan.report_path, "\n".join(generated), REPORT_BEGIN, REPORT_END, heading)
    if plan.readme_path is not None:
        from_readme = lambda path: os.path.relpath(path, plan.readme_path.parent)  # noqa: E731
        headline = []
        for experiment in plan.experiments:
            if experiment.headline_image is not None:
                alt, file_name = experiment.headline_image
                headline += [f"![{alt}]({from_readme(plan.images_dir / file_name)})", ""]
        headline += [
            f"From [{from_readme(plan.report_path)}]({from_readme(plan.report_path)}), generated by "
            "`python experiments/run_all.py`:",
            "",
            *summary,
        ]
        write_generated_section(plan.readme_path, "\n".join(headline), HEADLINE_BEGIN, HEADLINE_END)
    return plan.report_path


def depth_header(depths: Sequence[int]) -> list[str]:
    """The two header lines of a table with a column per depth."""
    return ["| variant | " + " | ".join(f"depth {d}" for d in depths) + " |", "|---|" + "---:|" * len(depths)]


def plot_against_depth(
    axis: Any, depths: Sequence[int], summaries: Sequence[Summary], index: int, count: int, spread: float, **style: Any
) -> None:
    """One variant's measured means ± std against depth (log₂ axis), the `index`-th of `count` variants shifted by
    `spread` so that the error bars stand apart; `scale` (in `style`, default 1) multiplies the values."""
    scale = style.pop("scale", 1.0)
    points = [(d, summary) for d, summary in zip(depths, summaries, strict=True) if summary.values]
    offset = 1 + spread * (index - count / 2)
    axis.errorbar(
        [d * offset for d, _ in points],
        [summary.mean * scale for _, summary in points],
        yerr=[(summary.std or 0.0) * scale for _, summary in points],
        marker="o",
        markersize=4,
        capsize=3,
        **style,
    )


def depth_axis(axis: Any, depths: Sequence[int], ylabel: str) -> None:
    """A log₂ depth axis ticked at `depths`, labelled, with a light grid."""
    axis.set_xscale("log", base=2)
    axis.set_xticks(depths, [str(d) for d in depths])
    axis.set_xlabel("depth (layers)")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)


def pending_notice(results: Results, keys: Sequence[str]) -> list[str]:
    """The notice above a partly measured experiment's tables (nothing once all of `keys` are measured)."""
    pending = len(keys) - len(results.measured(keys))
    if not pending:
        return []
    return [
        f"*{pending} of this experiment's {len(keys)} units are not measured yet (the tables show the seeds measured "
        "so far, — where none is); `python experiments/run_all.py` measures them, resuming from the committed cache.*",
        "",
    ]


def depth_table(
    depths: Sequence[int],
    variants: Sequence[str],
    summary_at: Callable[[int, str], Summary],
    digits: int,
    scale: float = 1.0,
) -> list[str]:
    """A table of `summary_at(depth, variant)`, mean ± std: a row per variant, a column per depth."""
    rows = [
        f"| {variant} | " + " | ".join(summary_at(d, variant).format(digits, scale) for d in depths) + " |"
        for variant in variants
    ]
    return [*depth_header(depths), *rows]


def seed_count(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def metric_tables(
    results: Results,
    depths: Sequence[int],
    variants: Sequence[str],
    metrics: Sequence[tuple[str, Callable[[dict[str, Any]], float], float, int]],
    summary_of: Callable[..., Summary],
) -> list[str]:
    """Per (title, value, scale, digits) of `metrics`: its title and its `depth_table` of `summary_of(depth, variant,
    value=value)`; the caption says when a cell has fewer seeds than the plan."""
    seeds = len(results.plan.seeds)
    lines = []
    for title, value, scale, digits in metrics:
        cells = {(d, variant): summary_of(d, variant, value=value) for d in depths for variant in variants}
        complete = all(len(summary.values) == seeds for summary in cells.values())
        over = seed_count(seeds) if complete else f"the seeds measured (of {seeds})"
        lines += [f"{title}, mean ± std over {over}:", ""]
        lines += [*depth_table(depths, variants, lambda d, variant, cells=cells: cells[d, variant], digits, scale), ""]
    return lines


def difference_table(
    title: str,
    depths: Sequence[int],
    variants: Sequence[str],
    summary_at: Callable[[int, str], Summary],
    scale: float = PERCENT,
    unit: str = " in points",
) -> list[str]:
    """`title`'s caption and a table of each variant's difference to `none` (× `scale`, in `unit`) ± its standard
    error (`*`: more than two), a column per depth."""
    rows = [
        f"| {variant} | "
        + " | ".join(difference(summary_at(d, variant), summary_at(d, BASELINE), scale) for d in depths)
        + " |"
        for variant in variants
        if variant != BASELINE
    ]
    caption = f"{title} difference to `none`{unit}, ± its standard error (`*`: more than two standard errors):"
    return [caption, "", *depth_header(depths), *rows]
