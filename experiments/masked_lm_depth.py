"""Masked-language models (BERT's objective) trained from scratch on the built-in text corpus at several
depths, every correction alone and the gate fusion against `none`, and the learned strengths of the best two.

Units (small: one core each, side by side, deepest first):

- `mlm/d<depth>/<variant>/seed<s>`: a BERT of that depth trained from scratch with `finetune.py --task fill-mask`
  on `text_corpus` (Rotten Tomatoes snippets and BBC News articles) with the packaged MiniLM's tokenizer; its
  held-out masked-token accuracy and perplexity, the layer profile of the unmasked evaluation texts, and the accuracy
  of always predicting the training texts' most frequent token (the trivial baseline).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
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
from runner.units import COMMON_OPTIONS, Unit, measure_profile
from runner.variants import BASELINE, LEARNED, is_fusion, variant_options, variants

from hf_centered.data import minilm_dir
from hf_centered.finetuning import FinetuneArguments
from hf_centered.tasks.base import IGNORED_LABEL, TaskData

MLM_ARCHITECTURE = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "sparse_prediction": True,  # the vocabulary projection of the masked positions only: same loss, faster steps
}
MLM_TRAINING = (
    "--task", "fill-mask",
    "--dataset_name", "text_corpus",
    "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "128",
    "--learning_rate", "1e-3",
    "--weight_decay", "0.01",
    "--warmup_steps", "0.06",
)  # fmt: skip
# The best two corrections at 32 layers in experiment 2 (DGN, then centered attention): their learned strengths too.
LEARNED_OF = ("dgn", "centered")
MLM_IMAGE = "masked_lm_depth.png"
MOST_FREQUENT = "most_frequent_token_accuracy"


@dataclass(frozen=True)
class MaskedLMSettings:
    depths: tuple[int, ...]
    variants: tuple[str, ...]
    steps: int
    max_seq_length: int
    options: tuple[str, ...]  # on top of the masked-LM recipe: the corpus slices


def masked_lm_settings(size: str) -> MaskedLMSettings:
    """Every correction alone, the gate fusion and the learned strengths of `LEARNED_OF`. The full plan trains on every
    training text; the quick one shallow models briefly on a slice; the tiny one a step of a 1- and a 2-layer model."""
    corrected = (*(name for name in variants() if not is_fusion(name)), "gate")
    return MaskedLMSettings(
        depths={FULL: (2, 4, 8, 16, 24), QUICK: (2, 4), TINY: (1, 2)}[size],
        variants=(*corrected, *(name + LEARNED for name in LEARNED_OF)),
        steps={FULL: 500, QUICK: 10, TINY: 1}[size],
        max_seq_length={FULL: 64, QUICK: 64, TINY: 16}[size],
        options={
            FULL: ("--max_train_samples", "15033", "--max_eval_samples", "1000"),  # 15,033: every text of the corpus
            QUICK: ("--max_train_samples", "320", "--max_eval_samples", "100"),
            TINY: ("--max_train_samples", "32", "--max_eval_samples", "24"),
        }[size],
    )


def mlm_key(depth: int, variant: str, seed: int) -> str:
    return f"mlm/d{depth}/{variant}/seed{seed}"


def measure_profile_and_most_frequent(
    model: torch.nn.Module, data: TaskData, args: FinetuneArguments, sequences: int
) -> dict[str, Any]:
    """The default profile, and the masked-token accuracy of always answering the most frequent (non-special) token
    of the training texts: what a model that learned only token frequencies scores."""
    counts: Counter[int] = Counter()
    for ids, special in zip(data.train["input_ids"], data.train["special_tokens_mask"], strict=True):
        counts.update(token for token, is_special in zip(ids, special, strict=True) if not is_special)
    most_frequent = counts.most_common(1)[0][0]
    labels = [label for row in data.evaluation["labels"] for label in row if label != IGNORED_LABEL]
    return {
        **measure_profile(model, data, args, sequences),
        MOST_FREQUENT: sum(label == most_frequent for label in labels) / len(labels),
    }


def mlm_unit(plan: Plan, depth: int, variant: str, seed: int) -> Unit:
    """The masked LM of `depth` layers with `variant` (any name `variant_options` reads) and `seed`."""
    settings: MaskedLMSettings = plan.settings[MASKED_LM_DEPTH.name]
    architecture = json.dumps({**MLM_ARCHITECTURE, "num_hidden_layers": depth}, separators=(",", ":"))
    options = (
        "--architecture", architecture,
        *variant_options(variant),
        *MLM_TRAINING,
        "--max_seq_length", str(settings.max_seq_length),
        "--max_steps", str(settings.steps),
        "--seed", str(seed),
        *COMMON_OPTIONS,
        *settings.options,
    )  # fmt: skip
    # The tokenizer's folder is this machine's: outside the cache key, so that the committed results hold anywhere.
    return Unit(
        mlm_key(depth, variant, seed),
        options,
        local_options=("--tokenizer_name", minilm_dir()),
        cost=depth + 2,  # embeddings and the masked-LM head cost about two layers a step
        measure=measure_profile_and_most_frequent,
    )


def masked_lm_units(plan: Plan) -> list[Unit]:
    settings: MaskedLMSettings = plan.settings[MASKED_LM_DEPTH.name]
    return [
        mlm_unit(plan, depth, variant, seed)
        for depth in settings.depths
        for seed in plan.seeds
        for variant in settings.variants
    ]


def perplexity_of(result: dict[str, Any]) -> float:
    return result["perplexity"]


def last_layer_rank(result: dict[str, Any]) -> float:
    return result["profile"]["effective_rank"][-1]


# (title, value, scale, digits) of each table and plot panel
METRICS = (
    ("Masked-token accuracy (%)", accuracy_of, PERCENT, 1),
    ("Perplexity of the masked tokens", perplexity_of, 1.0, 0),
    ("Last-layer mean pairwise cosine similarity", last_layer_cosine, 1.0, 3),
    ("Last-layer effective rank", last_layer_rank, 1.0, 1),
)


def measured_summary(results: Results, depth: int, variant: str, value) -> Summary:
    """`value` over the seeds measured so far (no values: none yet)."""
    keys = results.measured([mlm_key(depth, variant, s) for s in results.plan.seeds])
    return results.summary(keys, value)


def measured_units(results: Results) -> list[str]:
    """The keys of this experiment's units measured so far, in plan order."""
    return results.measured([unit.key for unit in masked_lm_units(results.plan)])


