"""``hf-centered diagnose``: over-smoothing profiles of one or several models on the same inputs.

    hf-centered diagnose MODEL [MODEL ...] (--text-file F | --dataset NAME) --out DIR

Each MODEL (local folder or hub id) is loaded with ``AutoModel`` and fed inputs built with its own tokenizer (text) or
image processor (images). ``DIR/profile.json`` holds every profile keyed by label, ``DIR/profile.png`` draws them on one
figure, and a layer × model table per metric is printed. Models with learned correction strengths
(``correction_strength="learned"``) also get their strength map: ``DIR/strengths.json`` keyed by label,
``DIR/strengths-<k>.png`` for the k-th model given, and a table. Also runnable as ``python -m hf_centered.diagnose_cli
diagnose ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel
from transformers.utils import logging

from hf_centered.cli import (
    USAGE_ERROR_CODE,
    CommandLineError,
    check_output_folder,
    load_checkpoint_config,
    load_tokenizer,
    one_line,
)
from hf_centered.data import DIGITS_MAX_VALUE, bbc_news, digits, rotten_tomatoes
from hf_centered.diagnostics import METRIC_TITLES, Profile, oversmoothing_profile, plot_profiles
from hf_centered.strength_maps import has_learned_strengths, plot_strength_map, save_strengths, strength_table

TEXT_DATASETS = ("rotten_tomatoes", "bbc_news")  # the built-in text datasets of finetune.py
IMAGE_DATASETS = ("digits",)
# Metrics shown in the printed table; profile.json has all of them.
TABLE_METRICS = ("cosine_similarity", "effective_rank", "effective_rank_centered", "rank_collapse_residual")
# ViT's default image processor normalisation, used when a model folder has no processor of its own.
FALLBACK_IMAGE_MEAN = 0.5
FALLBACK_IMAGE_STD = 0.5
DEFAULT_MAX_LENGTH = 128


class DiagnoseInputError(CommandLineError):
    """Bad command-line input, reported as one line and exit code 2."""


def add_diagnose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``diagnose`` subcommand on an ``argparse`` subparsers object (``func`` = :func:`run_diagnose`)."""
    parser = subparsers.add_parser(
        "diagnose",
        help="over-smoothing profile (cosine similarity, effective rank, rank-collapse residual per layer)",
        description=__doc__.split("\n\n", 1)[0],
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model folders or hub ids")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-file", type=Path, help="text file, one input text per line")
    source.add_argument(
        "--dataset",
        help=f"built-in offline dataset: {', '.join(TEXT_DATASETS)} (text) or {', '.join(IMAGE_DATASETS)} (images)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for profile.json and profile.png")
    parser.add_argument("--max-sequences", type=int, default=256, help="number of inputs (default: 256)")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs per forward pass (default: 16)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--max-length",
        type=int,
        help=f"truncate texts to this many tokens, at most the model's positions (default: {DEFAULT_MAX_LENGTH}, or "
        "the model's positions if fewer)",
    )
    parser.add_argument(
        "--exclude-special-tokens",
        action="store_true",
        help="leave out special tokens ([CLS], [SEP], ...) of texts and the [CLS] position of images",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code")
    parser.add_argument("--labels", nargs="+", help="one label per model for the legend and JSON (default: names)")
    parser.set_defaults(func=run_diagnose)
    return parser


def run_diagnose(args: argparse.Namespace) -> int:
    """Run the ``diagnose`` subcommand; 0 on success, 2 (with a one-line message on stderr) on bad input."""
    try:
        _run(args)
    except CommandLineError as error:
        print(f"hf-centered diagnose: error: {error}", file=sys.stderr)
        return USAGE_ERROR_CODE
    return 0


def _run(args: argparse.Namespace) -> None:
    for option in ("max_sequences", "batch_size", "max_length"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise DiagnoseInputError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    labels = _labels(args.models, args.labels)
    check_output_folder(args.out, "--out")
    texts, images, source_name = _load_inputs(args)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise DiagnoseInputError(f"--device {args.device!r} is not a torch device: {one_line(error)}") from error

    # Every model's configuration and inputs are checked before the first weights load and the first profile runs.
    text_batches = {}
    for name_or_path in args.models:
        config = load_checkpoint_config(name_or_path, args.trust_remote_code)
        _check_modality(name_or_path, config, texts is not None)
        if texts is not None:
            text_batches[name_or_path] = _text_batches(name_or_path, config, texts, args)
    profiles: dict[str, Profile] = {}
    strength_maps: dict[str, tuple[int, dict]] = {}
    for position, (name_or_path, label) in enumerate(zip(args.models, labels, strict=True), start=1):
        model = _load(AutoModel, name_or_path, args.trust_remote_code).to(device)
        if has_learned_strengths(model):
            strength_maps[label] = position, model.correction_strengths()
        if texts is not None:
            batches = text_batches[name_or_path]
        else:
            batches = _image_batches(model.config, name_or_path, images, args.batch_size, args.trust_remote_code)
        profile = oversmoothing_profile(
            model,
            batches,
            exclude_special_tokens=args.exclude_special_tokens and texts is not None,
            exclude_cls=args.exclude_special_tokens and texts is None,
        )
        profile.model_name = name_or_path
        profile.dataset = source_name
        profiles[label] = profile
        del model

    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "profile.json", args.out / "profile.png"
    json_path.write_text(json.dumps({label: p.to_dict() for label, p in profiles.items()}, indent=2) + "\n")
    plot_profiles(profiles, png_path, title=f"over-smoothing on {source_name}")
    print(format_table(profiles))
    print(f"wrote {json_path} and {png_path}")
    if strength_maps:
        save_strengths(
            {label: strengths for label, (_, strengths) in strength_maps.items()}, args.out / "strengths.json"
        )
        for label, (position, strengths) in strength_maps.items():
            image = plot_strength_map(
                strengths, args.out / f"strengths-{position}.png", title=f"learned strengths of {label}"
            )
            print(f"\nlearned correction strengths of {label}:\n{strength_table(strengths)}\nwrote {image}")
        print(f"wrote {args.out / 'strengths.json'}")


def _labels(models: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(models):
            raise DiagnoseInputError(f"--labels got {len(labels)} labels for {len(models)} models")
        if len(set(labels)) != len(labels):
            raise DiagnoseInputError(f"--labels must be distinct, got {list(labels)}")
        return list(labels)
    names = [_default_label(model) for model in models]
    # The same model twice (or two folders with the same parent/name) keeps its full path.
    return [name if names.count(name) == 1 else model for name, model in zip(names, models, strict=True)]


def _default_label(name_or_path: str) -> str:
    """A hub id as given; for a local folder its last two path parts, like a hub id ("runs/centered")."""
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    return "/".join(path.resolve().parts[-2:])


def _load_inputs(args: argparse.Namespace) -> tuple[list[str] | None, np.ndarray | None, str]:
    """(texts, None, name) or (None, images [N, H, W] in [0, 1], name), at most --max-sequences of them."""
    if args.text_file is not None:
        if not args.text_file.is_file():
            raise DiagnoseInputError(f"--text-file {args.text_file} does not exist or is not a file")
        try:
            content = args.text_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DiagnoseInputError(
                f"--text-file {args.text_file} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                f"{error.start}); save it as UTF-8"
            ) from error
        except OSError as error:
            raise DiagnoseInputError(f"cannot read --text-file {args.text_file}: {error.strerror}") from error
        texts = [line.strip() for line in content.splitlines() if line.strip()]
        if not texts:
            raise DiagnoseInputError(f"--text-file {args.text_file} has no non-empty line")
        return texts[: args.max_sequences], None, args.text_file.name
    if args.dataset in TEXT_DATASETS:
        texts = (rotten_tomatoes if args.dataset == "rotten_tomatoes" else bbc_news)()[0]
        return _spread(texts, args.max_sequences), None, args.dataset
    if args.dataset == "digits":
        images, _ = digits()
        return None, np.stack(_spread(list(images / DIGITS_MAX_VALUE), args.max_sequences)), args.dataset
    known = ", ".join(TEXT_DATASETS + IMAGE_DATASETS)
    raise DiagnoseInputError(f"unknown dataset {args.dataset!r}; built-in datasets: {known} (or use --text-file)")


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items evenly spaced over the list, so that a small sample is not all from its first rows."""
    if count >= len(items):
        return items
    return [items[index * len(items) // count] for index in range(count)]


def _load(auto_class: Any, name_or_path: str, trust_remote_code: bool) -> Any:
    """``auto_class.from_pretrained``, with load failures turned into one-line input errors."""
    # Loading a task checkpoint into AutoModel lists every unused head weight; that is expected here.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        # An explicit False (not None) makes custom code fail at once instead of prompting on a terminal.
        return auto_class.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise DiagnoseInputError(
                f"model {name_or_path!r} contains custom code; rerun with --trust-remote-code to allow it"
            ) from error
        raise DiagnoseInputError(f"cannot load model {name_or_path!r}: {one_line(error)}") from error
    finally:
        logging.set_verbosity(verbosity)


def _is_image_model(config: Any) -> bool:
    return hasattr(config, "image_size") and hasattr(config, "num_channels")


def _check_modality(name_or_path: str, config: Any, inputs_are_text: bool) -> None:
    if inputs_are_text and _is_image_model(config):
        raise DiagnoseInputError(
            f"model {name_or_path!r} ({config.model_type}) takes images but the inputs are texts; "
            f"use --dataset {IMAGE_DATASETS[0]}"
        )
    if not inputs_are_text and not _is_image_model(config):
        raise DiagnoseInputError(
            f"model {name_or_path!r} ({config.model_type}) takes text but the inputs are images; "
            f"use --dataset {TEXT_DATASETS[0]} or --text-file"
        )


def _text_batches(name_or_path: str, config: Any, texts: list[str], args: argparse.Namespace) -> list[Any]:
    """The texts tokenised with the model's own tokenizer, checked: the length fits the model's positions, and some
    input has the two tokens a similarity needs."""
    tokenizer = load_tokenizer(name_or_path, args.trust_remote_code)
    if tokenizer.pad_token is None:
        # GPT-2-style tokenizers have no pad token; any id works because the attention mask hides it.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    limits = {
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "the tokenizer's model_max_length": tokenizer.model_max_length,
    }
    limits = {name: limit for name, limit in limits.items() if isinstance(limit, int) and limit > 0}
    max_length = args.max_length or min(DEFAULT_MAX_LENGTH, *limits.values())
    if limits and max_length > min(limits.values()):
        name, longest = min(limits.items(), key=lambda item: item[1])
        raise DiagnoseInputError(
            f"--max-length {max_length} is more than model {name_or_path!r} takes: allowed are 1 to {longest} ({name})"
        )
    batches = [
        tokenizer(
            texts[start : start + args.batch_size],
            padding=True,
            padding_side="right",  # a decoder's tokenizer may pad on the left, which shifts absolute positions
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=args.exclude_special_tokens,
        )
        for start in range(0, len(texts), args.batch_size)
    ]
    measured = [
        batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
        if args.exclude_special_tokens
        else batch["attention_mask"].bool()
        for batch in batches
    ]
    if not any((mask.sum(dim=1) >= 2).any() for mask in measured):
        hint = "leave out --exclude-special-tokens or give" if args.exclude_special_tokens else "give"
        raise DiagnoseInputError(
            f"no input has two tokens to compare once tokenised for {name_or_path!r}"
            f"{' without its special tokens' if args.exclude_special_tokens else ''}; {hint} longer texts"
        )
    return batches


def _image_batches(
    config: Any, name_or_path: str, images: np.ndarray, batch_size: int, trust_remote_code: bool
) -> list[dict[str, torch.Tensor]]:
    channels = int(config.num_channels)
    pixel_values = _pixel_values_from_processor(name_or_path, images, channels, trust_remote_code)
    if pixel_values is None:
        size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
        resized = torch.nn.functional.interpolate(
            torch.as_tensor(images, dtype=torch.float32).unsqueeze(1), size=size, mode="bilinear", align_corners=False
        )
        pixel_values = (resized.repeat(1, channels, 1, 1) - FALLBACK_IMAGE_MEAN) / FALLBACK_IMAGE_STD
    return [
        {"pixel_values": pixel_values[start : start + batch_size]} for start in range(0, len(pixel_values), batch_size)
    ]


def _pixel_values_from_processor(
    name_or_path: str, images: np.ndarray, channels: int, trust_remote_code: bool
) -> torch.Tensor | None:
    """Pixel values from the model's saved image processor, or None when it has none."""
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    # Processors expect 8-bit images with the channels last.
    as_uint8 = np.round(images * 255).clip(0, 255).astype(np.uint8)
    channels_last = np.repeat(as_uint8[..., None], channels, axis=-1)
    return processor(images=list(channels_last), return_tensors="pt")["pixel_values"]


def format_table(profiles: dict[str, Profile], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """Plain-text tables, one per metric: a row per layer, a column per model (blank past a model's last layer)."""
    labels = list(profiles)
    width = max(9, *(len(label) for label in labels))
    num_rows = max(profile.num_layers for profile in profiles.values()) + 1
    blocks = []
    for metric in metrics:
        lines = [METRIC_TITLES.get(metric, metric), "layer  " + "  ".join(f"{label:>{width}}" for label in labels)]
        for layer in range(num_rows):
            cells = [
                f"{p.metrics[metric][layer]:>{width}.4f}" if layer <= p.num_layers else " " * width
                for p in profiles.values()
            ]
            lines.append(f"{layer:>5}  " + "  ".join(cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hf_centered.diagnose_cli diagnose ...``."""
    parser = argparse.ArgumentParser(prog="python -m hf_centered.diagnose_cli")
    add_diagnose_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
