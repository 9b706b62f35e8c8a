"""Reproduces docs/RESULTS.md offline: over-smoothing profiles, a ViT depth sweep and per-method fine-tuning.

    python experiments/run_all.py                 # the full plan: docs/RESULTS.md (its Setup estimates the time)
    python experiments/run_all.py --quick         # every code path on small slices (about 7 minutes on 2 cores)
    python experiments/run_all.py --report-only   # rewrite the tables and plots from the cached results
    python experiments/run_all.py --only masked_lm_depth   # measure one experiment's missing units, then the report

Every measurement is one unit: a key and the exact `finetune.py` options that produce it. Finished units are cached in
a JSON file as soon as they complete, so an interrupted run resumes where it stopped, and a changed plan reruns only
the units whose options changed; move the results file away to measure everything again. The experiments, in report
order (`EXPERIMENTS`), each in a module that says what its units are:

- `minilm.PROFILES` (experiment 1): the packaged all-MiniLM-L6-v2 converted with each method, profiled before and
  after fine-tuning on Rotten Tomatoes.
- `vit_digits.DEPTH_SWEEP` (experiment 2): a ViT trained from scratch on sklearn's digits at depths 2 to 32, and a
  sweep of each correction's main hyper-parameter.
- `minilm.FINETUNING` (experiment 3): MiniLM fine-tuned on Rotten Tomatoes with each method, over seeds.
- `learned_strengths.LEARNED_STRENGTHS` (experiment 4): every correction with fixed against learned strengths.
- `wnut16_tagging.TAGGING`: MiniLM fine-tuned for named entities on WNUT 2016 tweets, every correction fixed and
  learned.
- `masked_lm_depth.MASKED_LM_DEPTH`: BERT masked language models trained from scratch on the text corpus at
  depths 2 to 24.
- `segmentation_depth.SEGMENTATION_DEPTH`: a ViT segmenting digit mosaics, trained from scratch at depths 4 to 32.
- `family_language_models.FAMILY_LANGUAGE_MODELS`: RoBERTa- and ModernBERT-style masked LMs and a Llama-style causal
  LM, corrected through the generic path, trained from scratch on the text corpus at depths 4 to 16.

A variant is every registered correction alone and every registered fusion alone, so a new method joins the
experiments without an edit. The text units run one at a time on every core (their training times are compared); the
small ViT units run one per core. Each unit's output (a Hub-ready export) and log stay in the scratch folder. The
machinery the experiments share (units, cache, workers, statistics, report writer) is the `runner` package.

Adding an experiment: a module defining an `Experiment` (`runner/plan.py`: its settings for the full, quick and tiny
plan, its units, its report section and findings), and its line in `EXPERIMENTS`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner import REPO_ROOT  # first: puts this checkout's package first on sys.path, before anything imports it

# isort: split
import family_language_models
import learned_strengths
import masked_lm_depth
import minilm
import segmentation_depth
import vit_digits
import wnut16_tagging
from runner.plan import FULL, QUICK, TINY, Experiment, Plan
from runner.report import write_report
from runner.scheduling import run_plan

# The experiments in report order: the one place that lists them.
EXPERIMENTS: tuple[Experiment, ...] = (
    minilm.PROFILES,
    vit_digits.DEPTH_SWEEP,
    minilm.FINETUNING,
    learned_strengths.LEARNED_STRENGTHS,
    wnut16_tagging.TAGGING,
    masked_lm_depth.MASKED_LM_DEPTH,
    segmentation_depth.SEGMENTATION_DEPTH,
    family_language_models.FAMILY_LANGUAGE_MODELS,
)


def settings(size: str) -> dict[str, Any]:
    """Every experiment's own settings in a plan of `size` (FULL, QUICK or TINY), by experiment name."""
    return {experiment.name: experiment.settings(size) for experiment in EXPERIMENTS}


def full_plan() -> Plan:
    return Plan(
        name="full",
        experiments=EXPERIMENTS,
        settings=settings(FULL),
        seeds=(42, 43, 44),
        profile_sequences=256,
        results_path=REPO_ROOT / "experiments" / "results" / "full.json",
        report_path=REPO_ROOT / "docs" / "RESULTS.md",
        images_dir=REPO_ROOT / "docs" / "images" / "results",
        scratch_dir=REPO_ROOT / "outputs" / "experiments" / "full",
        readme_path=REPO_ROOT / "README.md",
    )


def quick_plan() -> Plan:
    """Every code path of the full plan on small slices: one seed, each experiment's quick settings, fewer sequences."""
    quick_dir = REPO_ROOT / "outputs" / "experiments" / "quick"
    return replace(
        full_plan(),
        name="quick",
        settings=settings(QUICK),
        seeds=(42,),
        profile_sequences=64,
        results_path=quick_dir / "results.json",
        report_path=quick_dir / "RESULTS.md",
        images_dir=quick_dir / "images",
        scratch_dir=quick_dir / "runs",
        readme_path=None,
    )


def tiny_plan(root: Path) -> Plan:
    """The tests' plan: each experiment's tiny settings (a step or two of training per unit), results under `root`."""
    return replace(
        quick_plan(),
        name="tiny",
        settings=settings(TINY),
        profile_sequences=6,
        results_path=root / "results.json",
        report_path=root / "RESULTS.md",
        images_dir=root / "images",
        scratch_dir=root / "runs",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small slices of every experiment (minutes)")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from cached results")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[experiment.name for experiment in EXPERIMENTS],
        metavar="EXPERIMENT",
        help="measure only these experiments' missing units (then write the whole report); one of: "
        + ", ".join(experiment.name for experiment in EXPERIMENTS),
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, plan: Plan | None = None) -> int:
    args = parse_args(argv)
    plan = plan or (quick_plan() if args.quick else full_plan())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.report_only:
        started = time.perf_counter()
        measured = plan
        if args.only:
            measured = replace(plan, experiments=tuple(e for e in plan.experiments if e.name in args.only))
        failures = run_plan(measured, log=lambda line: print(line, flush=True))
        print(f"ran for {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        if failures:
            print(f"{len(failures)} unit(s) failed; rerun to retry them:", *failures, sep="\n  ", file=sys.stderr)
            return 1
    print(f"report written to {write_report(plan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
