"""Experiment 4: pretrained-safe corrections. Every correction (and `all` of them at once) with fixed against learned
strengths (`correction_strength="learned"`), on MiniLM fine-tuned on Rotten Tomatoes and on the deepest ViTs of the
depth sweep.

Units: `text/<variant>[@learned]/seed<s>` (the MiniLM recipe of experiment 3, more seeds) and
`vit/d<depth>/<variant>[@learned]/seed<s>` (the ViT recipe of experiment 2); a learned unit's result also holds the
learned strengths. The report shows them as far as they are measured, so that a partial run already reports.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from minilm import text_unit
from runner.plan import FULL, QUICK, Experiment, Plan
from runner.report import image_link, pyplot, save_figure
from runner.statistics import PERCENT, Results, accuracy_of, difference
from runner.units import Unit
from runner.variants import ALL_AT_ONCE, BASELINE, LEARNED, corrections, default_value
from vit_digits import DEPTH_SWEEP, vit_key, vit_unit

STRENGTH_IMAGE = "learned_strengths.png"


@dataclass(frozen=True)
class StrengthSettings:
    seeds: tuple[int, ...]  # of the text units
    vit_depths: tuple[int, ...]  # of the ViT units, with the plan's seeds


def strength_settings(size: str) -> StrengthSettings:
    if size == FULL:
        return StrengthSettings(seeds=(42, 43, 44, 45, 46), vit_depths=(16, 32))
    return StrengthSettings(seeds=(42,), vit_depths=(4,) if size == QUICK else (2,))


def strength_variants() -> list[str]:
    """The corrected variants: every registered correction alone, then all of them at once."""
    return [*corrections(), ALL_AT_ONCE]


def strength_rows() -> list[str]:
    """The text variants in table order: stock, then each corrected variant fixed and learned."""
    return [BASELINE, *(name for variant in strength_variants() for name in (variant, variant + LEARNED))]


def vit_variants(plan: Plan) -> list[str]:
    """The depth sweep's variants, then the learned version of each corrected one."""
    swept = plan.settings[DEPTH_SWEEP.name].variants
    return [*swept, *(variant + LEARNED for variant in swept if variant != BASELINE)]


def strength_units(plan: Plan) -> list[Unit]:
    """Seed-major like the other text units."""
    settings: StrengthSettings = plan.settings[LEARNED_STRENGTHS.name]
    variants = [BASELINE, *strength_variants(), *(variant + LEARNED for variant in strength_variants())]
    text = [text_unit(plan, variant, seed) for seed in settings.seeds for variant in variants]
    vit = [
        vit_unit(plan, depth, variant, seed)
        for depth in settings.vit_depths
        for seed in plan.seeds
        for variant in vit_variants(plan)
    ]
    return text + vit