def most_frequent_token_accuracy(results: Results) -> Summary:
    """The most-frequent-token baseline over the seeds measured (it depends on the seed's split only)."""
    by_seed = {key.rsplit("/", 1)[1]: results[key][MOST_FREQUENT] for key in measured_units(results)}
    return Summary(list(by_seed.values()))


def plot_masked_lm(results: Results) -> None:
    plt = pyplot()
    settings: MaskedLMSettings = results.plan.settings[MASKED_LM_DEPTH.name]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    depths = sorted(settings.depths)
    for index, variant in enumerate(settings.variants):
        for axis, (_, value, scale, _) in zip(axes.flat, METRICS, strict=True):
            summaries = [measured_summary(results, d, variant, value) for d in depths]
            style = dict(scale=scale, linestyle="--" if variant.endswith(LEARNED) else "-", label=variant)
            plot_against_depth(axis, depths, summaries, index, len(settings.variants), 0.02, **style)
    for axis, (title, *_) in zip(axes.flat, METRICS, strict=True):
        depth_axis(axis, depths, title)
    axes[0][0].legend(fontsize=8)
    seeds = seed_count(len(results.plan.seeds))
    figure.suptitle(f"BERT masked LM from scratch on text_corpus: mean ± std over {seeds}")
    figure.tight_layout()
    save_figure(figure, results.plan.images_dir / MLM_IMAGE)


