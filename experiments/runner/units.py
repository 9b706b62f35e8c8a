"""A unit is one measurement: a key and the exact `finetune.py` options that produce it, plus how it is measured.

Every unit starts from `UNIT_RECIPE` (finetune.py's embedded default as these experiments were defined: fixed
strengths, no stock baseline run inside the unit) and adds `COMMON_OPTIONS` and its own. A trained unit's result holds
the task's quality metrics under their names (the task's `metric_names`: accuracy and macro-F1 for classification),
its training time and, with learned strengths, the strengths; then whatever its `measure` hook returns. The default
hook, `measure_profile`, records the over-smoothing profile of every layer and of what the task head reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from hf_centered.diagnostics import oversmoothing_profile
from hf_centered.finetuning import EMBEDDED_DEFAULT, FinetuneArguments
from hf_centered.tasks.base import TaskData

# What every unit's options are added to: the recipe these experiments were defined with. The embedded default of
# finetune.py has since turned to learned strengths and a stock baseline inside each run; the units name those.
UNIT_RECIPE = {**EMBEDDED_DEFAULT, "correction_strength": "fixed", "baseline": False}
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
PROFILE_METRICS = ("cosine_similarity", "effective_rank", "rank_collapse_residual")

# (model, its task's data, the parsed finetune.py arguments, the most sequences to profile) → JSON-safe entries.
Measure = Callable[[torch.nn.Module, TaskData, FinetuneArguments, int], dict[str, Any]]


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


def measure_profile(model: torch.nn.Module, data: TaskData, args: FinetuneArguments, sequences: int) -> dict[str, Any]:
    """The layer profile and the head input's metrics on the first `sequences` evaluation examples (the task's
    `profile_inputs` where it sets them, as the card's profile)."""
    inputs = data.evaluation if data.profile_inputs is None else data.profile_inputs
    kwargs = dict(batch_size=args.training.per_device_eval_batch_size, max_sequences=sequences, progress=False)
    profile = oversmoothing_profile(model, inputs, **kwargs)
    head = oversmoothing_profile(HeadInput(model), inputs, **kwargs)
    return {
        "profile": {name: profile.metrics[name] for name in PROFILE_METRICS},
        "head_input": {name: head.metrics[name][0] for name in PROFILE_METRICS},
        "profile_sequences": profile.num_sequences,
    }


@dataclass(frozen=True)
class Unit:
    """One measurement. Its cache entry is valid while `options` are unchanged; the other fields say how it runs.

    Units cross to spawned worker processes by pickling, so `measure` must be a module-level function.
    """

    key: str
    options: tuple[str, ...]  # finetune.py options, without --output_dir (the scratch folder is not part of a result)
    # finetune.py options naming this machine's files (a packaged tokenizer's folder): passed after `options`, not
    # part of the cache key, so that a committed result holds on a machine that keeps the file elsewhere
    local_options: tuple[str, ...] = ()
    train: bool = True  # False: the converted checkpoint is measured as it is (no training, no quality metrics)
    alone: bool = False  # True: one at a time on every core (training times compared); False: one core, side by side
    cost: float = 1.0  # relative run time: the units run side by side start longest first
    measure: Measure = measure_profile
