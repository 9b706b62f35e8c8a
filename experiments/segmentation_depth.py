"""Segmentation depth sweep: `CenteredViTForSemanticSegmentation` (a ViT with Segmenter's linear decoder) trained
from scratch on the built-in digit mosaics at several depths; stock against every correction alone, the gate fusion,
and learned strengths of the two corrections that trained the deepest ViT on digits best (`LEARNED_CORRECTIONS`).

Units (small: one core each, side by side, deepest first):

- `seg/d<depth>/<variant>/seed<s>`: mean IoU, mean class accuracy and pixel accuracy on the evaluation mosaics, and
  the over-smoothing profile of the patch tokens (`measure_patch_profile`: [CLS] left out, as the decoder reads the
  patch tokens only).

The report shows the units measured so far, so that a partial run already reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
from runner.statistics import PERCENT, Results, Summary, difference, last_layer_cosine
from runner.units import COMMON_OPTIONS, PROFILE_METRICS, HeadInput, Unit
from runner.variants import BASELINE, LEARNED, is_fusion, variant_options, variants

from hf_centered.diagnostics import oversmoothing_profile
from hf_centered.finetuning import FinetuneArguments
from hf_centered.tasks.base import TaskData

# configs/segmentation-digit-mosaics.yaml's ViT and training; the canvas (`image_size`) and the depth come from the
# settings.
SEGMENTATION_ARCHITECTURE = {
    "patch_size": 4,
    "num_channels": 1,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
SEGMENTATION_TRAINING = (
    "--task", "image-segmentation",
    "--dataset_name", "digit_mosaics",
    "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64",
    "--learning_rate", "1e-3",
    "--weight_decay", "0.05",
    "--warmup_steps", "0.1",
)  # fmt: skip
# The two best corrections of the ViT on digits at 32 layers (docs/RESULTS.md, experiment 2: DGN 96.8 %, centered
# 87.0 %, stock 51.1 %): the ones also run with learned strengths. A setting, not a ranking computed here, so that the
# units are known before any is measured.
LEARNED_CORRECTIONS = ("dgn", "centered")
SEGMENTATION_IMAGE = "segmentation_depth.png"


@dataclass(frozen=True)
class SegmentationSettings:
    depths: tuple[int, ...]
    mosaic_size: int  # canvas side in pixels, the ViT's image_size
    mosaic_digits: int
    mosaic_images: int  # training and evaluation mosaics together
    epochs: int
    options: tuple[str, ...]  # on top of the recipe


def segmentation_settings(size: str) -> SegmentationSettings:
    """The full plan trains for 500 steps (batch 32): on configs/segmentation-digit-mosaics.yaml's 32×32 mosaics, 300
    steps left a 4-layer ViT at the all-background score. Its 24×24 canvas of 4 digits (36 patches instead of 64)
    costs about a third less and still learns: stock, 4 layers reached a mean IoU of 0.207 (all background: 0.078) in
    44 CPU seconds, 32 layers 0.112 in 170 (one thread, seed 42). The quick plan trains two shallow depths briefly;
    the tiny one a 1- and a 2-layer ViT for a step on a few small mosaics."""
    return SegmentationSettings(
        depths={FULL: (4, 8, 16, 32), QUICK: (2, 4), TINY: (1, 2)}[size],
        mosaic_size={FULL: 24, QUICK: 24, TINY: 16}[size],
        mosaic_digits={FULL: 4, QUICK: 4, TINY: 2}[size],
        mosaic_images={FULL: 2000, QUICK: 400, TINY: 20}[size],
        epochs={FULL: 10, QUICK: 2, TINY: 1}[size],
        options=("--max_steps", "1") if size == TINY else (),
    )


def segmentation_variants() -> list[str]:
    """Stock, every registered correction alone, the gate fusion, then the learned strengths of
    `LEARNED_CORRECTIONS` (those registered)."""
    alone = [name for name in variants() if not is_fusion(name)]
    return [*alone, "gate", *(name + LEARNED for name in LEARNED_CORRECTIONS if name in alone)]


def segmentation_key(depth: int, variant: str, seed: int) -> str:
    return f"seg/d{depth}/{variant}/seed{seed}"


def measure_patch_profile(
    model: torch.nn.Module, data: TaskData, args: FinetuneArguments, sequences: int
) -> dict[str, Any]:
    """`runner.units.measure_profile` over the patch tokens only: `oversmoothing_profile` keeps every token of a ViT
    unless told to drop [CLS] (`exclude_cls`), and the segmentation head reads the patch tokens alone, so [CLS], which
    the loss never reaches, would only blur what the decoder sees. The head input is the final norm's output (fused
    under a fusion), patch tokens too."""
    kwargs = dict(
        batch_size=args.training.per_device_eval_batch_size, max_sequences=sequences, progress=False, exclude_cls=True
    )
    profile = oversmoothing_profile(model, data.evaluation, **kwargs)
    head = oversmoothing_profile(HeadInput(model), data.evaluation, **kwargs)
    return {
        "profile": {name: profile.metrics[name] for name in PROFILE_METRICS},
        "head_input": {name: head.metrics[name][0] for name in PROFILE_METRICS},
        "profile_sequences": profile.num_sequences,
    }


def segmentation_unit(plan: Plan, depth: int, variant: str, seed: int) -> Unit:
    """The segmentation ViT of `depth` layers with `variant` (any name `variant_options` reads) and `seed`."""
    settings: SegmentationSettings = plan.settings[SEGMENTATION_DEPTH.name]
    architecture = {**SEGMENTATION_ARCHITECTURE, "image_size": settings.mosaic_size, "num_hidden_layers": depth}
    options = (
        "--architecture", json.dumps(architecture, separators=(",", ":")),
        *variant_options(variant),
        *SEGMENTATION_TRAINING,
        "--mosaic_images", str(settings.mosaic_images),
        "--mosaic_size", str(settings.mosaic_size),
        "--mosaic_digits", str(settings.mosaic_digits),
        "--num_train_epochs", str(settings.epochs),
        "--seed", str(seed),
        *COMMON_OPTIONS,
        *settings.options,
    )  # fmt: skip
    return Unit(segmentation_key(depth, variant, seed), options, cost=depth, measure=measure_patch_profile)


def segmentation_units(plan: Plan) -> list[Unit]:
    settings: SegmentationSettings = plan.settings[SEGMENTATION_DEPTH.name]
    return [
        segmentation_unit(plan, depth, variant, seed)
        for depth in settings.depths
        for seed in plan.seeds
        for variant in segmentation_variants()
    ]


def mean_iou_of(result: dict[str, Any]) -> float:
    return result["mean_iou"]


def pixel_accuracy_of(result: dict[str, Any]) -> float:
    return result["overall_accuracy"]


def measured_summary(results: Results, depth: int, variant: str, value: Callable[[dict[str, Any]], float]) -> Summary:
    """Over the seeds measured so far (no values: none is)."""
    keys = results.measured([segmentation_key(depth, variant, seed) for seed in results.plan.seeds])
    return results.summary(keys, value)


# (title, value, scale, digits) of the tables; the first two are also plotted.
TABLES = (
    ("Mean IoU", mean_iou_of, 1.0, 3),
    ("Last-layer mean pairwise cosine similarity of the patch tokens", last_layer_cosine, 1.0, 3),
    ("Pixel accuracy (%)", pixel_accuracy_of, PERCENT, 1),
)


def plot_segmentation_depth(results: Results) -> None:
    plt = pyplot()
    plan = results.plan
    depths = sorted(plan.settings[SEGMENTATION_DEPTH.name].depths)
    names = segmentation_variants()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for index, variant in enumerate(names):
        for axis, (_, value, _, _) in zip(axes, TABLES[:2], strict=True):
            summaries = [measured_summary(results, d, variant, value) for d in depths]
            style = dict(linestyle="--" if variant.endswith(LEARNED) else "-", label=variant)
            plot_against_depth(axis, depths, summaries, index, len(names), 0.025, **style)
    for axis, label in zip(axes, ("mean IoU", "last-layer patch-token mean pairwise cosine"), strict=True):
        depth_axis(axis, depths, label)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"ViT segmenting digit mosaics, from scratch: mean ± std over {seed_count(len(plan.seeds))}")
    figure.tight_layout()
    save_figure(figure, plan.images_dir / SEGMENTATION_IMAGE)


def segmentation_section(results: Results) -> list[str]:
    plan = results.plan
    settings: SegmentationSettings = plan.settings[SEGMENTATION_DEPTH.name]
    depths = sorted(settings.depths)
    variants = segmentation_variants()
    plot_segmentation_depth(results)
    lines = [
        "## Segmentation depth sweep: ViT from scratch on digit mosaics",
        "",
        f"Stock, every correction alone, the gate fusion, and learned strengths (`{LEARNED}`) of "
        f"{' and '.join(f'`{name}`' for name in LEARNED_CORRECTIONS)}, the two best corrections of experiment 2 at "
        "32 layers (chosen beforehand, not from these results). The cosine is over the patch tokens only ([CLS] "
        "left out: the linear decoder never reads it), on the raw residual stream after the last layer.",
        "",
        *pending_notice(results, [unit.key for unit in segmentation_units(plan)]),
    ]
    image = image_link(plan, plan.images_dir / SEGMENTATION_IMAGE)
    lines += [f"![mean IoU and last-layer patch cosine against depth]({image})", ""]
    lines += metric_tables(results, depths, variants, TABLES, partial(measured_summary, results))
    mean_iou_at = partial(measured_summary, results, value=mean_iou_of)
    lines += difference_table("Mean IoU", depths, variants, mean_iou_at, unit=" in points (×100)")
    return [*lines, ""]


def segmentation_setup(results: Results) -> list[str]:
    settings: SegmentationSettings = results.plan.settings[SEGMENTATION_DEPTH.name]
    patch = SEGMENTATION_ARCHITECTURE["patch_size"]
    patches = (settings.mosaic_size // patch) ** 2
    options = dict(zip(SEGMENTATION_TRAINING[::2], SEGMENTATION_TRAINING[1::2], strict=True))
    return [
        f"- Segmentation: `CenteredViTForSemanticSegmentation` (width "
        f"{SEGMENTATION_ARCHITECTURE['hidden_size']}, {SEGMENTATION_ARCHITECTURE['num_attention_heads']} heads, MLP "
        f"{SEGMENTATION_ARCHITECTURE['intermediate_size']}, Segmenter's linear decoder) trained from scratch on "
        f"{settings.mosaic_images} built-in digit mosaics ({settings.mosaic_size}×{settings.mosaic_size}, "
        f"{settings.mosaic_digits} digits each, 11 classes; {patch}×{patch} patches: {patches} patches + [CLS]), a "
        f"fifth of them held out, {settings.epochs} epochs, batch {options['--per_device_train_batch_size']}, "
        f"learning rate {options['--learning_rate']}, weight decay {options['--weight_decay']}. Predicting background "
        "everywhere scores a mean IoU of about 0.08. Patch-token profiles on the first "
        f"{results.plan.profile_sequences} evaluation mosaics."
    ]


def segmentation_findings(results: Results) -> list[str]:
    """Stock at each depth measured, and the best variant there, over the seeds measured so far."""
    depths = sorted(results.plan.settings[SEGMENTATION_DEPTH.name].depths)
    stock = {d: measured_summary(results, d, BASELINE, mean_iou_of) for d in depths}
    measured = [d for d in depths if stock[d].values]
    if not measured:
        return []
    lines = [
        "- Segmentation, `none`: mean IoU " + ", ".join(f"{stock[d].mean:.3f} at depth {d}" for d in measured) + "."
    ]
    for depth in measured:
        summaries = {v: measured_summary(results, depth, v, mean_iou_of) for v in segmentation_variants()}
        best = max((v for v in summaries if summaries[v].values), key=lambda v: summaries[v].mean)
        stock_cosine = measured_summary(results, depth, BASELINE, last_layer_cosine).format(3)
        if best == BASELINE:
            lines.append(
                f"- Segmentation depth {depth}: no variant beats `none` ({stock[depth].format(3)}, patch cosine "
                f"{stock_cosine})."
            )
            continue
        lines.append(
            f"- Segmentation depth {depth}: best `{best}` at mean IoU {summaries[best].format(3)}; against `none` "
            f"{difference(summaries[best], stock[depth])} points; its patch cosine "
            f"{measured_summary(results, depth, best, last_layer_cosine).format(3)} (`none` {stock_cosine})."
        )
    return lines


SEGMENTATION_DEPTH = Experiment(
    name="segmentation_depth",
    settings=segmentation_settings,
    units=segmentation_units,
    section=segmentation_section,
    setup=segmentation_setup,
    findings=segmentation_findings,
    report_needs_every_unit=False,
)
