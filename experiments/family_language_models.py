"""Language models of other families, corrected through the generic path (`hf_centered.correct`'s classes) and
trained from scratch on the built-in text corpus at several depths: a RoBERTa- and a ModernBERT-style masked LM, and a
Llama-style causal LM; stock against centered attention and NeuTRENO.

Units (small: one core each, side by side, deepest first):

- `family/<family>/d<depth>/<variant>/seed<s>`: the family's model of that depth trained from scratch with
  `finetune.py --architecture '{"model_type": <family>, ...}'` on `text_corpus` with the packaged MiniLM's tokenizer,
  with the masked-LM experiment's recipe (same width, batch, steps, learning rate, texts); `--task fill-mask` for the
  encoders (masked-token accuracy and perplexity), `--task text-generation` for Llama (held-out next-token perplexity
  and accuracy); and the layer profile of the held-out texts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from masked_lm_depth import MLM_ARCHITECTURE, MLM_TRAINING, measure_profile_and_most_frequent
from runner.plan import FULL, QUICK, TINY, Experiment, Plan
from runner.report import (
    depth_axis,
    difference_table,
    image_link,
    metric_tables,
    pending_notice,
    plot_against_depth,
    pyplot,
    save_figure,
    seed_count,
)
from runner.statistics import PERCENT, Results, Summary, accuracy_of, difference, last_layer_cosine
from runner.units import COMMON_OPTIONS, Measure, Unit, measure_profile
from runner.variants import BASELINE, variant_options

from hf_centered.data import minilm_dir

# The packaged MiniLM tokenizer's special tokens, which the families' own defaults do not name.
MINILM_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
WIDTH = {name: MLM_ARCHITECTURE[name] for name in ("hidden_size", "num_attention_heads", "intermediate_size")}


@dataclass(frozen=True)
class Family:
    """One family's model in this experiment: its task, architecture fields (besides the depth) and description."""

    task: str
    architecture: dict[str, Any]
    description: str

    @property
    def causal(self) -> bool:
        return self.task == "text-generation"


FAMILIES = {
    "roberta": Family(
        "fill-mask",
        # RoBERTa's positions start after the padding id: 64 tokens need 66 positions
        {**WIDTH, "vocab_size": 30522, "max_position_embeddings": 66, **MINILM_TOKEN_IDS},
        "RoBERTa-style masked LM (post-LN, learned positions)",
    ),
    "modernbert": Family(
        "fill-mask",
        {
            **WIDTH,
            "vocab_size": 30522,
            "sparse_prediction": True,  # as the BERT masked LM: the masked positions' vocabulary projection only
            **MINILM_TOKEN_IDS,
            "cls_token_id": 101,
            "sep_token_id": 102,
        },
        "ModernBERT-style masked LM (pre-LN, rotary positions, local attention in 2 of 3 layers, GLU)",
    ),
    "llama": Family(
        "text-generation",
        {**WIDTH, "vocab_size": 30522, "max_position_embeddings": 64, **MINILM_TOKEN_IDS},
        "Llama-style causal LM (pre-RMSNorm, rotary positions, SwiGLU)",
    ),
}
VARIANTS = (BASELINE, "centered", "neutreno")
FAMILY_IMAGE = "family_language_models.png"


@dataclass(frozen=True)
class FamilySettings:
    families: tuple[str, ...]
    depths: tuple[int, ...]
    variants: tuple[str, ...]
    steps: int
    max_seq_length: int
    options: tuple[str, ...]  # on top of the recipe: the corpus slices


def family_settings(size: str) -> FamilySettings:
    """Every family at depths 4 to 16 in the full plan (the causal LM's range); the quick one shallow models briefly
    on a slice; the tiny one a step of a 1-layer model, stock and centered."""
    return FamilySettings(
        families=tuple(FAMILIES),
        depths={FULL: (4, 8, 16), QUICK: (2,), TINY: (1,)}[size],
        variants=VARIANTS if size != TINY else VARIANTS[:2],
        steps={FULL: 500, QUICK: 10, TINY: 1}[size],
        max_seq_length={FULL: 64, QUICK: 64, TINY: 16}[size],
        options={
            FULL: ("--max_train_samples", "15033", "--max_eval_samples", "1000"),  # every text of the corpus
            QUICK: ("--max_train_samples", "320", "--max_eval_samples", "100"),
            TINY: ("--max_train_samples", "32", "--max_eval_samples", "24"),
        }[size],
    )


