"""The `hf-centered` command line: `export` (checkpoint → Hub-ready folder), `diagnose` and `demo`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .configuration_centered import CorrectionConfigMixin, field_help
from .correction_base import STRENGTH_MODES
from .corrections import available_corrections
from .fusion import available_fusions

TASKS = {
    "base": ("CenteredBertModel", "CenteredViTModel"),
    "sequence-classification": ("CenteredBertForSequenceClassification", None),
    "token-classification": ("CenteredBertForTokenClassification", None),
    "masked-lm": ("CenteredBertForMaskedLM", None),
    "question-answering": ("CenteredBertForQuestionAnswering", None),
    "multiple-choice": ("CenteredBertForMultipleChoice", None),
    "next-sentence-prediction": ("CenteredBertForNextSentencePrediction", None),
    "pretraining": ("CenteredBertForPreTraining", None),
    "image-classification": (None, "CenteredViTForImageClassification"),
    "masked-image-modeling": (None, "CenteredViTForMaskedImageModeling"),
    "semantic-segmentation": (None, "CenteredViTForSemanticSegmentation"),
}
HEAD_SUFFIXES = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForMaskedLM": "masked-lm",
    "ForQuestionAnswering": "question-answering",
    "ForMultipleChoice": "multiple-choice",
    "ForNextSentencePrediction": "next-sentence-prediction",
    "ForPreTraining": "pretraining",
    "ForImageClassification": "image-classification",
    "ForMaskedImageModeling": "masked-image-modeling",
    "ForSemanticSegmentation": "semantic-segmentation",
}
FAMILIES = {"bert": 0, "centered_bert": 0, "vit": 1, "centered_vit": 1}
# Command-line type of a correction field by its annotation; the others ("float | int") are numbers.
CORRECTION_FIELD_TYPES: dict[str, type] = {"int": int, "str": str}
USAGE_ERROR_CODE = 2  # argparse's exit code for bad usage, used for every bad input

logger = logging.get_logger(__name__)


class CommandLineError(ValueError):
    """Bad command-line input: `main` reports it as one line `hf-centered <command>: error: ...`, exit code 2."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (some span several: transformers' field validation, the Hub's errors)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def load_checkpoint_config(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """`AutoConfig` of a local model folder or a Hub id; every way the path can fail to be a model (missing, a file, a
    folder without config.json, a config.json that is not JSON) is a `CommandLineError` naming it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    from transformers import AutoConfig

    path = Path(name_or_path)
    config_file = path / "config.json"
    if path.is_file():
        raise CommandLineError(f"{name_or_path} is a file; give a model folder (holding config.json) or a Hub model id")
    if path.is_dir():
        if not config_file.is_file():
            raise CommandLineError(
                f"{name_or_path} holds no config.json, so it is no saved model; give a folder written by "
                "save_pretrained or a Hub model id"
            )
        try:
            json.loads(config_file.read_text(encoding="utf-8"))
        except OSError as error:
            raise CommandLineError(f"cannot read {config_file}: {error.strerror}") from error
        except ValueError as error:  # not UTF-8, or not JSON
            raise CommandLineError(f"{config_file} is not a JSON configuration ({one_line(error)})") from error
    else:
        try:
            validate_repo_id(name_or_path)
        except HFValidationError as error:
            raise CommandLineError(f"{name_or_path} does not exist (and is no Hub model id)") from error
    # A checkpoint's odd values are reported when its model loads; here they would only crowd an error line.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise CommandLineError(
                f"model {name_or_path!r} contains custom code; rerun with --trust-remote-code to allow it"
            ) from error
        if path.is_dir():
            raise CommandLineError(f"{config_file} is not a usable configuration: {one_line(error)}") from error
        raise CommandLineError(
            f"{name_or_path} is neither a local folder nor a Hub model that can be loaded ({one_line(error)})"
        ) from error
    finally:
        logging.set_verbosity(verbosity)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with a model, or a `CommandLineError` when it has none: transformers builds one from the
    configuration alone, whose vocabulary is only its special tokens, and every word would become unknown."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CommandLineError(f"no usable tokenizer saved with {name_or_path}: {one_line(error)}") from error
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise CommandLineError(
            f"{name_or_path} has no tokenizer saved with it (its vocabulary would be only the special tokens); save "
            "the model's tokenizer there with tokenizer.save_pretrained"
        )
    return tokenizer