def text_section(results: Results) -> list[str]:
    plan = results.plan
    settings: StrengthSettings = plan.settings[LEARNED_STRENGTHS.name]
    own_keys = [unit.key for unit in strength_units(plan)]
    pending = len(own_keys) - len(results.measured(own_keys))
    stock_keys = results.measured([f"text/{BASELINE}/seed{s}" for s in settings.seeds])
    stock = results.summary(stock_keys, accuracy_of)
    stock_times = {key.rsplit("/", 1)[1]: results[key]["train_seconds"] for key in stock_keys}
    lines = [
        "## Experiment 4: pretrained-safe corrections (learned strengths)",
        "",
        '`correction_strength="learned"` multiplies every correction\'s strength by gates that start at 0 (one per '
        "layer, one per head for centered attention and NeuTRENO; `strength_gate_scale` = "
        f"{default_value('strength_gate_scale'):g}), so the converted MiniLM starts as the pretrained one. "
        f"Experiment 3's recipe, seeds {', '.join(map(str, settings.seeds))}; `all` combines every correction. "
        "Accuracy and macro-F1 in %, mean ± std; Δ accuracy to `none` in points ± its standard error (`*`: beyond "
        "two standard errors); training time relative to `none` of the same seed (median, min–max).",
        "",
    ]
    if pending:
        lines += [
            f"*{pending} of this experiment's units are not measured yet (the rows show the seeds measured); "
            "`python experiments/run_all.py` measures them, resuming from the committed cache.*",
            "",
        ]
    lines += [
        "| variant | strength | seeds | accuracy | macro-F1 | Δ accuracy | training time / `none` |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant in strength_rows():
        keys = results.measured([f"text/{variant}/seed{s}" for s in settings.seeds])
        name, strength = variant.removesuffix(LEARNED), "learned" if variant.endswith(LEARNED) else "fixed"
        if not keys:
            lines.append(f"| {name} | {strength} | 0 | — | — | — | — |")
            continue
        summary = results.summary(keys, accuracy_of)
        f1 = results.summary(keys, lambda r: r["f1_macro"]).format(1, PERCENT)
        ratios = [
            results[key]["train_seconds"] / stock_times[key.rsplit("/", 1)[1]]
            for key in keys
            if key.rsplit("/", 1)[1] in stock_times
        ]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "—"
        delta = difference(summary, stock) if variant != BASELINE else "—"
        lines.append(f"| {name} | {strength} | {len(keys)} | {summary.format(1, PERCENT)} | {f1} | {delta} | {ratio} |")
    lines.append("")
    image = plan.images_dir / STRENGTH_IMAGE
    if plot_learned_strengths(results, image):
        lines += [
            "Learned strengths per layer (the configured strength times the gate; mean over heads and seeds, bars: "
            "min–max over the heads and seeds). 0 is the stock model; a negative strength is the opposite "
            "correction:",
            "",
            f"![learned strengths per layer]({image_link(plan, image)})",
            "",
        ]
    return lines


def vit_section(results: Results) -> list[str]:
    plan = results.plan
    settings: StrengthSettings = plan.settings[LEARNED_STRENGTHS.name]
    if not settings.vit_depths:
        return []
    depths = sorted(settings.vit_depths)
    lines = [
        "### The ViT from scratch with learned strengths",
        "",
        "Experiment 2's ViT at the deepest depths; from scratch the gates start at 0 too, so each corrected model "
        "begins as the stock one. Test accuracy (%), mean ± std over the seeds measured:",
        "",
        "| variant | " + " | ".join(f"depth {d}: fixed | depth {d}: learned" for d in depths) + " |",
        "|---|" + "---:|---:|" * len(depths),
    ]
    for variant in plan.settings[DEPTH_SWEEP.name].variants:
        cells = []
        for depth in depths:
            for suffix in ("", LEARNED):
                if variant == BASELINE and suffix:
                    cells.append("—")
                    continue
                keys = results.measured([vit_key(depth, variant + suffix, s) for s in plan.seeds])
                cells.append(results.summary(keys, accuracy_of).format(1, PERCENT) if keys else "—")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def strength_section(results: Results) -> list[str]:
    return text_section(results) + vit_section(results)


def plot_learned_strengths(results: Results, path: Path) -> bool:
    """Mean learned strength per layer for each correction (text units); False when none is measured yet."""
    seeds = results.plan.settings[LEARNED_STRENGTHS.name].seeds
    per_correction: dict[str, dict[str, list[float]]] = {}
    for variant in strength_variants():
        for key in results.measured([f"text/{variant}{LEARNED}/seed{s}" for s in seeds]):
            for correction, places in results[key]["strengths"].items():
                label = correction if variant == correction else f"{correction} (in all)"
                for place, values in places.items():
                    per_correction.setdefault(label, {}).setdefault(place, []).extend(values)
    if not per_correction:
        return False
    figure, axis = pyplot().subplots(figsize=(7, 4))
    for label, places in per_correction.items():
        names = list(places)
        means = [statistics.fmean(places[p]) for p in names]
        low = [m - min(places[p]) for m, p in zip(means, names, strict=True)]
        high = [max(places[p]) - m for m, p in zip(means, names, strict=True)]
        positions = [int(p.split()[1]) if p.startswith("layer") else len(names) for p in names]
        style = "--" if "(in all)" in label else "-"
        axis.errorbar(positions, means, yerr=[low, high], fmt=style, marker="o", markersize=3, capsize=2, label=label)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xlabel("layer (0-based)")
    axis.set_ylabel("learned strength")
    axis.set_title("MiniLM on Rotten Tomatoes: learned correction strengths")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
    return True


def strength_findings(results: Results) -> list[str]:
    """Fixed against learned on Rotten Tomatoes, over the seeds measured so far (nothing before the first learned
    unit)."""
    seeds = results.plan.settings[LEARNED_STRENGTHS.name].seeds
    stock = results.summary(results.measured([f"text/{BASELINE}/seed{s}" for s in seeds]), accuracy_of)
    cells = []
    for variant in strength_variants():
        for suffix in ("", LEARNED):
            keys = results.measured([f"text/{variant}{suffix}/seed{s}" for s in seeds])
            if keys:
                summary = results.summary(keys, accuracy_of)
                label = f"`{variant}` {'learned' if suffix else 'fixed'}"
                cells.append(f"{label} {difference(summary, stock)} ({len(keys)} seeds)")
    if not any("learned" in cell for cell in cells):
        return []
    return [
        f"- Rotten Tomatoes, fixed against learned strengths (accuracy Δ to `none`, {len(stock.values)} stock seeds): "
        + "; ".join(cells)
        + "."
    ]


LEARNED_STRENGTHS = Experiment(
    name="learned_strengths",
    settings=strength_settings,
    units=strength_units,
    section=strength_section,
    findings=strength_findings,
    report_needs_every_unit=False,
)
