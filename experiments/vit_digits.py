"""Experiment 2: a ViT trained from scratch on sklearn's 8×8 digits at several depths, every correction against
`none`, and a sweep of each correction's main hyper-parameter at one depth.

Units (small: one core each, side by side, deepest first):

- `vit/d<depth>/<variant>/seed<s>`: the ViT at that depth with that variant, its test accuracy and profile.
- `vit/d<depth>/<correction>@<field>=<value>/seed<s>`: the sweep; at a field's default value the sweep reads the
  depth grid's unit. The learned-strengths experiment adds `@learned` variants of the same recipe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from runner.plan import FULL, QUICK, TINY, Experiment, Plan
from runner.report import (
    depth_axis,
    difference_table,
    image_link,
    metric_tables,
    plot_against_depth,
    pyplot,
    save_figure,
    seed_count,
)
from runner.statistics import PERCENT, Results, Summary, accuracy_of, difference, last_layer_cosine
from runner.units import COMMON_OPTIONS, Unit
from runner.variants import BASELINE, MAIN_FIELD, default_value, is_fusion, variant_options, variants

VIT_ARCHITECTURE = {
    "image_size": 8,
    "patch_size": 2,
    "num_channels": 1,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
VIT_TRAINING = (
    "--dataset_name", "digits",
    "--per_device_train_batch_size", "64",
    "--per_device_eval_batch_size", "128",
    "--learning_rate", "1e-3",
    "--weight_decay", "0.05",
    "--warmup_steps", "0.1",
)  # fmt: skip
DEPTH_IMAGE = "depth_sweep.png"
METRICS = (
    ("Test accuracy (%)", accuracy_of, PERCENT, 1),
    ("Last-layer mean pairwise cosine similarity", last_layer_cosine, 1.0, 3),
)


@dataclass(frozen=True)
class DepthSweepSettings:
    depths: tuple[int, ...]
    variants: tuple[str, ...]
    epochs: int
    options: tuple[str, ...]  # on top of the ViT recipe
    sweep_depth: int
    sweep_values: dict[str, tuple[float, ...]]  # configuration field → values (the default among them)


def depth_sweep_settings(size: str) -> DepthSweepSettings:
    """Every correction alone and the gate fusion; the quick plan trains shallow ViTs briefly, two sweep values; the
    tiny one a 1- and a 2-layer ViT for an epoch on a slice."""
    sweep_values = {
        "centered_scale": (0.25, 0.5, 1.0),
        "neutreno_lambda": (0.3, 0.6, 0.9),
        "contranorm_scale": (0.03, 0.1, 0.3),
        "dgn_lambda": (0.003, 0.01, 0.1),
    }
    quick = size != FULL
    return DepthSweepSettings(
        depths={FULL: (2, 4, 8, 16, 32), QUICK: (2, 4), TINY: (1, 2)}[size],
        variants=(*(name for name in variants() if not is_fusion(name)), "gate"),
        epochs={FULL: 15, QUICK: 4, TINY: 1}[size],
        options=("--max_train_samples", "64", "--max_eval_samples", "24") if size == TINY else (),
        sweep_depth={FULL: 16, QUICK: 4, TINY: 2}[size],
        sweep_values={name: values[:2] for name, values in sweep_values.items()} if quick else sweep_values,
    )


def differs_from_grid(field_name: str | None, value: float | None) -> bool:
    """Whether a sweep point is a unit of its own: at a field's default value it is the depth grid's unit."""
    return field_name is not None and value != default_value(field_name)


def vit_key(depth: int, variant: str, seed: int, field_name: str | None = None, value: float | None = None) -> str:
    suffix = f"@{field_name}={value:g}" if differs_from_grid(field_name, value) else ""
    return f"vit/d{depth}/{variant}{suffix}/seed{seed}"


def vit_unit(
    plan: Plan, depth: int, variant: str, seed: int, field_name: str | None = None, value: float | None = None
) -> Unit:
    """The ViT of `depth` layers with `variant` (any name `variant_options` reads) and `seed`; with `field_name`, a
    sweep point setting that configuration field to `value`."""
    settings: DepthSweepSettings = plan.settings[DEPTH_SWEEP.name]
    architecture = json.dumps({**VIT_ARCHITECTURE, "num_hidden_layers": depth}, separators=(",", ":"))
    swept = (f"--{field_name}", f"{value:g}") if differs_from_grid(field_name, value) else ()
    options = (
        "--architecture", architecture,
        *variant_options(variant),
        *VIT_TRAINING,
        "--num_train_epochs", str(settings.epochs),
        "--seed", str(seed),
        *COMMON_OPTIONS,
        *settings.options,
        *swept,
    )  # fmt: skip
    return Unit(vit_key(depth, variant, seed, field_name, value), options, cost=depth)


def sweep_points(plan: Plan) -> list[tuple[str, str, float]]:
    """(correction, field, value) of every sweep point whose correction is registered."""
    by_field = {name: correction for correction, name in MAIN_FIELD.items() if correction in variants()}
    return [
        (by_field[name], name, value)
        for name, values in plan.settings[DEPTH_SWEEP.name].sweep_values.items()
        if name in by_field
        for value in values
    ]


def depth_sweep_units(plan: Plan) -> list[Unit]:
    """The depth grid, then the sweep (whose default values are grid units)."""
    settings: DepthSweepSettings = plan.settings[DEPTH_SWEEP.name]
    grid = [
        vit_unit(plan, depth, variant, seed)
        for depth in settings.depths
        for seed in plan.seeds
        for variant in settings.variants
    ]
    sweep = [
        vit_unit(plan, settings.sweep_depth, correction, seed, field_name, value)
        for correction, field_name, value in sweep_points(plan)
        for seed in plan.seeds
    ]
    return grid + sweep


def depth_summary(results: Results, depth: int, variant: str, value: Callable[[dict[str, Any]], float]) -> Summary:
    """`value` over the seeds of the depth sweep's `variant` at `depth` (each must be measured)."""
    return results.summary([vit_key(depth, variant, seed) for seed in results.plan.seeds], value)