def check_output_folder(folder: Path, option: str, allow_files: bool = True) -> None:
    """That `folder` can be created or written to (and is empty unless `allow_files`), before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise CommandLineError(f"{option} {folder} is a file; give a folder (it is created if missing)")
    if folder.is_dir() and not allow_files and any(folder.iterdir()):
        raise CommandLineError(f"{option} {folder} is not empty; choose another folder or pass --overwrite")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CommandLineError(f"{option} {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandLineError(f"{option} {folder} cannot be written: {existing} is read-only")


def add_correction_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per correction field of the configuration (`--correction`, `--centered-scale`, ...)."""
    for field in dataclasses.fields(CorrectionConfigMixin):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "correction":
            parser.add_argument(flag, nargs="+", choices=available_corrections(), help="corrections to combine")
        elif field.name == "correction_layers":
            parser.add_argument(flag, nargs="+", type=int, help="0-based layers the corrections act in (default all)")
        elif field.name == "fusion":
            parser.add_argument(flag, choices=available_fusions(), help="fusion of the layer outputs (default none)")
        else:
            help_text = f"{field_help(field.name)} (default: the checkpoint's, else {field.default})"
            if field.name == "correction_strength":
                parser.add_argument(flag, choices=STRENGTH_MODES, help=help_text)
            else:
                parser.add_argument(flag, type=CORRECTION_FIELD_TYPES.get(field.type, float), help=help_text)


def correction_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    for field in dataclasses.fields(CorrectionConfigMixin):
        value = getattr(args, field.name, None)
        if value is not None:
            overrides[field.name] = value[0] if field.name == "correction" and len(value) == 1 else value
    return overrides


def infer_task(config) -> str:
    for architecture in config.architectures or []:
        for suffix, task in HEAD_SUFFIXES.items():
            if architecture.endswith(suffix):
                return task
    return "base"


def run_export(args: argparse.Namespace) -> int:
    """The `export` command: every input is checked before the weights are loaded."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoImageProcessor

    import hf_centered

    source = args.checkpoint
    check_output_folder(Path(args.out), "OUT", allow_files=args.overwrite)
    config = load_checkpoint_config(source, args.trust_remote_code)
    if config.model_type not in FAMILIES:
        raise CommandLineError(
            f"{source} is a {config.model_type!r} checkpoint; export takes BERT and ViT checkpoints "
            f"(model_type {', '.join(FAMILIES)})"
        )
    task = args.task or infer_task(config)
    class_name = TASKS[task][FAMILIES[config.model_type]]
    if class_name is None:
        allowed = sorted(name for name, classes in TASKS.items() if classes[FAMILIES[config.model_type]])
        raise CommandLineError(
            f"task {task!r} does not exist for a {config.model_type!r} checkpoint; allowed are {', '.join(allowed)}"
        )
    overrides = correction_overrides(args)
    if args.num_labels is not None:
        if args.num_labels < 1:
            raise CommandLineError(f"--num-labels {args.num_labels} is not valid: allowed are integers >= 1")
        overrides["num_labels"] = args.num_labels
    model_class = getattr(hf_centered, class_name)
    try:
        model_class.config_class.from_pretrained(source, **overrides)
    except (ValueError, TypeError, StrictDataclassError) as error:  # the configuration's validation
        raise CommandLineError(one_line(error)) from error
    if FAMILIES[config.model_type] == 0:
        processor = load_tokenizer(source, args.trust_remote_code)
    else:
        try:
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError, KeyError):
            logger.warning(f"{source} has no image processor; the export has none either")
            processor = None
    model = model_class.from_pretrained(source, **overrides)
    out_dir = hf_centered.export_for_hub(
        model,
        args.out,
        processor,
        overwrite=args.overwrite,
        model_name=args.model_name,
        model_id=args.model_id,
        base_model=args.base_model or (None if Path(source).exists() else source),
    )
    print(
        f"Wrote {class_name} ({', '.join(model.config.corrections) or 'no correction'}, fusion "
        f"{model.config.fusion}) to {out_dir}"
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo

    demo(num_sentences=args.num_sentences)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-centered", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)

    export = subparsers.add_parser("export", help="convert a BERT/ViT checkpoint into a Hub-ready folder")
    export.add_argument("checkpoint", help="local folder or Hub id of a BERT/ViT (or hf_centered) checkpoint")
    export.add_argument("out", help="destination folder (must be empty unless --overwrite)")
    export.add_argument("--task", choices=sorted(TASKS), help="head to export (default: the checkpoint's own)")
    export.add_argument("--num-labels", type=int, help="classes of a new classification head")
    export.add_argument("--model-name", help="title of the model card (default: the folder name)")
    export.add_argument("--model-id", help="Hub repository id shown in the model card")
    export.add_argument("--base-model", help="Hub id of the base model for the model card")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT: an earlier export's files there are replaced or removed, other files stay",
    )
    export.add_argument(
        "--trust-remote-code", action="store_true", help="allow a checkpoint whose configuration needs custom code"
    )
    add_correction_arguments(export)
    export.set_defaults(handler=run_export)

    from .diagnose_cli import add_diagnose_parser, run_diagnose

    add_diagnose_parser(subparsers).set_defaults(handler=run_diagnose)

    demo = subparsers.add_parser("demo", help="compare every correction on the packaged pretrained MiniLM")
    demo.add_argument("--num-sentences", type=int, default=64)
    demo.set_defaults(handler=run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command; returns its exit code: 0, or 2 after one line on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandLineError as error:
        print(f"hf-centered {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR_CODE


if __name__ == "__main__":
    sys.exit(main())
