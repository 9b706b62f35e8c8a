"""Reproduces docs/RESULTS.md offline: over-smoothing profiles, a ViT depth sweep and per-method fine-tuning.

    python experiments/run_all.py                 # the full plan: docs/RESULTS.md (about 3 hours on 2 CPU cores)
    python experiments/run_all.py --quick         # every code path on small slices (under 10 minutes)
    python experiments/run_all.py --report-only   # rewrite the tables and plots from the cached results

Every measurement is one unit: a key and the exact `finetune.py` options that produce it. Finished units are cached in
a JSON file as soon as they complete, so an interrupted run resumes where it stopped, and a changed plan reruns only
the units whose options changed; move the results file away to measure everything again. The units:

- `pretrained/<variant>`: the packaged all-MiniLM-L6-v2 converted with one correction or fusion, not trained,
  profiled on the held-out Rotten Tomatoes snippets of the first seed (experiment 1, "before").
- `text/<variant>/seed<s>`: `finetune.py`'s embedded default recipe (MiniLM, Rotten Tomatoes split by movie) with
  that variant, then the fine-tuned model's accuracy, macro-F1, training time and profile (experiments 1 and 3).
- `vit/d<depth>/<variant>[@<field>=<value>]/seed<s>`: a ViT trained from scratch on sklearn's digits at that depth,
  its test accuracy and profile (experiment 2; with `@field=value`, the hyper-parameter sweep).
- `text/<variant>@learned/seed<s>` and `vit/d<depth>/<variant>@learned/seed<s>`: the same with
  `correction_strength="learned"` (experiment 4), whose results also hold the learned strengths; `text/all...` is
  every correction at once.

Every unit starts from `UNIT_RECIPE` (finetune.py's embedded default as these experiments were defined: fixed
strengths, no stock baseline run inside the unit) and adds its own options.

A variant is every registered correction alone and every registered fusion alone, so a new method joins the
experiments without an edit here. The text units run one at a time on every core (their training times are
compared); the small ViT units run one per core. Each unit's output (a Hub-ready export) and log
stay in the scratch folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # a script run from anywhere finds the package of this checkout
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

from hf_centered.corrections import available_corrections  # noqa: E402
from hf_centered.diagnostics import METRIC_TITLES, oversmoothing_profile  # noqa: E402
from hf_centered.finetuning import EMBEDDED_DEFAULT  # noqa: E402
from hf_centered.fusion import NO_FUSION, available_fusions  # noqa: E402
from hf_centered.reporting import machine_description, write_generated_section  # noqa: E402
from hf_centered.strength_maps import has_learned_strengths  # noqa: E402

BASELINE = "none"
ALL_AT_ONCE = "all"  # experiment 4's variant combining every registered correction
LEARNED = "@learned"
# What every unit's options are added to: the recipe these experiments were defined with. The embedded default of
# finetune.py has since turned to learned strengths and a stock baseline inside each run; the units name those.
UNIT_RECIPE = {**EMBEDDED_DEFAULT, "correction_strength": "fixed", "baseline": False}
PROFILE_METRICS = ("cosine_similarity", "effective_rank", "rank_collapse_residual")
# The main hyper-parameter of each correction, swept in experiment 2's sweep.
SWEPT_FIELD = {
    "centered": "centered_scale",
    "neutreno": "neutreno_lambda",
    "contranorm": "contranorm_scale",
    "dgn": "dgn_lambda",
}
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
# Options of every unit: nothing is saved mid-run, the card's own profile is skipped (the unit measures its own).
COMMON_OPTIONS = (
    "--overwrite", "true",
    "--save_strategy", "no",
    "--eval_strategy", "no",
    "--profile_sequences", "0",
    "--report_to", "none",
    "--disable_tqdm", "true",
    "--logging_steps", "50",
)  # fmt: skip
REPORT_BEGIN, REPORT_END = "<!-- experiments/run_all.py: begin -->", "<!-- experiments/run_all.py: end -->"
HEADLINE_BEGIN = "<!-- experiments/run_all.py: headline begin -->"
HEADLINE_END = "<!-- experiments/run_all.py: headline end -->"


def variants() -> dict[str, tuple[str, str]]:
    """Every registered correction alone and every registered fusion alone: name → (correction, fusion)."""
    table = {name: (name, NO_FUSION) for name in available_corrections()}
    table.update({name: (BASELINE, name) for name in available_fusions() if name != NO_FUSION})
    return table


def is_fusion(variant: str) -> bool:
    return variants()[variant][1] != NO_FUSION


@dataclass(frozen=True)
class Plan:
    """What one invocation measures, and where it keeps results, report and scratch outputs."""

    name: str
    seeds: tuple[int, ...]
    fusion_seeds: int  # fine-tuning seeds of the fusions (experiment 1 needs one; experiment 3 lists them too)
    text_options: tuple[str, ...]  # on top of finetune.py's embedded default
    profile_sequences: int
    vit_depths: tuple[int, ...]
    vit_variants: tuple[str, ...]
    vit_epochs: int
    vit_options: tuple[str, ...]
    sweep_depth: int
    sweep_values: dict[str, tuple[float, ...]]  # configuration field → values (the default among them)
    results_path: Path
    report_path: Path
    images_dir: Path
    scratch_dir: Path
    strength_seeds: tuple[int, ...] = (42, 43, 44, 45, 46)  # experiment 4 (text)
    strength_vit_depths: tuple[int, ...] = (16, 32)  # experiment 4 (images), with the seeds of experiment 2
    readme_path: Path | None = None  # gets the headline plot and findings between its own markers
    # The text units run alone on every core; the small ViT units, one core each, as many at once as there are cores.
    text_threads: int = field(default_factory=torch.get_num_threads)
    vit_workers: int = field(default_factory=lambda: os.cpu_count() or 1)


def full_plan() -> Plan:
    return Plan(
        name="full",
        seeds=(42, 43, 44),
        fusion_seeds=1,
        text_options=(),
        profile_sequences=256,
        vit_depths=(2, 4, 8, 16, 32),
        vit_variants=(*(name for name in variants() if not is_fusion(name)), "gate"),
        vit_epochs=15,
        vit_options=(),
        sweep_depth=16,
        sweep_values={
            "centered_scale": (0.25, 0.5, 1.0),
            "neutreno_lambda": (0.3, 0.6, 0.9),
            "contranorm_scale": (0.03, 0.1, 0.3),
            "dgn_lambda": (0.003, 0.01, 0.1),
        },
        results_path=REPO_ROOT / "experiments" / "results" / "full.json",
        report_path=REPO_ROOT / "docs" / "RESULTS.md",
        images_dir=REPO_ROOT / "docs" / "images" / "results",
        scratch_dir=REPO_ROOT / "outputs" / "experiments" / "full",
        readme_path=REPO_ROOT / "README.md",
    )


def quick_plan() -> Plan:
    """Every code path of the full plan on small slices: one seed, short training, fewer sequences."""
    quick_dir = REPO_ROOT / "outputs" / "experiments" / "quick"
    return replace(
        full_plan(),
        name="quick",
        seeds=(42,),
        text_options=("--max_train_samples", "480", "--max_eval_samples", "240"),
        profile_sequences=64,
        vit_depths=(2, 4),
        vit_epochs=4,
        sweep_depth=4,
        sweep_values={name: (values[0], values[1]) for name, values in full_plan().sweep_values.items()},
        strength_seeds=(42,),
        strength_vit_depths=(4,),
        results_path=quick_dir / "results.json",
        report_path=quick_dir / "RESULTS.md",
        images_dir=quick_dir / "images",
        scratch_dir=quick_dir / "runs",
        readme_path=None,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Units


@dataclass(frozen=True)
class Unit:
    """One measurement: `kind` is "pretrained" (profile only) or "finetune" (train, evaluate, profile)."""

    key: str
    kind: str
    options: tuple[str, ...]  # finetune.py options, without --output_dir (the scratch folder is not part of a result)
    threads: int


def strength_variants() -> list[str]:
    """Experiment 4's corrected variants: every registered correction alone, then all of them at once."""
    return [name for name in available_corrections() if name != BASELINE] + [ALL_AT_ONCE]