def masked_lm_section(results: Results) -> list[str]:
    plan = results.plan
    settings: MaskedLMSettings = plan.settings[MASKED_LM_DEPTH.name]
    depths = sorted(settings.depths)
    plot_masked_lm(results)
    most_frequent = most_frequent_token_accuracy(results)
    lines = [
        "## Masked-LM depth sweep: BERT from scratch on the text corpus",
        "",
        f"`{'`, `'.join(settings.variants)}`: every correction alone, the gate fusion, and the learned strengths "
        f"of the two best corrections at 32 layers in experiment 2 ({' and '.join(LEARNED_OF)}). Always answering "
        f"the most frequent training token scores {most_frequent.format(1, PERCENT)} % masked-token accuracy.",
        "",
        *pending_notice(results, [unit.key for unit in masked_lm_units(plan)]),
    ]
    image = image_link(plan, plan.images_dir / MLM_IMAGE)
    lines += [f"![masked-token accuracy, perplexity and last-layer profile against depth]({image})", ""]
    lines += metric_tables(results, depths, settings.variants, METRICS, partial(measured_summary, results))
    accuracy_at = partial(measured_summary, results, value=accuracy_of)
    lines += difference_table("Accuracy", depths, settings.variants, accuracy_at)
    return [*lines, ""]


def text_setup(results: Results) -> list[str]:
    settings: MaskedLMSettings = results.plan.settings[MASKED_LM_DEPTH.name]
    measured = measured_units(results)
    examples = (
        f"{results[measured[0]]['train_examples']} training and {results[measured[0]]['eval_examples']} held-out texts"
        if measured
        else "the corpus's texts"
    )
    return [
        f"- Masked LM: BERT from scratch (width {MLM_ARCHITECTURE['hidden_size']}, "
        f"{MLM_ARCHITECTURE['num_attention_heads']} heads, MLP {MLM_ARCHITECTURE['intermediate_size']}, the "
        "vocabulary projection of the masked positions only), the packaged MiniLM's uncased WordPiece tokenizer, "
        f"`text_corpus` (Rotten Tomatoes snippets and BBC News articles): {examples}, each cut to "
        f"{settings.max_seq_length} tokens; 15 % of the tokens masked (80 % [MASK], 10 % random, 10 % kept), the "
        f"held-out texts masked once for every unit; {settings.steps} steps of batch "
        f"{option_value('--per_device_train_batch_size')}, learning rate {option_value('--learning_rate')} "
        f"({float(option_value('--warmup_steps')):.0%} warm-up, then linear decay), weight decay "
        f"{option_value('--weight_decay')}."
    ]


def option_value(name: str) -> str:
    return MLM_TRAINING[MLM_TRAINING.index(name) + 1]


def profiled_texts(results: Results) -> str:
    measured = measured_units(results)
    count = results[measured[0]]["profile_sequences"] if measured else results.plan.profile_sequences
    return f"{count} held-out corpus texts (unmasked)"


def masked_lm_findings(results: Results) -> list[str]:
    """Stock accuracy against depth and the trivial baseline, then the best variant of each depth measured."""
    settings: MaskedLMSettings = results.plan.settings[MASKED_LM_DEPTH.name]
    if not measured_units(results):
        return []
    stock = {d: measured_summary(results, d, BASELINE, accuracy_of) for d in sorted(settings.depths)}
    stock = {d: summary for d, summary in stock.items() if summary.values}
    lines = []
    if stock:
        cells = ", ".join(f"{summary.mean * PERCENT:.1f} % at depth {d}" for d, summary in stock.items())
        lines.append(
            f"- Masked LM from scratch, `none`: masked-token accuracy {cells}; the most frequent token scores "
            f"{most_frequent_token_accuracy(results).mean * PERCENT:.1f} %."
        )
    for depth, base in stock.items():
        summaries = {v: measured_summary(results, depth, v, accuracy_of) for v in settings.variants}
        best = max((v for v, s in summaries.items() if s.values), key=lambda v: summaries[v].mean)
        cosine = measured_summary(results, depth, best, last_layer_cosine).mean
        stock_cosine = measured_summary(results, depth, BASELINE, last_layer_cosine).mean
        lines.append(
            f"- Masked LM, depth {depth}: best `{best}` at {summaries[best].format(1, PERCENT)} %; against `none` "
            f"{difference(summaries[best], base)} points; last-layer cosine {cosine:.3f} (`none` {stock_cosine:.3f})."
        )
    return lines


MASKED_LM_DEPTH = Experiment(
    name="masked_lm_depth",
    settings=masked_lm_settings,
    units=masked_lm_units,
    section=masked_lm_section,
    setup=text_setup,
    profiled=profiled_texts,
    findings=masked_lm_findings,
    report_needs_every_unit=False,
)