def family_key(family: str, depth: int, variant: str, seed: int) -> str:
    return f"family/{family}/d{depth}/{variant}/seed{seed}"


def training_options(task: str) -> tuple[str, ...]:
    """The masked-LM experiment's recipe with `task`."""
    options = list(MLM_TRAINING)
    options[options.index("--task") + 1] = task
    return tuple(options)


def family_unit(plan: Plan, family: str, depth: int, variant: str, seed: int) -> Unit:
    settings: FamilySettings = plan.settings[FAMILY_LANGUAGE_MODELS.name]
    model = FAMILIES[family]
    architecture = {"model_type": family, **model.architecture, "num_hidden_layers": depth}
    options = (
        "--architecture", json.dumps(architecture, separators=(",", ":")),
        *variant_options(variant),
        *training_options(model.task),
        "--max_seq_length", str(settings.max_seq_length),
        "--max_steps", str(settings.steps),
        "--seed", str(seed),
        *COMMON_OPTIONS,
        *settings.options,
    )  # fmt: skip
    measure: Measure = measure_profile if model.causal else measure_profile_and_most_frequent
    return Unit(
        family_key(family, depth, variant, seed),
        options,
        local_options=("--tokenizer_name", minilm_dir()),
        # the embeddings and the head cost about two layers a step; a causal LM's head scores every position
        cost=depth + (6 if model.causal else 2),
        measure=measure,
    )


def family_units(plan: Plan) -> list[Unit]:
    settings: FamilySettings = plan.settings[FAMILY_LANGUAGE_MODELS.name]
    return [
        family_unit(plan, family, depth, variant, seed)
        for family in settings.families
        for depth in settings.depths
        for seed in plan.seeds
        for variant in settings.variants
    ]


def perplexity_of(result: dict[str, Any]) -> float:
    return result["perplexity"]


def metrics_of(family: str) -> tuple[tuple[str, Any, float, int], ...]:
    """(title, value, scale, digits) of each table and plot panel of `family`, its headline first."""
    if FAMILIES[family].causal:
        quality = (("Held-out perplexity", perplexity_of, 1.0, 0), ("Next-token accuracy (%)", accuracy_of, PERCENT, 1))
    else:
        quality = (
            ("Masked-token accuracy (%)", accuracy_of, PERCENT, 1),
            ("Perplexity of the masked tokens", perplexity_of, 1.0, 0),
        )
    return (*quality, ("Last-layer mean pairwise cosine similarity", last_layer_cosine, 1.0, 3))


def measured_summary(results: Results, family: str, depth: int, variant: str, value) -> Summary:
    keys = results.measured([family_key(family, depth, variant, s) for s in results.plan.seeds])
    return results.summary(keys, value)


def measured_units(results: Results) -> list[str]:
    return results.measured([unit.key for unit in family_units(results.plan)])


def plot_families(results: Results) -> None:
    plt = pyplot()
    settings: FamilySettings = results.plan.settings[FAMILY_LANGUAGE_MODELS.name]
    depths = sorted(settings.depths)
    figure, axes = plt.subplots(2, len(settings.families), figsize=(4.5 * len(settings.families), 7), squeeze=False)
    for column, family in enumerate(settings.families):
        headline, _, cosine = metrics_of(family)
        for row, (title, value, scale, _) in enumerate((headline, cosine)):
            axis = axes[row][column]
            for index, variant in enumerate(settings.variants):
                summaries = [measured_summary(results, family, d, variant, value) for d in depths]
                count = len(settings.variants)
                plot_against_depth(axis, depths, summaries, index, count, 0.03, scale=scale, label=variant)
            depth_axis(axis, depths, title)
            axis.set_title(family if row == 0 else "")
    axes[0][0].legend(fontsize=8)
    seeds = seed_count(len(results.plan.seeds))
    figure.suptitle(f"Other families from scratch on text_corpus: mean ± std over {seeds}")
    figure.tight_layout()
    save_figure(figure, results.plan.images_dir / FAMILY_IMAGE)