def variant_options(variant: str) -> tuple[str, ...]:
    """Options of a variant name: `<variant>` of `variants()`, `all`, either with the `@learned` suffix."""
    name = variant.removesuffix(LEARNED)
    if name == ALL_AT_ONCE:
        options: tuple[str, ...] = ("--correction", *strength_variants()[:-1], "--fusion", NO_FUSION)
    else:
        correction, fusion = variants()[name]
        options = ("--correction", correction, "--fusion", fusion)
    return (*options, "--correction_strength", "learned") if variant.endswith(LEARNED) else options


def text_options(plan: Plan, variant: str, seed: int) -> tuple[str, ...]:
    return (*variant_options(variant), "--seed", str(seed), *COMMON_OPTIONS, *plan.text_options)


def vit_options(plan: Plan, depth: int, variant: str, seed: int, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    architecture = json.dumps({**VIT_ARCHITECTURE, "num_hidden_layers": depth}, separators=(",", ":"))
    return (
        "--architecture", architecture,
        *variant_options(variant),
        *VIT_TRAINING,
        "--num_train_epochs", str(plan.vit_epochs),
        "--seed", str(seed),
        *COMMON_OPTIONS,
        *plan.vit_options,
        *extra,
    )  # fmt: skip


def sweep_points(plan: Plan) -> list[tuple[str, str, float]]:
    """(correction, field, value) of every sweep point whose correction is registered."""
    by_field = {name: correction for correction, name in SWEPT_FIELD.items() if correction in variants()}
    return [
        (by_field[name], name, value)
        for name, values in plan.sweep_values.items()
        if name in by_field
        for value in values
    ]


def default_value(field_name: str) -> float:
    from hf_centered.configuration_centered import CorrectionConfigMixin

    return CorrectionConfigMixin.__dataclass_fields__[field_name].default


def vit_key(depth: int, variant: str, seed: int, field_name: str | None = None, value: float | None = None) -> str:
    suffix = "" if field_name is None or value == default_value(field_name) else f"@{field_name}={value:g}"
    return f"vit/d{depth}/{variant}{suffix}/seed{seed}"


def text_units(plan: Plan) -> list[Unit]:
    """Seed-major order, so that a slow spell of the machine touches every variant rather than one."""
    first_seed = plan.seeds[0]
    units = [
        Unit(f"pretrained/{variant}", "pretrained", text_options(plan, variant, first_seed), plan.text_threads)
        for variant in variants()
    ]
    for index, seed in enumerate(plan.seeds):
        for variant in variants():
            if is_fusion(variant) and index >= plan.fusion_seeds:
                continue
            units.append(
                Unit(f"text/{variant}/seed{seed}", "finetune", text_options(plan, variant, seed), plan.text_threads)
            )
    listed = {unit.key for unit in units}
    for seed in plan.strength_seeds:  # experiment 4, seed-major like the rest
        for variant in [BASELINE, *strength_variants(), *(name + LEARNED for name in strength_variants())]:
            key = f"text/{variant}/seed{seed}"
            if key not in listed:
                units.append(Unit(key, "finetune", text_options(plan, variant, seed), plan.text_threads))
    return units


def strength_keys(plan: Plan) -> set[str]:
    """The units of experiment 4 that no other experiment needs: the report shows them as far as they are measured."""
    text = {f"text/{v}/seed{s}" for s in plan.strength_seeds for v in [BASELINE, *strength_variants()]}
    text |= {f"text/{v}{LEARNED}/seed{s}" for s in plan.strength_seeds for v in strength_variants()}
    vit = {
        vit_key(depth, variant, seed)
        for depth in plan.strength_vit_depths
        for seed in plan.seeds
        for variant in [*plan.vit_variants, *(v + LEARNED for v in plan.vit_variants if v != BASELINE)]
    }
    experiment_3 = {f"text/{v}/seed{s}" for s in plan.seeds for v in variants()}
    experiment_2 = {vit_key(d, v, s) for d in plan.vit_depths for v in plan.vit_variants for s in plan.seeds}
    return (text | vit) - experiment_3 - experiment_2


def vit_units(plan: Plan) -> list[Unit]:
    """The depth grid and the sweep, deepest first, so that no long unit is left to finish alone on one worker."""
    units: dict[str, tuple[int, Unit]] = {}
    for depth in plan.vit_depths:
        for seed in plan.seeds:
            for variant in plan.vit_variants:
                key = vit_key(depth, variant, seed)
                units[key] = (depth, Unit(key, "finetune", vit_options(plan, depth, variant, seed), 1))
    for correction, field_name, value in sweep_points(plan):
        for seed in plan.seeds:
            key = vit_key(plan.sweep_depth, correction, seed, field_name, value)
            extra = (f"--{field_name}", f"{value:g}")
            options = vit_options(plan, plan.sweep_depth, correction, seed, extra)
            units.setdefault(key, (plan.sweep_depth, Unit(key, "finetune", options, 1)))
    for depth in plan.strength_vit_depths:  # experiment 4: the same ViTs with learned strengths (and fixed ones)
        for seed in plan.seeds:
            for variant in [*plan.vit_variants, *(v + LEARNED for v in plan.vit_variants if v != BASELINE)]:
                key = vit_key(depth, variant, seed)
                units.setdefault(key, (depth, Unit(key, "finetune", vit_options(plan, depth, variant, seed), 1)))
    return [unit for _, unit in sorted(units.values(), key=lambda entry: -entry[0])]


# ----------------------------------------------------------------------------------------------------------------------
# Running one unit (in a worker process)


class HeadInput(torch.nn.Module):
    """Presents what the task head reads (`last_hidden_state`: fused under a fusion, after ViT's final norm) as the
    model's only hidden state, so that `oversmoothing_profile` measures it with the same definitions."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.encoder_model = model.base_model
        self.config = model.config

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None, **_):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        inputs = {name: value for name, value in inputs.items() if value is not None}
        if pixel_values is not None:
            inputs = {"pixel_values": pixel_values}
        return BaseModelOutput(hidden_states=(self.encoder_model(**inputs).last_hidden_state,))


def measure(model: torch.nn.Module, evaluation, batch_size: int, sequences: int) -> dict[str, Any]:
    """The layer profile and the head input's metrics on the first `sequences` evaluation examples."""
    kwargs = dict(batch_size=batch_size, max_sequences=sequences, progress=False)
    profile = oversmoothing_profile(model, evaluation, **kwargs)
    head = oversmoothing_profile(HeadInput(model), evaluation, **kwargs)
    return {
        "profile": {name: profile.metrics[name] for name in PROFILE_METRICS},
        "head_input": {name: head.metrics[name][0] for name in PROFILE_METRICS},
        "profile_sequences": profile.num_sequences,
    }


def recipe_argv(scratch_dir: Path) -> list[str]:
    """`--config` of `UNIT_RECIPE`, written into the scratch folder (the recipe is code, not part of a unit's key)."""
    import yaml

    path = scratch_dir / "unit_recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(UNIT_RECIPE))
    return ["--config", str(path)]


def prepared_data(argv: list[str]):
    """finetune.py's own pipeline up to the data: (arguments, configuration, source, processor, data)."""
    from hf_centered import finetuning

    args = finetuning.parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    processor = finetuning.load_processor(args, config, source)
    data = args.task.load_data(args, config, processor)
    args.task.configure(config, data)
    return args, config, source, processor, data


def training_seconds(output_dir: Path) -> float:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry["train_runtime"] for entry in history if "train_runtime" in entry)


