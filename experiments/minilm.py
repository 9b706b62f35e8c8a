"""MiniLM on Rotten Tomatoes: experiment 1 (over-smoothing profiles before and after fine-tuning) and experiment 3
(per-method fine-tuning), which read the same fine-tuned models.

Units (run alone on every core, their training times compared):

- `pretrained/<variant>`: the packaged all-MiniLM-L6-v2 converted with one correction or fusion, not trained,
  profiled on the held-out Rotten Tomatoes snippets of the first seed (experiment 1, "before").
- `text/<variant>/seed<s>`: `finetune.py`'s embedded default recipe (MiniLM, Rotten Tomatoes split by movie) with
  that variant, then the fine-tuned model's accuracy, macro-F1, training time and profile (experiments 1 and 3; the
  learned-strengths experiment adds seeds and variants of the same recipe).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from runner.plan import FULL, QUICK, TINY, Experiment, Plan
from runner.report import image_link, pyplot, save_figure
from runner.statistics import PERCENT, Results, accuracy_of, difference, last_layer_cosine
from runner.units import COMMON_OPTIONS, PROFILE_METRICS, UNIT_RECIPE, Unit
from runner.variants import BASELINE, is_fusion, variant_options, variants

from hf_centered.diagnostics import METRIC_TITLES


@dataclass(frozen=True)
class FinetuningSettings:
    options: tuple[str, ...]  # on top of finetune.py's embedded default recipe
    fusion_seeds: int  # fine-tuning seeds of the fusions (experiment 1 needs one; experiment 3 lists them too)


def finetuning_settings(size: str) -> FinetuningSettings:
    """The quick plan trains on a slice of the snippets, the tiny one a step on a few."""
    options = {
        FULL: (),
        QUICK: ("--max_train_samples", "240", "--max_eval_samples", "120"),
        TINY: ("--max_train_samples", "16", "--max_eval_samples", "12", "--max_steps", "1"),
    }[size]
    return FinetuningSettings(options=options, fusion_seeds=1)


def text_options(plan: Plan, variant: str, seed: int) -> tuple[str, ...]:
    return (*variant_options(variant), "--seed", str(seed), *COMMON_OPTIONS, *plan.settings[FINETUNING.name].options)


def text_unit(plan: Plan, variant: str, seed: int) -> Unit:
    """MiniLM fine-tuned on Rotten Tomatoes with `variant` (any name `variant_options` reads) and `seed`."""
    return Unit(f"text/{variant}/seed{seed}", text_options(plan, variant, seed), alone=True)


def pretrained_unit(plan: Plan, variant: str) -> Unit:
    """The converted MiniLM, profiled on the held-out snippets of the first seed."""
    return Unit(f"pretrained/{variant}", text_options(plan, variant, plan.seeds[0]), train=False, alone=True)


def text_seeds(plan: Plan, variant: str) -> tuple[int, ...]:
    return plan.seeds[: plan.settings[FINETUNING.name].fusion_seeds] if is_fusion(variant) else plan.seeds


# ----------------------------------------------------------------------------------------------------------------------
# Experiment 1: profiles before and after fine-tuning


def profile_units(plan: Plan) -> list[Unit]:
    return [pretrained_unit(plan, variant) for variant in variants()] + [
        text_unit(plan, variant, plan.seeds[0]) for variant in variants()
    ]


def profile_image(plan: Plan, metric: str) -> Path:
    return plan.images_dir / f"profile_{metric}.png"


def plot_profiles_before_after(results: Results, metric: str) -> None:
    plt = pyplot()
    plan = results.plan
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = dict(zip(variants(), plt.cm.tab10.colors, strict=False))
    for axis, title in zip(axes, ("pretrained, converted (before fine-tuning)", "after fine-tuning"), strict=True):
        for variant in variants():
            if title.startswith("pretrained") and is_fusion(variant):
                continue  # a fusion leaves the layers of the pretrained model untouched: its curve is `none`'s
            key = f"pretrained/{variant}" if title.startswith("pretrained") else f"text/{variant}/seed{plan.seeds[0]}"
            series = results[key]["profile"][metric]
            style = "--" if is_fusion(variant) else "-"
            axis.plot(
                range(len(series)), series, style, marker="o", markersize=3, label=variant, color=colours[variant]
            )
        axis.set_title(title)
        axis.set_xlabel("layer (0 = embeddings)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(METRIC_TITLES[metric])
    axes[1].legend(fontsize=8)
    figure.suptitle(f"all-MiniLM-L6-v2 on Rotten Tomatoes: {METRIC_TITLES[metric]} by layer")
    figure.tight_layout()
    save_figure(figure, profile_image(plan, metric))


def profile_section(results: Results) -> list[str]:
    plan = results.plan
    seed = plan.seeds[0]
    lines = [
        "## Experiment 1: over-smoothing profiles of the pretrained MiniLM, before and after fine-tuning",
        "",
        f"Before: the packaged checkpoint converted with each method, not trained. After: the seed-{seed} model of "
        "experiment 3. A fusion leaves the layers of a pretrained model untouched (it only changes what the head "
        "reads), so before fine-tuning its layer curves are `none`'s and are not drawn.",
        "",
    ]
    for metric in PROFILE_METRICS:
        plot_profiles_before_after(results, metric)
        lines += [f"![{METRIC_TITLES[metric]} by layer]({image_link(plan, profile_image(plan, metric))})", ""]
    header = "| variant | " + " | ".join(f"{METRIC_TITLES[m]}, last layer (before → after)" for m in PROFILE_METRICS)
    lines += [
        "Last layer, and the head input's cosine similarity (lower cosine, higher rank and residual = less smoothed):",
        "",
        header + " | head-input cosine (before → after) |",
        "|---|" + "---:|" * (len(PROFILE_METRICS) + 1),
    ]
    for variant in variants():
        before, after = results[f"pretrained/{variant}"], results[f"text/{variant}/seed{seed}"]
        cells = [f"{before['profile'][m][-1]:.3f} → {after['profile'][m][-1]:.3f}" for m in PROFILE_METRICS]
        head = f"{before['head_input']['cosine_similarity']:.3f} → {after['head_input']['cosine_similarity']:.3f}"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {head} |")
    return [*lines, ""]


def text_setup(results: Results) -> list[str]:
    plan = results.plan
    first_text = results[f"text/{BASELINE}/seed{plan.seeds[0]}"]
    options = plan.settings[FINETUNING.name].options
    recipe = {**UNIT_RECIPE, **dict(zip(options[::2], options[1::2], strict=True))}
    return [
        "- Text (experiments 1 and 3): the packaged all-MiniLM-L6-v2 (6 layers, width 384), Rotten Tomatoes snippets "
        f"split by movie, {first_text['train_examples']} training and {first_text['eval_examples']} held-out "
        f"examples, max length {recipe['max_seq_length']}, {recipe['num_train_epochs']} epoch, batch "
        f"{recipe['per_device_train_batch_size']}, learning rate {recipe['learning_rate']:g}, weight decay "
        f"{recipe['weight_decay']:g}, warm-up {recipe['warmup_steps']:g} of the steps (finetune.py's embedded default "
        "recipe)."
    ]


def profiled_text(results: Results) -> str:
    sequences = results[f"text/{BASELINE}/seed{results.plan.seeds[0]}"]["profile_sequences"]
    return f"{sequences} held-out sequences (text)"


def profile_findings(results: Results) -> list[str]:
    seed = results.plan.seeds[0]
    after = {variant: last_layer_cosine(results[f"text/{variant}/seed{seed}"]) for variant in variants()}
    before = last_layer_cosine(results[f"pretrained/{BASELINE}"])
    least = min(after, key=after.get)
    return [
        f"- Fine-tuning raises MiniLM's last-layer cosine similarity (`none`, seed {seed}: {before:.3f} → "
        f"{after[BASELINE]:.3f}); least smoothed after fine-tuning: `{least}` at {after[least]:.3f}."
    ]


PROFILES = Experiment(
    name="profiles",
    units=profile_units,
    section=profile_section,
    setup=text_setup,
    profiled=profiled_text,
    findings=profile_findings,
    findings_order=1,  # an observation on the profiles, after the accuracy findings
)


# ----------------------------------------------------------------------------------------------------------------------
# Experiment 3: per-method fine-tuning


def finetuning_units(plan: Plan) -> list[Unit]:
    """Seed-major order, so that a slow spell of the machine touches every variant rather than one."""
    return [
        text_unit(plan, variant, seed)
        for seed in plan.seeds
        for variant in variants()
        if seed in text_seeds(plan, variant)
    ]


def finetuning_section(results: Results) -> list[str]:
    plan = results.plan
    baseline_times = {seed: results[f"text/{BASELINE}/seed{seed}"]["train_seconds"] for seed in plan.seeds}
    lines = [
        "## Experiment 3: fine-tuning MiniLM on Rotten Tomatoes",
        "",
        f"Accuracy and macro-F1 in %, mean ± std over seeds (per seed: seeds {', '.join(map(str, plan.seeds))} in "
        "order); Δ accuracy to `none` in points ± its standard error (`*`: beyond two standard errors); training "
        "time relative to `none` of the same seed (median, min–max).",
        "",
        "| variant | seeds | accuracy | per seed | macro-F1 | Δ accuracy | training time / `none` |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = results.summary([f"text/{BASELINE}/seed{s}" for s in plan.seeds], accuracy_of)
    for variant in variants():
        seeds = text_seeds(plan, variant)
        keys = [f"text/{variant}/seed{s}" for s in seeds]
        summary = results.summary(keys, accuracy_of)
        f1 = results.summary(keys, lambda r: r["f1_macro"]).format(1, PERCENT)
        ratios = [results[key]["train_seconds"] / baseline_times[s] for key, s in zip(keys, seeds, strict=True)]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        delta = difference(summary, baseline) if variant != BASELINE else "—"
        per_seed = " / ".join(f"{value * PERCENT:.1f}" for value in summary.values)
        lines.append(
            f"| {variant} | {len(seeds)} | {summary.format(1, PERCENT)} | {per_seed} | {f1} | {delta} | {ratio} |"
        )
    mean_time = statistics.fmean(baseline_times.values())
    lines += ["", f"`none` trains in {mean_time:.0f} s on average (one process, all cores).", ""]
    return lines


def finetuning_findings(results: Results) -> list[str]:
    plan = results.plan
    text_base = results.summary([f"text/{BASELINE}/seed{s}" for s in plan.seeds], accuracy_of)
    clear = []
    for variant in variants():
        if is_fusion(variant) or variant == BASELINE:
            continue
        delta = difference(results.summary([f"text/{variant}/seed{s}" for s in plan.seeds], accuracy_of), text_base)
        if delta.endswith("*"):
            clear.append(f"`{variant}` ({delta.removesuffix(' *')} points)")
    return [
        "- Rotten Tomatoes: accuracy differs from `none` by more than two standard errors for "
        + (", ".join(clear) if clear else "no correction")
        + "; every other correction is within two standard errors of it."
    ]


FINETUNING = Experiment(
    name="finetuning",
    settings=finetuning_settings,
    units=finetuning_units,
    section=finetuning_section,
    findings=finetuning_findings,
)
