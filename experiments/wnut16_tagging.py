"""Token classification: the packaged all-MiniLM-L6-v2 fine-tuned for named entities on the built-in WNUT 2016 tweets
with every correction, fixed against learned strengths, over seeds.

Units (small: one core each, side by side):

- `wnut16/<variant>/seed<s>`: MiniLM fine-tuned on the 1,915 training tweets of `wnut16` (10 entity types, IOB2; a
  seeded 20 % held out for evaluation) with that variant (`none`, each registered correction fixed, and each with
  `@learned` strengths), its seqeval entity F1, precision, recall and token accuracy, and its layer profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.plan import FULL, QUICK, Experiment, Plan
from runner.report import pending_notice
from runner.statistics import PERCENT, Results, difference, last_layer_cosine
from runner.units import COMMON_OPTIONS, Unit
from runner.variants import BASELINE, LEARNED, corrections, variant_options

TRAINING = (
    "--task", "token-classification",
    "--dataset_name", "wnut16",
    "--max_seq_length", "128",
    "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "64",
    "--learning_rate", "2e-4",
    "--weight_decay", "0.01",
    "--warmup_steps", "0.1",
)  # fmt: skip
QUALITY = (("f1", "entity F1"), ("precision", "precision"), ("recall", "recall"), ("accuracy", "token accuracy"))


@dataclass(frozen=True)
class TaggingSettings:
    options: tuple[str, ...]  # on top of TRAINING: the training length and any slice


def tagging_settings(size: str) -> TaggingSettings:
    """Two epochs over every training tweet; the quick plan one epoch on a slice, the tiny one a step."""
    return TaggingSettings(
        options={
            FULL: ("--num_train_epochs", "2"),
            QUICK: ("--num_train_epochs", "1", "--max_train_samples", "160", "--max_eval_samples", "80"),
        }.get(size, ("--max_steps", "1", "--max_train_samples", "16", "--max_eval_samples", "12"))
    )


def tagging_variants() -> list[str]:
    """Stock, then every registered correction with fixed and with learned strengths."""
    return [BASELINE, *(name for correction in corrections() for name in (correction, correction + LEARNED))]


def tagging_key(variant: str, seed: int) -> str:
    return f"wnut16/{variant}/seed{seed}"


def tagging_units(plan: Plan) -> list[Unit]:
    """Seed-major, so that a slow spell of the machine touches every variant rather than one."""
    settings: TaggingSettings = plan.settings[TAGGING.name]
    return [
        Unit(
            tagging_key(variant, seed),
            (*variant_options(variant), *TRAINING, "--seed", str(seed), *COMMON_OPTIONS, *settings.options),
        )
        for seed in plan.seeds
        for variant in tagging_variants()
    ]


def metric(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda result: result[name]


def tagging_section(results: Results) -> list[str]:
    plan = results.plan
    stock = results.summary(results.measured([tagging_key(BASELINE, s) for s in plan.seeds]), metric("f1"))
    lines = [
        "## Token classification: WNUT 2016 named entities",
        "",
        "The packaged MiniLM fine-tuned with `finetune.py --task token-classification` on the built-in `wnut16` "
        "(1,915 training and 479 evaluation tweets, 10 entity types; each word's tag on its first sub-word), "
        f"`{' '.join(plan.settings[TAGGING.name].options)}`, batch 16, learning rate 2e-4; every correction with "
        "fixed and with learned strengths. Scores in % (seqeval: entity-level F1, precision, recall; token "
        "accuracy), mean ± std over seeds; Δ F1 to `none` in points ± its standard error (`*`: beyond two "
        "standard errors).",
        "",
        *pending_notice(results, [unit.key for unit in tagging_units(plan)]),
    ]
    lines += [
        "| variant | strength | seeds | " + " | ".join(title for _, title in QUALITY) + " | Δ F1 | last-layer cosine |",
        "|---|---|---:|" + "---:|" * (len(QUALITY) + 2),
    ]
    for variant in tagging_variants():
        keys = results.measured([tagging_key(variant, s) for s in plan.seeds])
        name, strength = variant.removesuffix(LEARNED), "learned" if variant.endswith(LEARNED) else "fixed"
        if not keys:
            lines.append(f"| {name} | {strength} | 0 | " + " | ".join(["—"] * (len(QUALITY) + 2)) + " |")
            continue
        scores = [results.summary(keys, metric(key)).format(1, PERCENT) for key, _ in QUALITY]
        delta = difference(results.summary(keys, metric("f1")), stock) if variant != BASELINE else "—"
        cosine = results.summary(keys, last_layer_cosine).format(3)
        lines.append(f"| {name} | {strength} | {len(keys)} | " + " | ".join([*scores, delta, cosine]) + " |")
    return [*lines, ""]


def tagging_findings(results: Results) -> list[str]:
    """Each corrected variant's entity-F1 difference to stock, over the seeds measured so far."""
    seeds = results.plan.seeds
    stock = results.summary(results.measured([tagging_key(BASELINE, s) for s in seeds]), metric("f1"))
    cells = []
    for variant in tagging_variants()[1:]:
        keys = results.measured([tagging_key(variant, s) for s in seeds])
        if keys and stock.values:
            label = f"`{variant.removesuffix(LEARNED)}` {'learned' if variant.endswith(LEARNED) else 'fixed'}"
            cells.append(f"{label} {difference(results.summary(keys, metric('f1')), stock)} ({len(keys)} seeds)")
    if not cells:
        return []
    return [
        f"- WNUT 2016 tagging, entity F1 Δ to `none` ({stock.format(1, PERCENT)} % over {len(stock.values)} seeds): "
        + "; ".join(cells)
        + "."
    ]


TAGGING = Experiment(
    name="wnut16_tagging",
    settings=tagging_settings,
    units=tagging_units,
    section=tagging_section,
    findings=tagging_findings,
    report_needs_every_unit=False,
)