def execute_unit(unit: Unit, output_dir: Path, profile_sequences: int, recipe: list[str]) -> dict[str, Any]:
    """Runs one unit in this process (`recipe`: the `--config` of its base recipe) and returns its JSON-safe result."""
    from hf_centered import finetuning

    argv = [*recipe, *unit.options, "--output_dir", str(output_dir)]
    args, config, source, _, data = prepared_data(argv)
    batch_size = args.training.per_device_eval_batch_size
    result: dict[str, Any] = {"train_examples": len(data.train), "eval_examples": len(data.evaluation)}
    if unit.kind == "pretrained":
        model = finetuning.build_model(config, source, args.task)
    else:
        metrics = finetuning.main(argv)
        result.update(
            accuracy=metrics["eval_accuracy"],
            f1_macro=metrics["eval_f1_macro"],
            train_seconds=training_seconds(output_dir),
        )
        model = args.task.model_class.from_pretrained(output_dir)
        if has_learned_strengths(model):
            result["strengths"] = model.correction_strengths()
    result.update(measure(model, data.evaluation, batch_size, profile_sequences))
    return result


@contextlib.contextmanager
def output_redirected_to(log_path: Path) -> Iterator[None]:
    """Sends this process's stdout and stderr (file descriptors, so loggers bound earlier follow) to a log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def run_in_worker(unit: Unit, scratch_dir: str, profile_sequences: int) -> tuple[dict[str, Any], float]:
    """Worker entry point: the unit's result and wall seconds; its output goes to `<scratch>/logs/`."""
    torch.set_num_threads(unit.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    scratch = Path(scratch_dir)
    log_path = scratch / "logs" / (unit.key.replace("/", "__") + ".log")
    started = time.perf_counter()
    try:
        with output_redirected_to(log_path):
            result = execute_unit(unit, scratch / unit.key, profile_sequences, recipe_argv(scratch))
    except SystemExit as error:  # finetune.py's one-line errors
        raise RuntimeError(f"{error} (log: {log_path})") from None
    except Exception as error:
        raise RuntimeError(f"{type(error).__name__}: {error} (log: {log_path})") from error
    return result, time.perf_counter() - started


# ----------------------------------------------------------------------------------------------------------------------
# The cache and the scheduler


class ResultCache:
    """`{"units": {key: {"options", "result", "wall_seconds"}}, "invocations": [...]}`, rewritten after each unit."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"units": {}, "invocations": []}
        if path.is_file():
            self.data = json.loads(path.read_text())

    def get(self, unit: Unit) -> dict[str, Any] | None:
        entry = self.data["units"].get(unit.key)
        return entry if entry is not None and entry["options"] == list(unit.options) else None

    def put(self, unit: Unit, result: dict[str, Any], wall_seconds: float) -> None:
        self.data["units"][unit.key] = {"options": list(unit.options), "result": result, "wall_seconds": wall_seconds}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1) + "\n")
        partial.replace(self.path)


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
            pool.submit(run_in_worker, unit, str(plan.scratch_dir), plan.profile_sequences): unit for unit in pending
        }
        for done, future in enumerate(as_completed(futures), start=1):
            unit = futures[future]
            try:
                result, wall_seconds = future.result()
            except BrokenProcessPool:
                raise
            except Exception as error:
                failures.append(f"{unit.key}: {error}")
                log(f"[{done}/{len(pending)}] {unit.key} FAILED: {error}")
                continue
            cache.put(unit, result, wall_seconds)
            summary = f"accuracy {result['accuracy']:.4f}, " if "accuracy" in result else ""
            log(f"[{done}/{len(pending)}] {unit.key}: {summary}{wall_seconds:.0f} s")
    return failures


def all_units(plan: Plan) -> tuple[list[Unit], list[Unit]]:
    return text_units(plan), vit_units(plan)


def run_plan(plan: Plan, log: Callable[[str], None] = print) -> list[str]:
    """Runs every missing unit of `plan`, records the invocation, and returns the failures."""
    cache = ResultCache(plan.results_path)
    text, vit = all_units(plan)
    missing = sum(cache.get(unit) is None for unit in text + vit)
    log(f"plan {plan.name}: {len(text) + len(vit)} units, {missing} to run; results in {plan.results_path}")
    started = time.perf_counter()
    failures = run_units(text, 1, plan, cache, log)
    failures += run_units(vit, plan.vit_workers, plan, cache, log)
    if missing:
        cache.data["invocations"].append(
            {
                "units_run": missing - len(failures),
                "wall_seconds": time.perf_counter() - started,
                "finished": time.strftime("%Y-%m-%d %H:%M"),
                "machine": machine_description(),
            }
        )
        cache.save()
    return failures


# ----------------------------------------------------------------------------------------------------------------------
# Statistics and the report


@dataclass
class Summary:
    """Mean and sample standard deviation over seeds (std is None for one seed)."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def format(self, digits: int = 3, scale: float = 1.0) -> str:
        if not self.values:
            return "—"
        text = f"{self.mean * scale:.{digits}f}"
        return text + (f" ± {self.std * scale:.{digits}f}" if self.std is not None else "")


def difference(summary: Summary, baseline: Summary, scale: float = 100.0) -> str:
    """Mean difference to the baseline with its standard error; `*` when it exceeds two standard errors."""
    if not summary.values or not baseline.values or summary is baseline:
        return "—"
    delta = (summary.mean - baseline.mean) * scale
    if summary.std is None or baseline.std is None:
        return f"{delta:+.1f}"
    error = math.sqrt(summary.std**2 / len(summary.values) + baseline.std**2 / len(baseline.values)) * scale
    marker = " *" if error > 0 and abs(delta) > 2 * error else ""
    return f"{delta:+.1f} ± {error:.1f}{marker}"


class Results:
    """Looks up cached unit results; a unit of the plan that is missing is an error naming it."""

    def __init__(self, plan: Plan, cache: ResultCache):
        self.plan = plan
        self.cache = cache
        text, vit = all_units(plan)
        self.units = {unit.key: unit for unit in text + vit}

    def __getitem__(self, key: str) -> dict[str, Any]:
        entry = self.cache.get(self.units[key])
        if entry is None:
            raise KeyError(key)
        return entry["result"]

    def missing(self) -> list[str]:
        return [key for key, unit in self.units.items() if self.cache.get(unit) is None]

    def summary(self, keys: Sequence[str], value: Callable[[dict[str, Any]], float]) -> Summary:
        return Summary([value(self[key]) for key in keys])

    def wall_seconds(self, key: str) -> float:
        return self.cache.get(self.units[key])["wall_seconds"]


def accuracy_of(result: dict[str, Any]) -> float:
    return result["accuracy"]


def last_layer_cosine(result: dict[str, Any]) -> float:
    return result["profile"]["cosine_similarity"][-1]


def text_seeds(plan: Plan, variant: str) -> tuple[int, ...]:
    return plan.seeds[: plan.fusion_seeds] if is_fusion(variant) else plan.seeds


def plot_profiles_before_after(results: Results, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_depth_sweep(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = results.plan
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    depths = sorted(plan.vit_depths)
    for index, variant in enumerate(plan.vit_variants):
        for axis, value in zip(axes, (accuracy_of, last_layer_cosine), strict=True):
            summaries = [results.summary([vit_key(d, variant, s) for s in plan.seeds], value) for d in depths]
            offset = 1 + 0.025 * (index - len(plan.vit_variants) / 2)  # spread the error bars apart
            axis.errorbar(
                [d * offset for d in depths],
                [s.mean for s in summaries],
                yerr=[s.std or 0.0 for s in summaries],
                marker="o",
                markersize=4,
                capsize=3,
                label=variant,
            )
    for axis, label in zip(axes, ("test accuracy", "last-layer mean pairwise cosine similarity"), strict=True):
        axis.set_xscale("log", base=2)
        axis.set_xticks(depths, [str(d) for d in depths])
        axis.set_xlabel("depth (layers)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = len(plan.seeds)
    figure.suptitle(f"ViT trained from scratch on sklearn digits: mean ± std over {seeds} seed(s)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def option_value(options: Sequence[str], name: str) -> str:
    return options[list(options).index(name) + 1]


def setup_section(results: Results) -> list[str]:
    plan = results.plan
    first_text = results[f"text/{BASELINE}/seed{plan.seeds[0]}"]
    first_vit = results[vit_key(plan.vit_depths[0], BASELINE, plan.seeds[0])]
    text_recipe = {**UNIT_RECIPE, **dict(zip(plan.text_options[::2], plan.text_options[1::2], strict=True))}
    invocations = results.cache.data["invocations"]
    machine = invocations[-1]["machine"] if invocations else machine_description()
    total = sum(entry["wall_seconds"] for entry in invocations)
    config_defaults = ", ".join(f"{name} = {default_value(name):g}" for name in SWEPT_FIELD.values())
    lines = [
        "## Setup",
        "",
        f"- Plan `{plan.name}`: seeds {', '.join(map(str, plan.seeds))}. A seed sets the weight initialisation, the "
        "data order and the train/evaluation split. Mean ± sample standard deviation over the seeds.",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, fp32. Wall time of the run(s) that produced these results: {total / 60:.1f} min "
        f"over {len(invocations)} invocation(s).",
        f"- Method hyper-parameters, unless swept: the configuration defaults ({config_defaults}, dgn_groups = "
        f"{default_value('dgn_groups')}, contranorm_tau = {default_value('contranorm_tau'):g}); every layer corrected.",
        "- Text (experiments 1 and 3): the packaged all-MiniLM-L6-v2 (6 layers, width 384), Rotten Tomatoes snippets "
        f"split by movie, {first_text['train_examples']} training and {first_text['eval_examples']} held-out "
        f"examples, max length {text_recipe['max_seq_length']}, {text_recipe['num_train_epochs']} epoch, batch "
        f"{text_recipe['per_device_train_batch_size']}, learning rate {text_recipe['learning_rate']:g}, weight decay "
        f"{text_recipe['weight_decay']:g}, warm-up {text_recipe['warmup_steps']:g} of the steps (finetune.py's "
        "embedded default recipe).",
        f"- Images (experiment 2): a ViT (width {VIT_ARCHITECTURE['hidden_size']}, "
        f"{VIT_ARCHITECTURE['num_attention_heads']} heads, MLP {VIT_ARCHITECTURE['intermediate_size']}, 8×8 digits "
        f"in 2×2 patches: 16 patches + [CLS]) trained from scratch, {first_vit['train_examples']} training and "
        f"{first_vit['eval_examples']} test images, {plan.vit_epochs} epochs, batch "
        f"{option_value(VIT_TRAINING, '--per_device_train_batch_size')}, learning rate "
        f"{option_value(VIT_TRAINING, '--learning_rate')}, weight decay "
        f"{option_value(VIT_TRAINING, '--weight_decay')}.",
        f"- Profiles: the first {first_text['profile_sequences']} held-out sequences (text) or "
        f"{first_vit['profile_sequences']} test images, every real token, the raw residual stream of each layer. "
        '"Head input" is what the classifier reads: the fused output under a fusion, after ViT\'s final norm.',
        "",
    ]
    return lines


def experiment_1(results: Results, image_paths: dict[str, str]) -> list[str]:
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
        lines += [f"![{METRIC_TITLES[metric]} by layer]({image_paths[metric]})", ""]
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


def experiment_2(results: Results, image_path: str) -> list[str]:
    plan = results.plan
    depths = sorted(plan.vit_depths)
    lines = [
        "## Experiment 2: depth sweep, ViT from scratch on digits",
        "",
        f"![accuracy and last-layer cosine similarity against depth]({image_path})",
        "",
    ]
    for title, value, scale, digits in (
        ("Test accuracy (%)", accuracy_of, 100.0, 1),
        ("Last-layer mean pairwise cosine similarity", last_layer_cosine, 1.0, 3),
    ):
        lines += [f"{title}, mean ± std over {len(plan.seeds)} seed(s):", ""]
        lines += ["| variant | " + " | ".join(f"depth {d}" for d in depths) + " |", "|---|" + "---:|" * len(depths)]
        for variant in plan.vit_variants:
            cells = [results.summary([vit_key(d, variant, s) for s in plan.seeds], value) for d in depths]
            lines.append(f"| {variant} | " + " | ".join(c.format(digits, scale) for c in cells) + " |")
        lines.append("")
    lines += [
        "Accuracy difference to `none` in points, ± its standard error (`*`: more than two standard errors):",
        "",
        "| variant | " + " | ".join(f"depth {d}" for d in depths) + " |",
        "|---|" + "---:|" * len(depths),
    ]
    for variant in plan.vit_variants:
        if variant == BASELINE:
            continue
        cells = [
            difference(
                results.summary([vit_key(d, variant, s) for s in plan.seeds], accuracy_of),
                results.summary([vit_key(d, BASELINE, s) for s in plan.seeds], accuracy_of),
            )
            for d in depths
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines + sweep_section(results)


def sweep_section(results: Results) -> list[str]:
    plan = results.plan
    points = sweep_points(plan)
    if not points:
        return []
    lines = [
        f"### Hyper-parameter sweep (depth {plan.sweep_depth})",
        "",
        "| correction | field | value | test accuracy (%) | last-layer cosine |",
        "|---|---|---:|---:|---:|",
    ]
    for correction, field_name, value in points:
        keys = [vit_key(plan.sweep_depth, correction, s, field_name, value) for s in plan.seeds]
        default = " (default)" if value == default_value(field_name) else ""
        accuracy = results.summary(keys, accuracy_of).format(1, 100.0)
        cosine = results.summary(keys, last_layer_cosine).format(3)
        lines.append(f"| {correction} | {field_name} | {value:g}{default} | {accuracy} | {cosine} |")
    baseline_keys = [vit_key(plan.sweep_depth, BASELINE, s) for s in plan.seeds]
    baseline = results.summary(baseline_keys, accuracy_of).format(1, 100.0)
    return [*lines, "", f"`none` at depth {plan.sweep_depth}: {baseline} %.", ""]


def experiment_3(results: Results) -> list[str]:
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
        f1 = results.summary(keys, lambda r: r["f1_macro"]).format(1, 100.0)
        ratios = [results[key]["train_seconds"] / baseline_times[s] for key, s in zip(keys, seeds, strict=True)]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        delta = difference(summary, baseline) if variant != BASELINE else "—"
        per_seed = " / ".join(f"{value * 100:.1f}" for value in summary.values)
        lines.append(
            f"| {variant} | {len(seeds)} | {summary.format(1, 100.0)} | {per_seed} | {f1} | {delta} | {ratio} |"
        )
    mean_time = statistics.fmean(baseline_times.values())
    lines += ["", f"`none` trains in {mean_time:.0f} s on average (one process, all cores).", ""]
    return lines


def measured(results: Results, keys: Sequence[str]) -> list[str]:
    """The keys among `keys` whose units have a cached result."""
    return [key for key in keys if results.cache.get(results.units[key]) is not None]


def strength_rows(plan: Plan) -> list[str]:
    """Experiment 4's text variants in table order: stock, then each corrected variant fixed and learned."""
    return [BASELINE, *(name for variant in strength_variants() for name in (variant, variant + LEARNED))]


def experiment_4(results: Results, image_path: str | None) -> list[str]:
    plan = results.plan
    pending = [key for key in results.missing() if key in strength_keys(plan)]
    stock_keys = measured(results, [f"text/{BASELINE}/seed{s}" for s in plan.strength_seeds])
    stock = results.summary(stock_keys, accuracy_of)
    stock_times = {key.rsplit("/", 1)[1]: results[key]["train_seconds"] for key in stock_keys}
    lines = [
        "## Experiment 4: pretrained-safe corrections (learned strengths)",
        "",
        '`correction_strength="learned"` multiplies every correction\'s strength by gates that start at 0 (one per '
        "layer, one per head for centered attention and NeuTRENO; `strength_gate_scale` = "
        f"{default_value('strength_gate_scale'):g}), so the converted MiniLM starts as the pretrained one. "
        f"Experiment 3's recipe, seeds {', '.join(map(str, plan.strength_seeds))}; `all` combines every correction. "
        "Accuracy and macro-F1 in %, mean ± std; Δ accuracy to `none` in points ± its standard error (`*`: beyond "
        "two standard errors); training time relative to `none` of the same seed (median, min–max).",
        "",
    ]
    if pending:
        lines += [
            f"*{len(pending)} of this experiment's units are not measured yet (the rows show the seeds measured); "
            "`python experiments/run_all.py` measures them, resuming from the committed cache.*",
            "",
        ]
    lines += [
        "| variant | strength | seeds | accuracy | macro-F1 | Δ accuracy | training time / `none` |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant in strength_rows(plan):
        keys = measured(results, [f"text/{variant}/seed{s}" for s in plan.strength_seeds])
        name, strength = variant.removesuffix(LEARNED), "learned" if variant.endswith(LEARNED) else "fixed"
        if not keys:
            lines.append(f"| {name} | {strength} | 0 | — | — | — | — |")
            continue
        summary = results.summary(keys, accuracy_of)
        f1 = results.summary(keys, lambda r: r["f1_macro"]).format(1, 100.0)
        ratios = [
            results[key]["train_seconds"] / stock_times[key.rsplit("/", 1)[1]]
            for key in keys
            if key.rsplit("/", 1)[1] in stock_times
        ]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "—"
        delta = difference(summary, stock) if variant != BASELINE else "—"
        lines.append(f"| {name} | {strength} | {len(keys)} | {summary.format(1, 100.0)} | {f1} | {delta} | {ratio} |")
    lines.append("")
    if image_path is not None:
        lines += [
            "Learned strengths per layer (the configured strength times the gate; mean over heads and seeds, bars: "
            "min–max over the heads and seeds). 0 is the stock model; a negative strength is the opposite "
            "correction:",
            "",
            f"![learned strengths per layer]({image_path})",
            "",
        ]
    return lines + strength_vit_section(results)


def strength_vit_section(results: Results) -> list[str]:
    plan = results.plan
    if not plan.strength_vit_depths:
        return []
    depths = sorted(plan.strength_vit_depths)
    lines = [
        "### The ViT from scratch with learned strengths",
        "",
        "Experiment 2's ViT at the deepest depths; from scratch the gates start at 0 too, so each corrected model "
        "begins as the stock one. Test accuracy (%), mean ± std over the seeds measured:",
        "",
        "| variant | " + " | ".join(f"depth {d}: fixed | depth {d}: learned" for d in depths) + " |",
        "|---|" + "---:|---:|" * len(depths),
    ]
    for variant in plan.vit_variants:
        cells = []
        for depth in depths:
            for suffix in ("", LEARNED):
                if variant == BASELINE and suffix:
                    cells.append("—")
                    continue
                keys = measured(results, [vit_key(depth, variant + suffix, s) for s in plan.seeds])
                cells.append(results.summary(keys, accuracy_of).format(1, 100.0) if keys else "—")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot_learned_strengths(results: Results, path: Path) -> bool:
    """Mean learned strength per layer for each correction (text units); False when none is measured yet."""
    plan = results.plan
    per_correction: dict[str, dict[str, list[float]]] = {}
    for variant in strength_variants():
        for key in measured(results, [f"text/{variant}{LEARNED}/seed{s}" for s in plan.strength_seeds]):
            for correction, places in results[key]["strengths"].items():
                label = correction if variant == correction else f"{correction} (in all)"
                for place, values in places.items():
                    per_correction.setdefault(label, {}).setdefault(place, []).extend(values)
    if not per_correction:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def strength_findings(results: Results) -> list[str]:
    """Experiment 4 against `none`, over the seeds measured so far (nothing before the first learned unit)."""
    plan = results.plan
    stock = results.summary(measured(results, [f"text/{BASELINE}/seed{s}" for s in plan.strength_seeds]), accuracy_of)
    cells = []
    for variant in strength_variants():
        for suffix in ("", LEARNED):
            keys = measured(results, [f"text/{variant}{suffix}/seed{s}" for s in plan.strength_seeds])
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


def findings(results: Results) -> list[str]:
    """Bullet sentences derived from the numbers, so that the summary can never disagree with the tables."""
    plan = results.plan
    depths = sorted(plan.vit_depths)
    lines = []
    baseline_by_depth = [results.summary([vit_key(d, BASELINE, s) for s in plan.seeds], accuracy_of) for d in depths]
    lines.append(
        f"- `none` on digits: {baseline_by_depth[0].mean * 100:.1f} % at depth {depths[0]}, "
        f"{baseline_by_depth[-1].mean * 100:.1f} % at depth {depths[-1]}; best depth "
        f"{depths[max(range(len(depths)), key=lambda i: baseline_by_depth[i].mean)]}."
    )
    for depth in depths:
        base = results.summary([vit_key(depth, BASELINE, s) for s in plan.seeds], accuracy_of)
        best = max(
            plan.vit_variants,
            key=lambda v: results.summary([vit_key(depth, v, s) for s in plan.seeds], accuracy_of).mean,
        )
        best_summary = results.summary([vit_key(depth, best, s) for s in plan.seeds], accuracy_of)
        lines.append(
            f"- Depth {depth}: best `{best}` at {best_summary.format(1, 100.0)} %; against `none` "
            f"{difference(best_summary, base)} points."
        )
    text_base = results.summary([f"text/{BASELINE}/seed{s}" for s in plan.seeds], accuracy_of)
    clear = []
    for variant in variants():
        if is_fusion(variant) or variant == BASELINE:
            continue
        delta = difference(results.summary([f"text/{variant}/seed{s}" for s in plan.seeds], accuracy_of), text_base)
        if delta.endswith("*"):
            clear.append(f"`{variant}` ({delta.removesuffix(' *')} points)")
    lines.append(
        "- Rotten Tomatoes: accuracy differs from `none` by more than two standard errors for "
        + (", ".join(clear) if clear else "no correction")
        + "; every other correction is within two standard errors of it."
    )
    lines += strength_findings(results)
    seed = plan.seeds[0]
    after = {variant: last_layer_cosine(results[f"text/{variant}/seed{seed}"]) for variant in variants()}
    before = last_layer_cosine(results[f"pretrained/{BASELINE}"])
    least = min(after, key=after.get)
    lines.append(
        f"- Fine-tuning raises MiniLM's last-layer cosine similarity (`none`, seed {seed}: {before:.3f} → "
        f"{after[BASELINE]:.3f}); least smoothed after fine-tuning: `{least}` at {after[least]:.3f}."
    )
    return lines


def write_report(plan: Plan) -> Path:
    """Regenerates the report's tables and plots from the cached results of `plan`."""
    results = Results(plan, ResultCache(plan.results_path))
    missing = [key for key in results.missing() if key not in strength_keys(plan)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SystemExit(f"error: {len(missing)} unit(s) of plan {plan.name} have no cached result ({shown}); run them")
    relative = lambda path: os.path.relpath(path, plan.report_path.parent)  # noqa: E731
    profile_images = {metric: plan.images_dir / f"profile_{metric}.png" for metric in PROFILE_METRICS}
    for metric, path in profile_images.items():
        plot_profiles_before_after(results, metric, path)
    depth_image = plan.images_dir / "depth_sweep.png"
    plot_depth_sweep(results, depth_image)
    strength_image = plan.images_dir / "learned_strengths.png"
    plotted_strengths = plot_learned_strengths(results, strength_image)
    generated = [
        f"*Generated by `python experiments/run_all.py{' --quick' if plan.name == 'quick' else ''}` from "
        f"`{os.path.relpath(plan.results_path, REPO_ROOT)}`; do not edit between the markers.*",
        "",
        *setup_section(results),
        *experiment_1(results, {metric: relative(path) for metric, path in profile_images.items()}),
        *experiment_2(results, relative(depth_image)),
        *experiment_3(results),
        *experiment_4(results, relative(strength_image) if plotted_strengths else None),
        "## Findings (computed from the tables above)",
        "",
        *findings(results),
    ]
    heading = f"# Results ({plan.name} plan)\n\nOver-smoothing corrections measured offline on this machine."
    write_generated_section(plan.report_path, "\n".join(generated), REPORT_BEGIN, REPORT_END, heading)
    if plan.readme_path is not None:
        from_readme = lambda path: os.path.relpath(path, plan.readme_path.parent)  # noqa: E731
        headline = [
            f"![ViT on digits: accuracy and last-layer cosine similarity against depth]({from_readme(depth_image)})",
            "",
            f"From [{from_readme(plan.report_path)}]({from_readme(plan.report_path)}), generated by "
            "`python experiments/run_all.py`:",
            "",
            *findings(results),
        ]
        write_generated_section(plan.readme_path, "\n".join(headline), HEADLINE_BEGIN, HEADLINE_END)
    return plan.report_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small slices of every experiment (under 10 minutes)")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from cached results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, plan: Plan | None = None) -> int:
    args = parse_args(argv)
    plan = plan or (quick_plan() if args.quick else full_plan())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.report_only:
        started = time.perf_counter()
        failures = run_plan(plan, log=lambda line: print(line, flush=True))
        print(f"ran for {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        if failures:
            print(f"{len(failures)} unit(s) failed; rerun to retry them:", *failures, sep="\n  ", file=sys.stderr)
            return 1
    print(f"report written to {write_report(plan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
