"""The `hf-centered` command line: `export` (checkpoint → Hub-ready folder), `diagnose` and `demo`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .configuration_centered import CorrectionConfigMixin, field_help
from .correction_base import STRENGTH_MODES
from .corrections import available_corrections
from .fusion import available_fusions

TASKS = {
    "base": ("CenteredBertModel", "CenteredViTModel"),
    "sequence-classification": ("CenteredBertForSequenceClassification", None),
    "token-classification": ("CenteredBertForTokenClassification", None),
    "masked-lm": ("CenteredBertForMaskedLM", None),
    "image-classification": (None, "CenteredViTForImageClassification"),
}
HEAD_SUFFIXES = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForMaskedLM": "masked-lm",
    "ForPreTraining": "masked-lm",
    "ForImageClassification": "image-classification",
}
FAMILIES = {"bert": 0, "centered_bert": 0, "vit": 1, "centered_vit": 1}
# Command-line type of a correction field by its annotation; the others ("float | int") are numbers.
CORRECTION_FIELD_TYPES: dict[str, type] = {"int": int, "str": str}


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
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    import hf_centered

    source = args.checkpoint
    config = AutoConfig.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    if config.model_type not in FAMILIES:
        raise SystemExit(
            f"error: {source} is a {config.model_type!r} checkpoint; allowed are BERT and ViT checkpoints."
        )
    task = args.task or infer_task(config)
    class_name = TASKS[task][FAMILIES[config.model_type]]
    if class_name is None:
        raise SystemExit(f"error: task {task!r} does not exist for a {config.model_type!r} checkpoint.")
    overrides = correction_overrides(args)
    if args.num_labels is not None:
        overrides["num_labels"] = args.num_labels
    model = getattr(hf_centered, class_name).from_pretrained(source, **overrides)
    processor = None
    for loader in (AutoTokenizer, AutoImageProcessor):
        try:
            processor = loader.from_pretrained(source)
            break
        except (OSError, ValueError, KeyError):
            continue
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
    from .demo import compare_corrections

    compare_corrections(num_sentences=args.num_sentences)
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
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