def plot_depth_sweep(results: Results) -> None:
    plt = pyplot()
    plan = results.plan
    settings: DepthSweepSettings = plan.settings[DEPTH_SWEEP.name]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    depths = sorted(settings.depths)
    for index, variant in enumerate(settings.variants):
        for axis, (_, value, _, _) in zip(axes, METRICS, strict=True):
            summaries = [depth_summary(results, d, variant, value) for d in depths]
            plot_against_depth(axis, depths, summaries, index, len(settings.variants), 0.025, label=variant)
    for axis, label in zip(axes, ("test accuracy", "last-layer mean pairwise cosine similarity"), strict=True):
        depth_axis(axis, depths, label)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"ViT trained from scratch on sklearn digits: mean ± std over {seed_count(len(plan.seeds))}")
    figure.tight_layout()
    save_figure(figure, plan.images_dir / DEPTH_IMAGE)


def depth_sweep_section(results: Results) -> list[str]:
    plan = results.plan
    settings: DepthSweepSettings = plan.settings[DEPTH_SWEEP.name]
    depths = sorted(settings.depths)
    plot_depth_sweep(results)
    image = image_link(plan, plan.images_dir / DEPTH_IMAGE)
    lines = [
        "## Experiment 2: depth sweep, ViT from scratch on digits",
        "",
        f"![accuracy and last-layer cosine similarity against depth]({image})",
        "",
    ]
    lines += metric_tables(results, depths, settings.variants, METRICS, partial(depth_summary, results))
    accuracy_at = partial(depth_summary, results, value=accuracy_of)
    lines += [
        *difference_table("Accuracy", depths, settings.variants, accuracy_at),
        "",
    ]
    return lines + sweep_section(results)


