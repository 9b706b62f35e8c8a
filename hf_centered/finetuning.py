"""Fine-tuning with the Trainer: one YAML file plus command-line overrides, offline data, LoRA, Hub-ready output.

`python finetune.py` (no arguments) fine-tunes the packaged all-MiniLM-L6-v2 with centered attention (learned
strengths) on Rotten Tomatoes, beside the stock model under the same setup; `python finetune.py --config
configs/<name>.yaml [--field value ...]` runs a named configuration, the command line winning over the file. The same
script runs under `torchrun` and `accelerate launch`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from accelerate import PartialState
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.trainer_utils import SaveStrategy

from . import data as offline_data
from .auto import peft_modules_to_save
from .cli import CORRECTION_FIELD_TYPES, one_line
from .configuration_centered import CenteredBertConfig, CenteredViTConfig, CorrectionConfigMixin, field_help
from .correction_base import FIXED_STRENGTH, LEARNED_STRENGTH
from .corrections import NO_CORRECTION, available_corrections
from .diagnostics import Profile, oversmoothing_profile
from .fusion import NO_FUSION, available_fusions
from .hub import EXPORT_MANIFEST, export_for_hub, push_to_hub
from .image_processing_centered_vit import CenteredViTImageProcessor
from .modeling_generic import GENERIC_FAMILIES, corrected_config_class
from .strength_maps import has_learned_strengths, summarise_strengths
from .tasks import (
    DEFAULT_TASK,
    TASKS,
    Task,
    TaskData,
    UsageError,
    available_tasks,
    builtin_datasets,
    fail,
    task_of_dataset,
)
from .tasks.base import IMAGE, TEXT

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
RUN_RECORD = "finetune_args.json"
BASELINE_DIR = "stock-baseline"  # the stock model's run under the same setup, inside output_dir
GATHERED_DIR = "gathered-weights"  # scratch folder of the full weights of a sharded (FSDP/DeepSpeed) run
# Written into each checkpoint of a run once the Trainer has written all of it: the run's id and every file's size.
CHECKPOINT_MARKER = "hf_centered_checkpoint.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it after the weights, optimizer, scheduler and RNG states
# Fields that may differ between a killed run and its resumption, or between a run and its re-export.
RUN_RECORD_IGNORED = {
    "output_dir",
    "overwrite",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_private_repo",
    "keep_checkpoints",
    "baseline",
}
# Configuration entries that --architecture may not set: the run decides them (the labels come from the data).
ARCHITECTURE_RESERVED_FIELDS = {
    "architectures",
    "transformers_version",
    "_name_or_path",
    "id2label",
    "label2id",
}
# What a configuration raises for a bad value: its own checks, and transformers' typed fields.
CONFIG_ERRORS = (ValueError, TypeError, StrictDataclassError)
DEFAULT_LORA_TARGETS = {TEXT: ["query", "value"], IMAGE: ["q_proj", "v_proj"]}
# How the printed results name a metric (the card keeps the Hub's metric ids).
METRIC_TITLES = {
    "f1_macro": "macro-F1",
    "exact_match": "exact match",
    "mean_iou": "mean IoU",
    "mean_accuracy": "mean class accuracy",
    "overall_accuracy": "pixel accuracy",
}
SHARED_COLUMN_OPTIONS = ("text_column", "label_column")  # read by some tasks only: `Task.column_options`

# `python finetune.py` without --config runs this; configs/default.yaml holds exactly the same mapping.
EMBEDDED_DEFAULT: dict[str, Any] = {
    "correction": ["centered"],
    # Starts as the pretrained model and learns each head's strength (docs/RESULTS.md, experiment 4).
    "correction_strength": "learned",
    "dataset_name": "rotten_tomatoes",
    "max_train_samples": 4000,
    "max_eval_samples": 1000,
    "max_seq_length": 64,
    "output_dir": "outputs/centered-minilm-rotten-tomatoes",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "learning_rate": 2.0e-4,  # MiniLM (a sentence encoder) learns a head slowly at 5e-5: 0.57 vs 0.79 accuracy
    "weight_decay": 0.01,
    "warmup_steps": 0.1,
    "logging_steps": 20,
    "save_steps": 50,
    "save_total_limit": 1,
    "seed": 42,
}


@dataclass
class ModelArguments:
    """Where the weights come from: a pretrained checkpoint (converted) or an architecture trained from scratch."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Local folder or Hub id of a checkpoint of a supported family (BERT, ViT, RoBERTa, Llama, ... "
            "or an hf_centered one); default: the packaged all-MiniLM-L6-v2, unless `architecture` is given."
        },
    )
    architecture: str | None = field(
        default=None,
        metadata={
            "help": "Train from scratch: a JSON object (a mapping in YAML) of configuration fields, e.g. "
            '\'{"image_size": 8, "patch_size": 2, "num_channels": 1, "hidden_size": 64}\'; its `model_type` picks the '
            "family (default: bert for text, vit for images; any family of the generic path, e.g. roberta, llama)."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; default: the model's own tokenizer."}
    )
    num_labels: int | None = field(default=None, metadata={"help": "Number of classes; default: from the data."})


def _correction_argument(config_field: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
    """The command-line twin of one `CorrectionConfigMixin` field (lists become `nargs="+"` options)."""
    name = config_field.name
    if name == "correction":
        help_text = f"Corrections to combine, among {', '.join(available_corrections())}."
        return name, list[str], field(default_factory=lambda: [config_field.default], metadata={"help": help_text})
    if name == "correction_layers":
        help_text = "0-based layers the corrections act in (default: all)."
        return name, list[int] | None, field(default=None, metadata={"help": help_text})
    if name == "fusion":
        help_text = f"Fusion of the layer outputs, among {', '.join(available_fusions())}."
        return name, str, field(default=config_field.default, metadata={"help": help_text})
    value_type = CORRECTION_FIELD_TYPES.get(config_field.type, float)
    return name, value_type, field(default=config_field.default, metadata={"help": field_help(name)})


# Generated from the configuration's dataclass so that a new correction field needs no change here.
CorrectionArguments = dataclasses.make_dataclass(
    "CorrectionArguments",
    [_correction_argument(config_field) for config_field in dataclasses.fields(CorrectionConfigMixin)],
)
CorrectionArguments.__doc__ = "The anti-over-smoothing fields of `CorrectionConfigMixin`, applied to the model."


@dataclass
class DataArguments:
    """Which data, how it is split, sampled and tokenised."""

    task: str | None = field(
        default=None,
        metadata={
            "help": f"What the model learns, a Hub pipeline tag: {', '.join(available_tasks())}. Default: the task of "
            f"a built-in dataset, else {DEFAULT_TASK}."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": f"Built-in offline dataset ({', '.join(builtin_datasets())}) or a name for datasets.load_dataset; "
            "ignored when --train_file is given."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training data: a .csv, .json/.jsonl or .parquet."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    text_column: str = field(default="text", metadata={"help": "Text column of files and Hub datasets."})
    label_column: str = field(default="label", metadata={"help": "Label column (class ids or class names)."})
    validation_split_fraction: float = field(
        default=0.2, metadata={"help": "Share held out for evaluation when the data has no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many evaluation examples."})
    max_seq_length: int = field(default=128, metadata={"help": "Texts are truncated to this many tokens."})


@dataclass
class PeftArguments:
    """LoRA: adapters on the attention projections; corrections, fusion and head trained fully."""

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of every weight."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules given adapters; default BERT query/value, ViT q_proj/v_proj."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Merge the adapters and export a full Hub-ready checkpoint."}
    )


@dataclass
class OutputArguments:
    """How the output folder is treated."""

    overwrite: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty output_dir holding a different run."}
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep the checkpoint-* folders after a finished run."}
    )
    model_name: str | None = field(default=None, metadata={"help": "Title of the model card."})
    profile_sequences: int = field(
        default=256,
        metadata={
            "help": "Evaluation sequences the model card's over-smoothing profile is computed on (0: no profile)."
        },
    )
    baseline: bool = field(
        default=True,
        metadata={
            "help": f"Also fine-tune the stock model (no correction, no fusion) under the identical setup, first, into "
            f"output_dir/{BASELINE_DIR}, and print both results side by side; the card compares them. Only for a "
            "corrected model; --no_baseline skips it."
        },
    )


RUNNER_ARGUMENT_CLASSES = (
    ModelArguments,
    CorrectionArguments,
    DataArguments,
    PeftArguments,
    OutputArguments,
    TrainingArguments,
)
TASK_ARGUMENT_CLASSES = {task.name: task.arguments for task in TASKS.values() if task.arguments is not None}
ARGUMENT_CLASSES = RUNNER_ARGUMENT_CLASSES + tuple(TASK_ARGUMENT_CLASSES.values())


@dataclass
class FinetuneArguments:
    """Every parsed block of one run."""

    model: ModelArguments
    correction: Any  # a CorrectionArguments
    data: DataArguments
    peft: PeftArguments
    output: OutputArguments
    training: TrainingArguments
    task_options: dict[str, Any]  # task name -> its `Task.arguments` instance

    @property
    def task(self) -> Task:
        """The task this run trains (`validate_arguments` has resolved `data.task`)."""
        return TASKS[self.data.task]


class FinetuneParser(HfArgumentParser):
    """`HfArgumentParser` whose errors are one line: the usage of TrainingArguments alone is hundreds of lines."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def argument_names() -> set[str]:
    """Every option name accepted in a YAML file or on the command line."""
    return {config_field.name for cls in ARGUMENT_CLASSES for config_field in dataclasses.fields(cls)}


def yaml_to_argv(mapping: dict[str, Any], source: str) -> list[str]:
    """Command-line tokens equivalent to a YAML mapping; unknown keys are an error naming them."""
    unknown = sorted(set(mapping) - argument_names())
    if unknown:
        fail(f"unknown key(s) in {source}: {', '.join(unknown)}")
    list_options = {
        config_field.name
        for cls in ARGUMENT_CLASSES
        for config_field in dataclasses.fields(cls)
        if "list" in str(config_field.type)
    }
    tokens = []
    for name, value in mapping.items():
        if value is None:  # null keeps the field's default
            continue
        if isinstance(value, list) and name not in list_options:
            fail(f"{name} in {source} takes one value, got the list {value}")
        if isinstance(value, list):
            if value:
                tokens += [f"--{name}", *(str(item) for item in value)]
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        tokens += [f"--{name}", str(value)]
    return tokens


def read_config_file(path: str) -> dict[str, Any]:
    """The YAML mapping of `--config PATH`."""
    try:
        mapping = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        fail(f"cannot read the config file {path}: {error.strerror}")
    except yaml.YAMLError as error:
        fail(f"{path} is not valid YAML: {error}")
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        fail(f"{path} must hold a mapping of option names to values")
    return mapping


def has_accelerator() -> bool:
    """Whether torch sees a GPU or other accelerator."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def parse_arguments(argv: list[str] | None = None) -> FinetuneArguments:
    """`--config FILE` (default: the embedded default) expanded into options, then the command line on top."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config")
    known, remaining = config_parser.parse_known_args(argv)
    base = EMBEDDED_DEFAULT if known.config is None else read_config_file(known.config)
    base_tokens = yaml_to_argv(base, "the embedded default" if known.config is None else known.config)
    if not has_accelerator():
        # Without use_cpu, accelerate treats CPU processes under torchrun as independent runs (no DDP, no sharding).
        base_tokens = ["--use_cpu", "true", "--dataloader_pin_memory", "false", *base_tokens]
    parser = FinetuneParser(
        ARGUMENT_CLASSES,
        prog="finetune.py",
        description=__doc__.split("\n\n", 1)[1].strip(),
        epilog="Defaults shown are those of the configuration in use (the embedded default, or --config FILE).",
    )
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="YAML file of options (configs/*.yaml); the options given after it win. Default: the embedded default, "
        "configs/default.yaml.",
    )
    # Only for --help, which would show TrainingArguments' own defaults: the tokens below set the same values.
    parser.set_defaults(**{name: value for name, value in base.items() if value is not None})
    # Later tokens win in argparse, so the command line overrides the file.
    *blocks, unused = parser.parse_args_into_dataclasses(args=base_tokens + remaining, return_remaining_strings=True)
    if unused:
        options = [token for token in unused if token.startswith("-")] or unused
        hints = [
            f"{option} (did you mean --{close[0]}?)" if close else option
            for option in options
            for close in [difflib.get_close_matches(option.lstrip("-"), argument_names(), n=1, cutoff=0.8)]
        ]
        fail(f"unknown option(s) {', '.join(hints)}; `finetune.py --help` lists the options")
    runner_blocks = blocks[: len(RUNNER_ARGUMENT_CLASSES)]
    task_options = dict(zip(TASK_ARGUMENT_CLASSES, blocks[len(RUNNER_ARGUMENT_CLASSES) :], strict=True))
    args = FinetuneArguments(*runner_blocks, task_options=task_options)
    validate_arguments(args)
    return args


def validate_arguments(args: FinetuneArguments) -> None:
    """Checks that need no data or model, so that mistakes surface before anything is loaded."""
    unknown = [name for name in args.correction.correction if name not in available_corrections()]
    if unknown:
        fail(f"unknown correction(s) {unknown}; choose among {available_corrections()}")
    if args.correction.fusion not in available_fusions():
        fail(f"unknown fusion {args.correction.fusion!r}; choose among {available_fusions()}")
    data_args = args.data
    if data_args.task is None:
        data_args.task = task_of_dataset(data_args.dataset_name) or DEFAULT_TASK
    if data_args.task not in TASKS:
        fail(f"unknown task {data_args.task!r}; choose among {', '.join(available_tasks())}")
    check_task_options(args)
    own_data = data_args.train_file is not None or args.task.names_own_data(args)
    dataset = data_args.dataset_name
    if not own_data and dataset in builtin_datasets() and dataset not in args.task.builtin_datasets:
        readers = ", ".join(task.name for task in TASKS.values() if dataset in task.builtin_datasets)
        fail(
            f"the built-in dataset {dataset!r} is for --task {readers}; the built-in datasets of "
            f"{data_args.task} are {', '.join(args.task.builtin_datasets) or 'none (give files or a Hub name)'}"
        )
    if data_args.dataset_name is None and not own_data:
        fail("give a dataset (--dataset_name) or a training file (--train_file)")
    if own_data:
        data_args.dataset_name = None  # files replace the (possibly default) dataset
    for path in (data_args.train_file, data_args.validation_file):
        if path is not None and not Path(path).is_file():
            fail(f"data file {path} does not exist or is not a file")
    if not 0 < data_args.validation_split_fraction < 1:
        fail(f"validation_split_fraction={data_args.validation_split_fraction} must lie strictly between 0 and 1")
    for name in ("max_train_samples", "max_eval_samples"):
        limit = getattr(data_args, name)
        if limit is not None and limit < 1:
            fail(f"{name}={limit} must be >= 1 (leave it out to use every example)")
    if args.output.profile_sequences < 0:
        fail(f"profile_sequences={args.output.profile_sequences} must be >= 0 (0 skips the profile)")
    if args.peft.use_lora and args.model.architecture is not None:
        fail("--use_lora adapts pretrained weights; a model trained from scratch (--architecture) trains all of them")
    if args.peft.merge_lora and not args.peft.use_lora:
        fail("--merge_lora needs --use_lora")
    if args.training.push_to_hub and args.peft.use_lora and not args.peft.merge_lora:
        fail("--push_to_hub with --use_lora needs --merge_lora: only a full checkpoint is exported for the Hub")
    resume = args.training.resume_from_checkpoint
    if resume is not None:
        target = resume_target(args.training)
        if target is None:
            fail(f"resume_from_checkpoint={resume!r}: no complete checkpoint in {args.training.output_dir}")
        problem = checkpoint_problem(Path(target))
        if problem is not None:
            fail(f"resume_from_checkpoint={resume!r} is not a complete checkpoint: {problem}")
    args.task.check_arguments(args)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and args.training.device.type == "cpu":
        # accelerate shards only on an accelerator: on CPU it would train every process's full copy (plain data
        # parallelism) while transformers, reading the same variable, loads every process but the first on the meta
        # device, which then fails with "Cannot copy out of meta tensor".
        fail(
            "FSDP runs on GPUs only: without one, accelerate runs an FSDP configuration as plain data parallelism; "
            "on CPU launch with configs/accelerate/ddp.yaml or torchrun"
        )


def check_task_options(args: FinetuneArguments) -> None:
    """Refuses an option of another task than the one run, or a column option the task does not read: either would
    be silently ignored."""
    task = args.task
    data_defaults = DataArguments()
    for option in SHARED_COLUMN_OPTIONS:
        if option not in task.column_options and getattr(args.data, option) != getattr(data_defaults, option):
            read = " and ".join(f"--{name}" for name in task.column_options)
            reads = f"it reads only {read}" if read else "it names its columns with options of its own, if any"
            fail(f"--{option} is not read by --task {task.name}: {reads}")
    for name, options in args.task_options.items():
        if name == args.data.task:
            continue
        defaults = dataclasses.asdict(type(options)())
        for option, value in dataclasses.asdict(options).items():
            if value != defaults[option]:
                fail(f"--{option} is an option of --task {name}, not of --task {args.data.task}")


def resume_target(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: the folder given, or for `true`/`last` the newest complete one in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume is None or resume.lower() not in ("true", "last"):
        return resume
    return latest_complete_checkpoint(Path(training_args.output_dir))


def latest_complete_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` of `folder` that is complete, or None."""
    checkpoints = reversed(checkpoints_in(folder))
    return next((str(checkpoint) for _, checkpoint in checkpoints if checkpoint_problem(checkpoint) is None), None)


def checkpoints_in(folder: Path) -> list[tuple[int, Path]]:
    """The `checkpoint-N` folders of `folder` with their steps N, oldest step first."""
    found = []
    for path in folder.glob("checkpoint-*"):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match is not None and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def mark_checkpoint(checkpoint: Path, run_id: str) -> None:
    """Records in `checkpoint` that the run `run_id` wrote it, with the size of each of its files."""
    files = {
        path.relative_to(checkpoint).as_posix(): path.stat().st_size
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and not path.name.startswith(CHECKPOINT_MARKER)
    }
    partial = checkpoint / f"{CHECKPOINT_MARKER}.partial"
    partial.write_text(json.dumps({"run_id": run_id, "files": files}, indent=2))
    partial.replace(checkpoint / CHECKPOINT_MARKER)  # a marker is whole or absent, whenever the process dies


def checkpoint_marker(checkpoint: Path) -> dict[str, Any] | None:
    """The marker `mark_checkpoint` wrote (None for a checkpoint without one)."""
    try:
        return json.loads((checkpoint / CHECKPOINT_MARKER).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_run(checkpoint: Path) -> str | None:
    """The id of the run that wrote `checkpoint` (None when no run of this module marked it)."""
    return (checkpoint_marker(checkpoint) or {}).get("run_id")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete.

    A checkpoint this module's runs marked is complete when every file of its marker still has its recorded size. One
    without a marker (a plain Trainer's, or one the process died in before its marker) is complete when it has the
    trainer_state.json the Trainer writes last, and whole safetensors files.
    """
    if not checkpoint.is_dir():
        return "there is no such folder"
    marker = checkpoint_marker(checkpoint)
    if marker is not None:
        for name, size in marker["files"].items():
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has changed size since it was written ({path.stat().st_size} bytes, not {size})"
        return None
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except FileNotFoundError:
        return f"{TRAINER_STATE} is missing (the Trainer writes it last: the checkpoint was never finished)"
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is unreadable"
    for weights in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except SafetensorError as error:
            return f"{weights.name} is damaged ({error})"
    return None


class RunFolder(TrainerCallback):
    """What a run keeps in output_dir besides the Trainer's files: its record and the marks on its checkpoints.

    The Trainer's `save_total_limit` rotation (and its end-of-training clean-up) deletes any `checkpoint-*` folder,
    the user's too, so the Trainer runs without a limit and this callback applies it to the run's own checkpoints.
    Before the first step it refuses a complete checkpoint the run may write over, and only then writes the record.
    """

    def __init__(self, record: dict[str, Any], run_id: str, save_total_limit: int | None) -> None:
        self.record = record
        self.run_id = run_id
        self.save_total_limit = save_total_limit

    def on_train_begin(self, args, state, control, **kwargs):
        output_dir = Path(args.output_dir)
        if args.save_strategy != SaveStrategy.NO:
            in_reach = [
                checkpoint.name
                for step, checkpoint in checkpoints_in(output_dir)
                if state.global_step < step <= state.max_steps and checkpoint_problem(checkpoint) is None
            ]
            if in_reach:
                fail(
                    f"{output_dir} holds {', '.join(in_reach)}, which this run may write over (it saves up to step "
                    f"{state.max_steps}); resume from the newest (--resume_from_checkpoint last), move them away or "
                    "choose another output_dir"
                )
        if args.process_index == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / RUN_RECORD).write_text(json.dumps(self.record, indent=2))

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every rank has written its share of the checkpoint (its RNG state)
        if not args.should_save:
            return
        output_dir = Path(args.output_dir)
        mark_checkpoint(output_dir / f"checkpoint-{state.global_step}", self.run_id)
        if self.save_total_limit is None or self.save_total_limit <= 0:
            return
        own = [checkpoint for _, checkpoint in checkpoints_in(output_dir) if checkpoint_run(checkpoint) == self.run_id]
        kept = {own[-1]} | ({Path(state.best_model_checkpoint)} if state.best_model_checkpoint else set())
        surplus = len(own) - max(self.save_total_limit, len(kept))
        for checkpoint in own:
            if surplus <= 0:
                break
            if checkpoint not in kept:
                shutil.rmtree(checkpoint)
                surplus -= 1


def remove_run_checkpoints(output_dir: Path, run_id: str) -> None:
    """Deletes the checkpoints the run `run_id` wrote, a killed attempt's included; every other folder stays."""
    for _, checkpoint in checkpoints_in(output_dir):
        if checkpoint_run(checkpoint) == run_id:
            shutil.rmtree(checkpoint)


def correction_config_kwargs(correction_args) -> dict[str, Any]:
    """The correction fields as configuration keyword arguments (one correction is passed as a plain string)."""
    kwargs = dataclasses.asdict(correction_args)
    if len(kwargs["correction"]) == 1:
        kwargs["correction"] = kwargs["correction"][0]
    return kwargs


def run_record(args: FinetuneArguments) -> dict[str, Any]:
    """What identifies a run, JSON-safe: resuming or re-running needs the same record."""
    record = {}
    for block in (args.model, args.correction, args.data, args.peft, args.output, *args.task_options.values()):
        record.update(dataclasses.asdict(block))
    record.update(args.training.to_dict())
    return json.loads(json.dumps({k: v for k, v in record.items() if k not in RUN_RECORD_IGNORED}, default=str))


def check_output_dir(args: FinetuneArguments) -> None:
    """Refuses a non-empty output_dir that holds something other than a run of the same configuration."""
    output_dir = Path(args.training.output_dir)
    if output_dir.is_file():
        fail(f"output_dir {output_dir} is a file")
    if args.output.overwrite or not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    record_path = output_dir / RUN_RECORD
    if not record_path.is_file():
        fail(f"output_dir {output_dir} is not empty and holds no fine-tuning run; pass --overwrite to write there")
    try:
        previous = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = None
    if not isinstance(previous, dict):
        fail(f"{record_path} is damaged (not a JSON object of options); pass --overwrite or choose another output_dir")
    current = run_record(args)
    changed = sorted(key for key in previous.keys() | current.keys() if previous.get(key) != current.get(key))
    if changed:
        fail(
            f"output_dir {output_dir} holds a run with a different configuration ({', '.join(changed)}); "
            "pass --overwrite or choose another output_dir"
        )


def resolve_base_config(args: FinetuneArguments) -> tuple[Any, str | None]:
    """The model configuration (corrections applied, labels not yet) and the checkpoint source (None from scratch)."""
    correction_kwargs = correction_config_kwargs(args.correction)
    model_args, task = args.model, args.task
    try:
        if model_args.architecture is not None:
            return architecture_config(model_args.architecture, task, correction_kwargs), None
        source = model_args.model_name_or_path or offline_data.minilm_dir()
        try:
            stock_config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            fail(f"cannot load the checkpoint {source}: {error}")
        config = checkpoint_config_class(stock_config, source, task).from_pretrained(source, **correction_kwargs)
        if task.head_class(config) is None:
            given = "" if model_args.model_name_or_path else " (the default checkpoint)"
            fail(
                f"{source}{given} is a {stock_config.model_type!r} model, whose family has no head for --task "
                f"{task.name}; give a checkpoint of {', '.join(families_of(task))} or an --architecture"
            )
        return config, source
    except CONFIG_ERRORS as error:  # the configuration's own validation, e.g. correction_layers
        fail(one_line(error))


DEDICATED_CONFIG_CLASSES = {
    "bert": CenteredBertConfig,
    "centered_bert": CenteredBertConfig,
    "vit": CenteredViTConfig,
    "centered_vit": CenteredViTConfig,
}


def checkpoint_config_class(stock_config, source: str, task: Task) -> type:
    """The corrected configuration class for a checkpoint: the dedicated BERT's or ViT's, or the generic path's for
    the other supported families (`modeling_generic.GENERIC_FAMILIES`); checked against the task's modality."""
    model_type = stock_config.model_type
    if model_type in DEDICATED_CONFIG_CLASSES:
        config_class = DEDICATED_CONFIG_CLASSES[model_type]
    elif isinstance(stock_config, CorrectionConfigMixin):  # a checkpoint the generic path corrected already
        config_class = type(stock_config)
    elif model_type in GENERIC_FAMILIES:
        config_class = corrected_config_class(type(stock_config))
    else:
        fail(
            f"{source} is a {model_type!r} checkpoint; fine-tuning takes the families "
            f"{', '.join(GENERIC_FAMILIES)} (and checkpoints corrected from them)"
        )
    modality = modality_of(stock_config)
    if modality != task.modality:
        needed = "an image model" if task.modality == IMAGE else "a text model"
        fail(f"{source} is a {modality} model; --task {task.name} needs {needed} ({', '.join(families_of(task))})")
    return config_class


def modality_of(config) -> str:
    return IMAGE if hasattr(config, "image_size") else TEXT


def families_of(task: Task) -> list[str]:
    """The model types of `GENERIC_FAMILIES` with a head for `task`."""
    families = []
    for name in GENERIC_FAMILIES:
        stock_config = CONFIG_MAPPING[name]()
        config_class = DEDICATED_CONFIG_CLASSES.get(name) or corrected_config_class(type(stock_config))
        if modality_of(stock_config) == task.modality and task.head_class(config_class()) is not None:
            families.append(name)
    return families


def architecture_config(architecture: str, task: Task, correction_kwargs: dict[str, Any]):
    """The configuration of `--architecture` (a JSON object of configuration fields, `model_type` naming the family),
    checked: its fields exist, have valid values, and build the task's model (on the meta device, so nothing is
    allocated)."""
    try:
        fields = json.loads(architecture)
    except json.JSONDecodeError as error:
        fail(f"architecture must be a JSON object (a mapping in YAML) of configuration fields: {error}")
    if not isinstance(fields, dict):
        fail(f"architecture must be a mapping of configuration fields, got {type(fields).__name__} {architecture}")
    model_type = fields.pop("model_type", task.scratch_model_type)
    if model_type not in GENERIC_FAMILIES:
        fail(f"architecture's model_type={model_type!r} is not valid: allowed are {', '.join(GENERIC_FAMILIES)}")
    config_class = checkpoint_config_class(CONFIG_MAPPING[model_type](), "architecture", task)
    options = sorted(set(fields) & argument_names())
    if options:
        fail(f"architecture sets {', '.join(options)}, which are options of their own: pass --{options[0]} instead")
    reserved = sorted(set(fields) & ARCHITECTURE_RESERVED_FIELDS)
    if reserved:
        fail(f"architecture sets {', '.join(reserved)}, which the run decides (the labels come from the data)")
    # a family's own names and transformers' common ones it maps to them (GPT-2's hidden_size is n_embd)
    allowed = (set(config_class().to_dict()) | set(config_class.attribute_map)) - ARCHITECTURE_RESERVED_FIELDS
    unknown = sorted(set(fields) - allowed)
    if unknown:
        hints = [
            f"{name} (did you mean {close[0]}?)" if close else name
            for name in unknown
            for close in [difflib.get_close_matches(name, allowed, n=1, cutoff=0.8)]
        ]
        fail(f"unknown field(s) in architecture: {', '.join(hints)}; allowed are the fields of {config_class.__name__}")
    try:
        config = config_class(**fields, **correction_kwargs)
    except CONFIG_ERRORS as error:
        fail(f"architecture is not valid: {one_line(error)}")
    vocab_size, pad_token_id = getattr(config, "vocab_size", None), getattr(config, "pad_token_id", None)
    if isinstance(vocab_size, int) and isinstance(pad_token_id, int) and 0 < vocab_size <= pad_token_id:
        # the family's default names its own tokenizer's id; the embeddings are built around it
        fail(
            f"architecture's pad_token_id={pad_token_id} lies outside its vocab_size={vocab_size}: set pad_token_id "
            "(and the family's other special-token ids) to your tokenizer's"
        )
    try:
        head_class = task.head_class(config)
        if head_class is None:
            fail(f"architecture's model_type={model_type!r} has no head for --task {task.name}")
        with torch.device("meta"):
            head_class(copy.deepcopy(config))
    except UsageError:
        raise
    except Exception as error:  # what a configuration's values can break in a model's constructor varies widely
        fail(f"architecture {architecture} does not build a model: {type(error).__name__}: {one_line(error)}")
    return config


def load_processor(args: FinetuneArguments, config, source: str | None):
    """The tokenizer (text) or image processor (images) saved with the model."""
    if args.task.modality == TEXT:
        tokenizer_source = args.model.tokenizer_name or source
        if tokenizer_source is None:
            fail("a model trained from scratch needs --tokenizer_name")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
            if args.task.pretokenized and getattr(tokenizer, "add_prefix_space", None) is False:
                # Byte-level BPE (RoBERTa, GPT-2) encodes a word differently at the start of a text without it.
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, add_prefix_space=True)
        except (OSError, ValueError) as error:
            fail(f"cannot load a tokenizer from {tokenizer_source}: {str(error).splitlines()[0]}")
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # decoders' tokenizers often have none; batches need one
        if source is None or getattr(config, "pad_token_id", None) is None:
            # From scratch the tokenizer decides (RoBERTa's positions skip its padding id); a decoder's sequence head
            # finds each text's last token by it.
            config.pad_token_id = tokenizer.pad_token_id
        return args.task.adapt_tokenizer(tokenizer)
    if source is not None:
        try:
            return AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError):
            pass  # a checkpoint without a processor gets the digits one below
    # What digits_pixel_values gives the model, from the 8-bit images that the image-classification pipeline and
    # hf-centered diagnose hand over (the pipeline as RGB): grey levels scaled to [0, 1], resized, not normalised.
    return CenteredViTImageProcessor(
        size={"height": config.image_size, "width": config.image_size},
        num_channels=config.num_channels,
        do_normalize=False,
    )


def build_model(config, source: str | None, task: Task):
    """The task's model: converted from `source`, or freshly initialised from `config`."""
    model_class = task.head_class(config)
    if source is None:
        return model_class(config)
    # A head of another size (or none) in the checkpoint is replaced by a new one.
    return model_class.from_pretrained(source, config=config, ignore_mismatched_sizes=True)


def lora_targets(model, task: Task) -> list[str] | None:
    """The default LoRA targets: the query and value projections of the corrected BERT/ViT, or PEFT's own default for
    the family (None; `register_peft_target_modules` gives the corrected families their stock family's)."""
    if isinstance(model.config, (CenteredBertConfig, CenteredViTConfig)):
        return DEFAULT_LORA_TARGETS[task.modality]
    return None


def apply_lora(model, peft_args: PeftArguments, task: Task):
    """Wraps the model with LoRA; the head and every correction module with state of its own (DGN, the fusion, the
    learned strength gates) train fully and are saved with the adapter."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        task_type=task.peft_task_type,
        r=peft_args.lora_r,
        lora_alpha=peft_args.lora_alpha,
        lora_dropout=peft_args.lora_dropout,
        target_modules=peft_args.lora_target_modules or lora_targets(model, task),
        modules_to_save=peft_modules_to_save(model) + list(task.head_modules),
    )
    return get_peft_model(model, lora_config)


def base_model_id(source: str | None) -> str | None:
    """The Hub id the card names as base model (the packaged MiniLM is all-MiniLM-L6-v2 on the Hub)."""
    if source is None:
        return None
    if Path(source).resolve() == Path(offline_data.minilm_dir()).resolve():
        return MINILM_HUB_ID
    return source


def training_hyperparameters(args: FinetuneArguments, data: TaskData) -> dict[str, Any]:
    """What the model card lists under training hyper-parameters."""
    training = args.training
    hyperparameters = {
        "learning_rate": training.learning_rate,
        "train_batch_size": training.per_device_train_batch_size * training.world_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "num_train_epochs": training.num_train_epochs,
        "max_steps": training.max_steps,
        "weight_decay": training.weight_decay,
        "warmup_steps": training.warmup_steps,
        "lr_scheduler_type": getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type),
        "optimizer": getattr(training.optim, "value", training.optim),
        "seed": training.seed,
    }
    hyperparameters.update(train_samples=data.examples[0], eval_samples=data.examples[1])
    if data.example_counts is not None:
        hyperparameters.update(train_features=len(data.train), eval_features=len(data.evaluation))
    hyperparameters.update(args.task.card_hyperparameters(args))
    if args.peft.use_lora:
        hyperparameters.update(lora_r=args.peft.lora_r, lora_alpha=args.peft.lora_alpha)
    return hyperparameters


def is_sharded(trainer: Trainer) -> bool:
    """Whether the parameters are sharded over the ranks (FSDP, DeepSpeed), so no single rank holds the model."""
    return bool(trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)


def gather_trained_model(trainer: Trainer, args: FinetuneArguments, config, source: str | None):
    """The trained model as a plain module on this rank; every rank must call it (the gather is collective).

    Unsharded runs unwrap the model. Under FSDP/DeepSpeed every rank joins `trainer.save_model`, which writes the full
    weights (FULL_STATE_DICT / ZeRO gather) to a scratch folder; rank 0 reloads them from there and deletes it.
    """
    if not is_sharded(trainer):
        return trainer.accelerator.unwrap_model(trainer.model)
    gathered_dir = Path(args.training.output_dir) / GATHERED_DIR
    trainer.save_model(str(gathered_dir))
    if not trainer.is_world_process_zero():
        return None
    if args.peft.use_lora:  # save_model wrote the adapter (LoRA weights and modules_to_save) only
        from peft import PeftModel

        model = PeftModel.from_pretrained(build_model(config, source, args.task), gathered_dir)
    else:
        model = args.task.head_class(config).from_pretrained(gathered_dir)
    shutil.rmtree(gathered_dir)
    return model


def card_fields(args: FinetuneArguments, data: TaskData, source, metrics=None) -> dict[str, Any]:
    """The model card's fields; the evaluation's metrics join them once it has run."""
    return dict(
        model_name=args.output.model_name or Path(args.training.output_dir).name,
        model_id=args.training.hub_model_id,
        base_model=base_model_id(source),
        dataset=data.dataset_label,
        metrics=quality_metrics(args.task, metrics or {}),
        training_hyperparameters=training_hyperparameters(args, data),
    )


def trained_model_dir(args: FinetuneArguments) -> Path:
    """Where the trained model is saved right after training: the LoRA adapter's folder, or output_dir's export."""
    output_dir = Path(args.training.output_dir)
    return output_dir / "adapter" if args.peft.use_lora else output_dir


def save_trained_model(model, args: FinetuneArguments, processor, data: TaskData, source) -> None:
    """Saves the trained model into `trained_model_dir` before any step that may fail: the LoRA adapter, or a
    Hub-ready export whose card lacks only what the evaluation adds."""
    model_dir = trained_model_dir(args)
    if args.peft.use_lora:
        # A local base path means nothing once the adapter is shared: record the Hub id where one is known.
        model.peft_config["default"].base_model_name_or_path = base_model_id(source) or source
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    else:
        export_for_hub(model, model_dir, processor, overwrite=True, source=source, **card_fields(args, data, source))


def complete_export(
    model, args: FinetuneArguments, processor, data: TaskData, source, metrics, baseline: RunResult | None
) -> tuple[Path | None, Profile | None]:
    """The Hub-ready export once the evaluation has run: a LoRA run's merged model (none without --merge_lora), the
    metrics and the over-smoothing profile in its card, beside the stock `baseline`'s when there is one. Returns its
    folder (None when nothing is exported) and the profile."""
    output_dir, model_dir = Path(args.training.output_dir), trained_model_dir(args)
    if args.peft.use_lora:
        if not args.peft.merge_lora:
            return None, None
        with reported_after_training("merging the LoRA adapters", model_dir):
            model = model.merge_and_unload()
    profile = None
    if args.output.profile_sequences > 0:
        with reported_after_training("the over-smoothing profile", model_dir):
            profile = oversmoothing_profile(
                model,
                data.profile_inputs if data.profile_inputs is not None else data.evaluation,
                batch_size=args.training.per_device_eval_batch_size,
                max_sequences=args.output.profile_sequences,
                progress=False,
            )
    with reported_after_training("the Hub export", model_dir):
        fields = card_fields(args, data, source, metrics)
        if baseline is not None:
            fields.update(
                baseline_metrics=quality_metrics(args.task, baseline.metrics), baseline_profile=baseline.profile
            )
        export_for_hub(model, output_dir, processor, overwrite=True, source=source, profile=profile, **fields)
    return output_dir, profile


@contextmanager
def reported_after_training(step: str, model_dir: Path) -> Iterator[None]:
    """Reports a failure of `step` in one line (exit code 1: the input was fine): the trained model is on disk by
    then, and the line says where."""
    try:
        yield
    except Exception as error:
        detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no message'}"
        raise SystemExit(
            f"error: {step} failed after training ({detail}); the trained model is saved in {model_dir}"
        ) from error


def quality_metrics(task: Task, metrics: dict[str, float]) -> dict[str, float]:
    """The evaluation's quality metrics (the task's `metric_names`) without the `eval_` prefix, for the card."""
    return {name: metrics[f"eval_{name}"] for name in task.metric_names if f"eval_{name}" in metrics}


def metric_title(name: str) -> str:
    """How the printed results name a metric."""
    return METRIC_TITLES.get(name, name)


@dataclass
class RunResult:
    """What one fine-tuning run gives back: the evaluation metrics, the card's profile and the model's strengths."""

    metrics: dict[str, float]
    profile: Profile | None = None
    strengths: dict[str, dict[str, list[float]]] | None = None


def is_corrected(args: FinetuneArguments) -> bool:
    return args.correction.correction != [NO_CORRECTION] or args.correction.fusion != NO_FUSION


def baseline_arguments(args: FinetuneArguments) -> FinetuneArguments:
    """The stock twin of a corrected run: the same model, data, seed and hyper-parameters, no correction and no
    fusion, in output_dir/BASELINE_DIR, resumed from its newest complete checkpoint if it has one."""
    output_dir = Path(args.training.output_dir) / BASELINE_DIR
    training = copy.copy(args.training)
    training.output_dir = str(output_dir)
    training.push_to_hub = False
    training.resume_from_checkpoint = "last" if latest_complete_checkpoint(output_dir) is not None else None
    correction = copy.copy(args.correction)
    correction.correction, correction.fusion = [NO_CORRECTION], NO_FUSION
    correction.correction_strength = FIXED_STRENGTH
    output = dataclasses.replace(args.output, baseline=False, model_name=f"{Path(args.training.output_dir).name} stock")
    return dataclasses.replace(args, correction=correction, output=output, training=training)


def finished_baseline(args: FinetuneArguments) -> RunResult | None:
    """An earlier run's stock baseline with exactly these arguments, finished (evaluated and exported), or None."""
    output_dir = Path(args.training.output_dir)
    record, results = output_dir / RUN_RECORD, output_dir / "eval_results.json"
    if not (record.is_file() and results.is_file() and (output_dir / EXPORT_MANIFEST).is_file()):
        return None
    try:
        if json.loads(record.read_text()) != run_record(args):
            return None
        metrics = json.loads(results.read_text())
        profile_path = output_dir / "oversmoothing_profile.json"
        profile = Profile.load_json(profile_path) if profile_path.is_file() else None
    except (OSError, ValueError):
        return None
    return RunResult(metrics=metrics, profile=profile)


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict[str, float]:
    """Fine-tunes as configured by `argv` (default `sys.argv[1:]`) and returns the evaluation metrics.

    A corrected model is compared with the stock model trained the same way (unless --no_baseline): that run comes
    first, into output_dir/BASELINE_DIR, and is reused when a finished one with the same arguments is there.
    `callbacks` are extra `TrainerCallback`s (the tests use one to interrupt a run). Bad input raises a
    `UsageError` (exit code 2) after writing its one line to stderr.
    """
    try:
        return _main(argv, callbacks)
    except UsageError as error:
        print(f"finetune.py: {error}", file=sys.stderr)
        raise


def _main(argv: list[str] | None, callbacks: list[TrainerCallback] | None) -> dict[str, float]:
    args = parse_arguments(argv)
    check_output_dir(args)
    resolve_base_config(args)  # the corrected configuration is checked before the stock baseline trains
    baseline = None
    if args.output.baseline and is_corrected(args):
        stock_args = baseline_arguments(args)
        check_output_dir(stock_args)
        baseline = finished_baseline(stock_args) or finetune(stock_args, callbacks)
    result = finetune(args, callbacks, baseline)
    if args.training.process_index == 0:
        report(args, result, baseline)
    return result.metrics


def report(args: FinetuneArguments, result: RunResult, baseline: RunResult | None) -> None:
    """Prints the evaluation beside the stock baseline's, and the learned strengths."""
    if baseline is not None:
        correction = "+".join(args.correction.correction)
        if args.correction.fusion != NO_FUSION:
            correction += f" with {args.correction.fusion} fusion"
        if args.correction.correction_strength == LEARNED_STRENGTH:
            correction += " (learned strengths)"
        rows = [("stock, same setup", baseline.metrics), (correction, result.metrics)]
        width = max(len(name) for name, _ in rows)
        names = args.task.metric_names
        titles = [metric_title(metric) for metric in names]
        widths = [max(len(title), 8) for title in titles]
        print(f"{'model':<{width}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True)))
        for name, metrics in rows:
            values = [metrics[f"eval_{metric}"] for metric in names]
            print(f"{name:<{width}}  " + "  ".join(f"{v:>{w}.4f}" for v, w in zip(values, widths, strict=True)))
    if result.strengths:
        print("learned correction strengths, mean over the heads of each layer:")
        for line in summarise_strengths(result.strengths):
            print(f"  {line}")


def finetune(
    args: FinetuneArguments, callbacks: list[TrainerCallback] | None = None, baseline: RunResult | None = None
) -> RunResult | None:
    """One run: data, model, Trainer, the trained model saved, evaluation, export (beside `baseline` in the card),
    push. Returns its result (only the metrics on processes other than the main one)."""
    training_args = args.training
    task = args.task
    config, source = resolve_base_config(args)
    processor = load_processor(args, config, source)
    data = task.load_data(args, config, processor)
    task.configure(config, data)
    try:  # what the task set is checked now, not by the model's constructor or the save after training
        config.validate()
    except CONFIG_ERRORS as error:  # the validator's own message, not the strict dataclass's wrapper of it
        fail(f"the {task.name} task set a configuration that is not valid: {one_line(error.__cause__ or error)}")

    set_seed(training_args.seed)  # the new head's initialisation
    model = build_model(config, source, task)
    if args.peft.use_lora:
        model = apply_lora(model, args.peft, task)

    resume = resume_target(training_args)
    # A resumed run continues the run that wrote its checkpoint: their checkpoints are one run's, removed together.
    run_id = (checkpoint_run(Path(resume)) if resume is not None else None) or uuid.uuid4().hex
    # The export is pushed at the end, by hf_centered.push_to_hub, and RunFolder applies save_total_limit.
    trainer_args = copy.copy(training_args)
    trainer_args.push_to_hub, trainer_args.save_total_limit = False, None
    trainer_args.remove_unused_columns = training_args.remove_unused_columns and task.remove_unused_columns
    run_folder = RunFolder(run_record(args), run_id, training_args.save_total_limit)
    trainer = Trainer(
        model=model,
        args=trainer_args,
        train_dataset=data.train,
        eval_dataset=data.evaluation,
        data_collator=task.data_collator(args, processor),
        processing_class=processor,
        compute_metrics=task.compute_metrics(data),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        callbacks=[run_folder, *(callbacks or [])],
    )
    trainer.train(resume_from_checkpoint=resume)

    trained_model = gather_trained_model(trainer, args, config, source)
    model_dir = trained_model_dir(args)
    if trainer.is_world_process_zero():
        save_trained_model(trained_model, args, processor, data, source)
    with reported_after_training("the evaluation", model_dir):
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
        trainer.save_state()
    if not trainer.is_world_process_zero():
        return RunResult(metrics=metrics)
    exported, profile = complete_export(trained_model, args, processor, data, source, metrics, baseline)
    if not args.output.keep_checkpoints:
        remove_run_checkpoints(Path(training_args.output_dir), run_id)
    scores = ", ".join(f"{metric_title(name)} {value:.4f}" for name, value in quality_metrics(task, metrics).items())
    print(f"eval {scores} ({data.examples[1]} examples); saved to {exported or model_dir}")
    if training_args.push_to_hub:
        repo_id = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
        with reported_after_training("the upload to the Hub", model_dir):
            push_to_hub(exported, repo_id, token=training_args.hub_token, private=training_args.hub_private_repo)
        print(f"pushed {exported} to {repo_id}")
    strengths = trained_model.correction_strengths() if has_learned_strengths(trained_model) else None
    return RunResult(metrics=metrics, profile=profile, strengths=strengths)
