"""Running one unit in a worker process: `finetune.py`'s own pipeline, the unit's result, its log file."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hf_centered import finetuning
from hf_centered.strength_maps import has_learned_strengths
from runner.units import UNIT_RECIPE, Unit


def recipe_argv(scratch_dir: Path) -> list[str]:
    """`--config` of `UNIT_RECIPE`, written into the scratch folder (the recipe is code, not part of a unit's key)."""
    import yaml

    path = scratch_dir / "unit_recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(UNIT_RECIPE))
    return ["--config", str(path)]


def prepared_data(argv: list[str]):
    """finetune.py's own pipeline up to the data: (arguments, configuration, source, processor, data)."""
    args = finetuning.parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    processor = finetuning.load_processor(args, config, source)
    data = args.task.load_data(args, config, processor)
    args.task.configure(config, data)
    return args, config, source, processor, data


def training_seconds(output_dir: Path) -> float:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry["train_runtime"] for entry in history if "train_runtime" in entry)


def execute_unit(unit: Unit, output_dir: Path, profile_sequences: int, recipe: list[str]) -> tuple[dict[str, Any], str]:
    """Runs one unit in this process (`recipe`: the `--config` of its base recipe): its JSON-safe result, and the
    progress log's words on it (the task's headline metric)."""
    argv = [*recipe, *unit.options, *unit.local_options, "--output_dir", str(output_dir)]
    args, config, source, _, data = prepared_data(argv)
    train_examples, eval_examples = data.examples
    result: dict[str, Any] = {"train_examples": train_examples, "eval_examples": eval_examples}
    summary = ""
    if unit.train:
        quality = finetuning.quality_metrics(args.task, finetuning.main(argv))
        result.update(quality, train_seconds=training_seconds(output_dir))
        headline = args.task.metric_names[0]
        summary = f"{headline} {quality[headline]:.4f}, "
        model = args.task.head_class(config).from_pretrained(output_dir)
        if has_learned_strengths(model):
            result["strengths"] = model.correction_strengths()
    else:
        model = finetuning.build_model(config, source, args.task)
    result.update(unit.measure(model, data, args, profile_sequences))
    return result, summary


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


def run_in_worker(
    unit: Unit, scratch_dir: str, profile_sequences: int, threads: int
) -> tuple[dict[str, Any], str, float]:
    """Worker entry point: the unit's result, the progress log's words on it and its wall seconds; its output goes
    to `<scratch>/logs/`."""
    torch.set_num_threads(threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    scratch = Path(scratch_dir)
    log_path = scratch / "logs" / (unit.key.replace("/", "__") + ".log")
    started = time.perf_counter()
    try:
        with output_redirected_to(log_path):
            result, summary = execute_unit(unit, scratch / unit.key, profile_sequences, recipe_argv(scratch))
    except SystemExit as error:  # finetune.py's one-line errors
        raise RuntimeError(f"{error} (log: {log_path})") from None
    except Exception as error:
        raise RuntimeError(f"{type(error).__name__}: {error} (log: {log_path})") from error
    return result, summary, time.perf_counter() - started