def sweep_section(results: Results) -> list[str]:
    plan = results.plan
    points = sweep_points(plan)
    if not points:
        return []
    depth = plan.settings[DEPTH_SWEEP.name].sweep_depth
    lines = [
        f"### Hyper-parameter sweep (depth {depth})",
        "",
        "| correction | field | value | test accuracy (%) | last-layer cosine |",
        "|---|---|---:|---:|---:|",
    ]
    for correction, field_name, value in points:
        keys = [vit_key(depth, correction, s, field_name, value) for s in plan.seeds]
        default = " (default)" if value == default_value(field_name) else ""
        accuracy = results.summary(keys, accuracy_of).format(1, PERCENT)
        cosine = results.summary(keys, last_layer_cosine).format(3)
        lines.append(f"| {correction} | {field_name} | {value:g}{default} | {accuracy} | {cosine} |")
    baseline_keys = [vit_key(depth, BASELINE, s) for s in plan.seeds]
    baseline = results.summary(baseline_keys, accuracy_of).format(1, PERCENT)
    return [*lines, "", f"`none` at depth {depth}: {baseline} %.", ""]


def option_value(options: Sequence[str], name: str) -> str:
    return options[list(options).index(name) + 1]


def first_vit_result(results: Results) -> dict[str, Any]:
    return results[vit_key(results.plan.settings[DEPTH_SWEEP.name].depths[0], BASELINE, results.plan.seeds[0])]


def images_setup(results: Results) -> list[str]:
    first_vit = first_vit_result(results)
    return [
        f"- Images (experiment 2): a ViT (width {VIT_ARCHITECTURE['hidden_size']}, "
        f"{VIT_ARCHITECTURE['num_attention_heads']} heads, MLP {VIT_ARCHITECTURE['intermediate_size']}, 8×8 digits "
        f"in 2×2 patches: 16 patches + [CLS]) trained from scratch, {first_vit['train_examples']} training and "
        f"{first_vit['eval_examples']} test images, {results.plan.settings[DEPTH_SWEEP.name].epochs} epochs, batch "
        f"{option_value(VIT_TRAINING, '--per_device_train_batch_size')}, learning rate "
        f"{option_value(VIT_TRAINING, '--learning_rate')}, weight decay "
        f"{option_value(VIT_TRAINING, '--weight_decay')}."
    ]


def profiled_images(results: Results) -> str:
    return f"{first_vit_result(results)['profile_sequences']} test images"


def depth_sweep_findings(results: Results) -> list[str]:
    plan = results.plan
    settings: DepthSweepSettings = plan.settings[DEPTH_SWEEP.name]
    depths = sorted(settings.depths)
    lines = []
    baseline_by_depth = [results.summary([vit_key(d, BASELINE, s) for s in plan.seeds], accuracy_of) for d in depths]
    lines.append(
        f"- `none` on digits: {baseline_by_depth[0].mean * PERCENT:.1f} % at depth {depths[0]}, "
        f"{baseline_by_depth[-1].mean * PERCENT:.1f} % at depth {depths[-1]}; best depth "
        f"{depths[max(range(len(depths)), key=lambda i: baseline_by_depth[i].mean)]}."
    )
    for depth, base in zip(depths, baseline_by_depth, strict=True):
        best = max(
            settings.variants,
            key=lambda v: results.summary([vit_key(depth, v, s) for s in plan.seeds], accuracy_of).mean,
        )
        best_summary = results.summary([vit_key(depth, best, s) for s in plan.seeds], accuracy_of)
        lines.append(
            f"- Depth {depth}: best `{best}` at {best_summary.format(1, PERCENT)} %; against `none` "
            f"{difference(best_summary, base)} points."
        )
    return lines


DEPTH_SWEEP = Experiment(
    name="depth_sweep",
    settings=depth_sweep_settings,
    units=depth_sweep_units,
    section=depth_sweep_section,
    setup=images_setup,
    profiled=profiled_images,
    findings=depth_sweep_findings,
    headline_image=("ViT on digits: accuracy and last-layer cosine similarity against depth", DEPTH_IMAGE),
)