def family_section(results: Results) -> list[str]:
    plan = results.plan
    settings: FamilySettings = plan.settings[FAMILY_LANGUAGE_MODELS.name]
    depths = sorted(settings.depths)
    plot_families(results)
    lines = [
        "## Other families: RoBERTa, ModernBERT and Llama from scratch on the text corpus",
        "",
        "The generic path (`hf_centered.correct`) on three families the dedicated classes do not cover, trained from "
        "scratch with the masked-LM experiment's recipe: "
        + "; ".join(f"`{name}`: {FAMILIES[name].description}, `{FAMILIES[name].task}`" for name in settings.families)
        + ".",
        "",
        *pending_notice(results, [unit.key for unit in family_units(plan)]),
    ]
    image = image_link(plan, plan.images_dir / FAMILY_IMAGE)
    lines += [f"![each family's headline metric and last-layer cosine against depth]({image})", ""]
    for family in settings.families:
        lines += [f"### `{family}` ({FAMILIES[family].task})", ""]
        family_summary = partial(measured_summary, results, family)
        lines += metric_tables(results, depths, settings.variants, metrics_of(family), family_summary)
        title, value, scale, _ = metrics_of(family)[0]
        headline_at = partial(family_summary, value=value)
        unit = " in points" if scale == PERCENT else ""
        lines += [
            *difference_table(title.split(" (")[0], depths, settings.variants, headline_at, scale, unit),
            "",
        ]
    return lines


def family_setup(results: Results) -> list[str]:
    settings: FamilySettings = results.plan.settings[FAMILY_LANGUAGE_MODELS.name]
    return [
        f"- Other families: {', '.join(settings.families)} from scratch through the generic path, width "
        f"{WIDTH['hidden_size']}, {WIDTH['num_attention_heads']} heads, MLP {WIDTH['intermediate_size']}, depths "
        f"{', '.join(str(d) for d in settings.depths)}; the masked-LM recipe ({settings.steps} steps, texts cut to "
        f"{settings.max_seq_length} tokens, the packaged MiniLM's tokenizer); the causal LM scores every held-out "
        "token after a text's first."
    ]


def family_findings(results: Results) -> list[str]:
    """Per family: the stock headline metric against depth, and each variant's difference at the deepest measured."""
    settings: FamilySettings = results.plan.settings[FAMILY_LANGUAGE_MODELS.name]
    lines = []
    for family in settings.families:
        title, value, scale, digits = metrics_of(family)[0]
        stock = {d: measured_summary(results, family, d, BASELINE, value) for d in sorted(settings.depths)}
        stock = {d: summary for d, summary in stock.items() if summary.values}
        if not stock:
            continue
        percent = scale == PERCENT
        cells = ", ".join(
            f"{summary.mean * scale:.{digits}f}{' %' if percent else ''} at depth {d}" for d, summary in stock.items()
        )
        deepest = max(stock)
        summaries = {v: measured_summary(results, family, deepest, v, value) for v in settings.variants}
        differences = ", ".join(
            f"`{variant}` {difference(summary, stock[deepest], scale)}"
            for variant, summary in summaries.items()
            if variant != BASELINE
        )
        lines.append(
            f"- `{family}` ({FAMILIES[family].task}), `none`: {title.split(' (')[0].lower()} {cells}; at depth "
            f"{deepest} against `none`{' (points)' if percent else ''}: {differences}."
        )
    return lines


def profiled_texts(results: Results) -> str:
    measured = measured_units(results)
    count = results[measured[0]]["profile_sequences"] if measured else results.plan.profile_sequences
    return f"{count} held-out corpus texts per family"


FAMILY_LANGUAGE_MODELS = Experiment(
    name="family_language_models",
    settings=family_settings,
    units=family_units,
    section=family_section,
    setup=family_setup,
    profiled=profiled_texts,
    findings=family_findings,
    report_needs_every_unit=False,
)
