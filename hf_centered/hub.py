"""Hub-ready folders: safetensors weights, the modelling code with a complete `auto_map`, processor and model card."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, snapshot_download
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

from .auto import auto_class_name, full_auto_map, is_hf_centered_model
from .corrections import CORRECTIONS
from .diagnostics import oversmoothing_profile, plot_profiles
from .fusion import FUSIONS
from .pipeline_question_answering import add_to_folder as add_question_answering_pipeline
from .strength_maps import has_learned_strengths, plot_strength_map, save_strengths, strength_table

CARD_FIELDS = {
    "model_name": "title of the card (default: the folder name)",
    "model_id": "Hub repository id shown in the loading snippet (default: the folder name)",
    "model_description": "a paragraph under the title",
    "base_model": "checkpoint the model was converted from (default: config._name_or_path)",
    "license": "SPDX licence id (default: apache-2.0)",
    "language": "language code(s)",
    "dataset": "name of the evaluation/training dataset",
    "metrics": "dict of evaluation metrics, name -> value",
    "training_hyperparameters": "dict of training hyper-parameters, name -> value",
    "tags": "extra tags",
    "profile": "a diagnostics.Profile of the model (its plot and table go into the card)",
    "profile_inputs": "batches to compute that profile from (what oversmoothing_profile takes), if no profile given",
    "baseline_profile": "a diagnostics.Profile of the stock model trained the same way, drawn beside the model's own",
    "baseline_metrics": "dict of the stock model's evaluation metrics under the same setup, name -> value",
}
PROFILE_IMAGE = "oversmoothing_profile.png"
STRENGTHS_IMAGE = "correction_strengths.png"
STRENGTHS_JSON = "correction_strengths.json"
# Lists the files an export wrote: what push_to_hub uploads and what the next export with overwrite=True replaces.
EXPORT_MANIFEST = "hf_centered_export.json"
# What an export written before the manifest existed can hold, besides the modelling code its auto_map names.
UNRECORDED_EXPORT_PATTERNS = (
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "README.md",
    "oversmoothing_profile.json",
    PROFILE_IMAGE,
    STRENGTHS_JSON,
    STRENGTHS_IMAGE,
)
# What a sentence-transformers model holds besides the transformer's own files: its list of modules, the transformer
# module's settings and the library's metadata at the top; every other module (pooling, dense layers, normalisation)
# in the sub-folder `modules.json` names.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# Configuration fields a model must share with a sentence-transformers folder to take over its modules.
SAME_BASE_MODEL_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
)
PIPELINE_TAGS = {
    "AutoModel": "feature-extraction",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForMultipleChoice": "multiple-choice",
    # The Hub has no tag of their own: next-sentence prediction classifies a sentence pair; a pre-training checkpoint
    # is used through its masked-LM head (as stock BERT checkpoints are), a masked-image-modelling one as a backbone.
    "AutoModelForNextSentencePrediction": "text-classification",
    "AutoModelForPreTraining": "fill-mask",
    "AutoModelForImageClassification": "image-classification",
    "AutoModelForMaskedImageModeling": "image-feature-extraction",
    "AutoModelForSemanticSegmentation": "image-segmentation",
}


def card_template_path() -> Path:
    """`model_cards/template.md`: inside the installed wheel, or at the top of a source checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "model_cards" / "template.md", package_dir.parent / "model_cards" / "template.md"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"The model card template model_cards/template.md was not found next to {package_dir}.")


logger = logging.get_logger(__name__)


def export_for_hub(
    model,
    out_dir,
    processor=None,
    *,
    overwrite: bool = False,
    source: str | os.PathLike | None = None,
    **card_fields: Any,
) -> Path:
    """Writes a folder that `AutoModel*.from_pretrained(out_dir, trust_remote_code=True)` loads without hf_centered.

    Args:
        model: a `CenteredBert*` or `CenteredViT*` model.
        out_dir: destination folder; it must be empty or absent unless `overwrite=True`.
        processor: optional tokenizer / image processor / processor, saved alongside.
        overwrite: allow writing into a non-empty folder: the files of an earlier export there (those its
            `EXPORT_MANIFEST` lists) are replaced or removed, any other file is left alone unless the export writes
            one of the same name.
        source: the checkpoint (folder or Hub id) the model was loaded from, `model.config._name_or_path` by default.
            When it is a sentence-transformers model (all-MiniLM-L6-v2, ...), its modules (`modules.json`, pooling,
            dense layers, normalisation) are kept, so that `SentenceTransformer(out_dir, trust_remote_code=True)`
            runs this model with them. They are kept only for a model of the source's architecture and with a
            tokenizer as `processor`: a `source` given explicitly for another architecture raises a `ValueError`,
            the default one is then skipped with a warning.
        **card_fields: model card fields, see `CARD_FIELDS`.

    Returns:
        The folder, holding `config.json` (with a complete `auto_map`), `model.safetensors`, the modelling `.py`
        files, the processor's files, `README.md` and `EXPORT_MANIFEST`, the list of these files; with learned
        correction strengths also their map (`STRENGTHS_JSON`, `STRENGTHS_IMAGE`, a table in the card); from a
        sentence-transformers source also its modules' files.
    """
    model_type = getattr(model.config, "model_type", None)
    if not is_hf_centered_model(model):
        raise ValueError(
            f"export_for_hub expects an hf_centered model, got {type(model).__name__} with model_type={model_type!r}; "
            "correct it first (hf_centered.correct(model, ...), or a CenteredBert*/CenteredViT* class, e.g. "
            "CenteredBertForSequenceClassification.from_pretrained(path))."
        )
    unknown = sorted(set(card_fields) - set(CARD_FIELDS))
    if unknown:
        raise ValueError(f"Unknown model card field(s) {unknown}; allowed fields are {sorted(CARD_FIELDS)}.")
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise FileExistsError(f"{out_dir} is a file, not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; choose another folder or pass overwrite=True.")
    default_source = getattr(model.config, "_name_or_path", "")
    try:
        sentence_transformers = sentence_transformers_files(default_source if source is None else source, model.config)
    except ValueError as error:
        if source is not None:
            raise
        logger.warning(f"The export leaves out the sentence-transformers modules: {error}")
        sentence_transformers = {}

    profile = card_fields.pop("profile", None)
    profile_inputs = card_fields.pop("profile_inputs", None)
    baseline_profile = card_fields.pop("baseline_profile", None)
    if profile is None and profile_inputs is not None:
        profile = oversmoothing_profile(model, profile_inputs, progress=False)

    model.config.auto_map = full_auto_map(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written apart first, so that exactly this export's files are known and a failure leaves the earlier one whole.
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        if PIPELINE_TAGS[auto_class_name(model)] == "question-answering":
            add_question_answering_pipeline(staging)  # transformers 5 has no question-answering pipeline of its own
        if sentence_transformers and not (staging / "tokenizer_config.json").is_file():
            logger.warning(
                "The export leaves out the sentence-transformers modules of its source: sentence-transformers loads "
                "the tokenizer from the folder, so pass it as `processor` to keep them."
            )
            sentence_transformers = {}
        for name, path in sentence_transformers.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / name)
        if profile is not None:
            # The card's name, not a local path the profile may carry, labels what gets published.
            profile = dataclasses.replace(profile, model_name=card_fields.get("model_name") or out_dir.name)
            profile.save_json(staging / "oversmoothing_profile.json")
            title = f"over-smoothing profile of {profile.model_name}"
            if baseline_profile is None:
                profile.plot(staging / PROFILE_IMAGE, title=title)
            else:
                plot_profiles([baseline_profile, profile], staging / PROFILE_IMAGE, labels=["stock", "this model"])
        strengths = model.correction_strengths() if has_learned_strengths(model) else None
        if strengths:
            save_strengths(strengths, staging / STRENGTHS_JSON)
            plot_strength_map(strengths, staging / STRENGTHS_IMAGE, title="learned correction strengths")
        card = build_model_card(
            model, out_dir, profile=profile, strengths=strengths, compared_with_stock=baseline_profile is not None,
            sentence_transformers=bool(sentence_transformers), **card_fields,
        )  # fmt: skip
        card.save(staging / "README.md")
        written = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
        for name in set(recorded_export_files(out_dir) or ()) - set(written):
            stale = out_dir / name
            stale.unlink(missing_ok=True)
            # A module folder of the earlier export that nothing else fills (a user's file there keeps it).
            for folder in stale.parents:
                if folder == out_dir or not folder.is_dir() or any(folder.iterdir()):
                    break
                folder.rmdir()
        for name in written:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (out_dir / EXPORT_MANIFEST).write_text(json.dumps({"files": written}, indent=2) + "\n")
    return out_dir


def sentence_transformers_files(source: str | os.PathLike, config) -> dict[str, Path]:
    """The sentence-transformers files of `source` (a folder or Hub id), by their path in an export of a model with
    `config`; empty when `source` is no sentence-transformers model or cannot be reached.

    Raises:
        ValueError: `source` is a sentence-transformers model of another architecture than `config`'s, or one whose
            modules cannot be carried over (its transformer not at the top of the folder, a module outside it).
    """
    folder = _local_snapshot(source, [*SENTENCE_TRANSFORMERS_FILES, "config.json"])
    if folder is None or not (folder / "modules.json").is_file():
        return {}
    try:
        modules = json.loads((folder / "modules.json").read_text())
        source_config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:  # no config.json: the transformer is not at the folder's top
        raise ValueError(f"{source} is a sentence-transformers model that cannot be carried over: {error}") from None
    paths = [module.get("path") for module in modules if isinstance(module, dict)] if isinstance(modules, list) else []
    if not paths or not all(isinstance(path, str) for path in paths) or paths.count("") != 1:
        raise ValueError(f"{source}/modules.json must list its modules with one transformer at the folder's top.")
    module_dirs = [path for path in paths if path]
    if any(not Path(path).parts or Path(path).is_absolute() or ".." in Path(path).parts for path in module_dirs):
        raise ValueError(f"{source}/modules.json names a module folder outside its own: {module_dirs}.")
    ours = {"model_type": config.model_type.removeprefix("centered_")}
    ours |= {field: getattr(config, field, None) for field in SAME_BASE_MODEL_FIELDS}
    theirs = {**source_config, "model_type": str(source_config.get("model_type")).removeprefix("centered_")}
    differences = [
        f"{field} {ours[field]!r} where it has {theirs[field]!r}"
        for field in ours
        if field in theirs and ours[field] != theirs[field]
    ]
    if differences:
        raise ValueError(
            f"the model is not of the architecture of the sentence-transformers model {source} "
            f"({', '.join(differences)}); export it with the source it was built from, or without one."
        )
    if module_dirs:
        folder = _local_snapshot(source, [f"{path}/*" for path in module_dirs]) or folder
    files = {name: folder / name for name in SENTENCE_TRANSFORMERS_FILES if (folder / name).is_file()}
    for module_dir in module_dirs:
        for path in sorted((folder / module_dir).rglob("*")):
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = path
    return files


def _local_snapshot(source: str | os.PathLike, patterns: list[str]) -> Path | None:
    """`source` itself when it is a folder, else the Hub repository's files that match `patterns` (fetched, or from
    the cache when offline); None for an empty source or a repository that cannot be reached."""
    if not source:
        return None
    if Path(source).is_dir():
        return Path(source)
    try:
        return Path(snapshot_download(str(source), allow_patterns=patterns))
    except (OSError, ValueError) as error:  # not a Hub id, not on the Hub, offline and not cached, ...
        logger.info(f"No sentence-transformers files taken from {source}: {error}")
        return None


def recorded_export_files(folder: Path) -> list[str] | None:
    """The files `EXPORT_MANIFEST` says an export wrote into `folder` (None without a manifest).

    Entries leading outside the folder are dropped: the manifest is only ever allowed to name the export's own files.
    """
    try:
        names = json.loads((folder / EXPORT_MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return None
    return [name for name in names if not Path(name).is_absolute() and ".." not in Path(name).parts]


def exported_files(folder: Path) -> list[str]:
    """The model's files in an exported folder: those its manifest records, or, for an export older than the
    manifest, the usual export files and the modelling code its `auto_map` names (never training state, checkpoints
    or anything else the folder holds)."""
    recorded = recorded_export_files(folder)
    if recorded is not None:
        missing = [name for name in recorded if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {missing} of its export; export the model again.")
        return recorded
    names = {path.name for pattern in UNRECORDED_EXPORT_PATTERNS for path in folder.glob(pattern) if path.is_file()}
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    for reference in auto_map.values():
        module = folder / f"{reference.split('.')[0]}.py"
        if module.is_file():
            names |= {module.name, *(Path(path).name for path in get_relative_import_files(module))}
    return sorted(names)


def _bibtex_title(citation: str) -> str:
    return re.search(r"title\s*=\s*\{(.+?)\},", citation).group(1)


def _correction_rows(config) -> list[dict[str, str]]:
    rows = []
    for name in config.corrections:
        correction = CORRECTIONS[name]
        hyperparameters = ", ".join(f"`{field}={getattr(config, field)}`" for field in correction.hyperparameters)
        rows.append(
            {"name": name, "hyperparameters": hyperparameters or "-", "paper": _bibtex_title(correction.citation)}
        )
    return rows


def build_model_card(
    model,
    out_dir: Path,
    profile=None,
    strengths: dict | None = None,
    compared_with_stock: bool = False,
    sentence_transformers: bool = False,
    **card_fields: Any,
) -> ModelCard:
    """The model card of an exported folder, rendered from `model_cards/template.md`: `strengths` is the model's
    learned strength map, `compared_with_stock` says that the profile plot draws the stock model's curves too,
    `sentence_transformers` that the folder keeps the modules of a sentence-transformers model."""
    config = model.config
    auto_class = auto_class_name(model)
    pipeline_tag = PIPELINE_TAGS[auto_class]
    model_name = card_fields.get("model_name") or out_dir.name
    base_model = card_fields.get("base_model") or getattr(config, "_name_or_path", "") or None
    if base_model is not None and Path(base_model).exists():
        base_model = None  # a local path means nothing on the Hub
    metrics = card_fields.get("metrics") or {}
    baseline_metrics = card_fields.get("baseline_metrics") or {}
    dataset = card_fields.get("dataset")
    tags = ["hf_centered", "custom_code", *(f"{name}-correction" for name in config.corrections)]
    if config.has_fusion:
        tags.append(f"{config.fusion}-fusion")
    if sentence_transformers:
        tags.append("sentence-transformers")
    tags += list(card_fields.get("tags") or [])
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=card_fields.get("license", "apache-2.0"),
        language=card_fields.get("language"),
        datasets=[dataset] if dataset else None,
        metrics=sorted(metrics) or None,
        tags=tags,
        eval_results=[
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=dataset or "custom",
                dataset_name=dataset or "custom",
                metric_type=name,
                metric_value=float(value),
            )
            for name, value in metrics.items()
        ]
        or None,
    )
    citations = [CORRECTIONS[name].citation for name in config.corrections]
    if config.has_fusion:
        citations.append(FUSIONS[config.fusion].citation)
    return ModelCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        model_name=model_name,
        model_id=card_fields.get("model_id") or out_dir.name,
        model_description=card_fields.get("model_description") or "",
        model_class=type(model).__name__,
        architecture=f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}",
        base_model=base_model,
        auto_class=auto_class,
        corrections=_correction_rows(config),
        correction_layers="all" if config.correction_layers is None else json.dumps(config.correction_layers),
        fusion=config.fusion if config.has_fusion else None,
        metrics={
            name: (f"{float(value):.4f}", f"{float(baseline_metrics[name]):.4f}" if name in baseline_metrics else "-")
            for name, value in metrics.items()
        },
        has_baseline_metrics=bool(baseline_metrics),
        dataset=dataset,
        training_hyperparameters=card_fields.get("training_hyperparameters"),
        profile_table=profile.to_markdown_table() if profile is not None else None,
        profile_image=PROFILE_IMAGE if profile is not None else None,
        profile_sequences=profile.num_sequences if profile is not None else None,
        compared_with_stock=compared_with_stock,
        sentence_transformers=sentence_transformers,
        strength_table=strength_table(strengths) if strengths else None,
        strength_image=STRENGTHS_IMAGE if strengths else None,
        citations="\n\n".join(citations) or "(stock architecture: cite the base model)",
    )


def push_to_hub(
    folder,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload hf_centered model",
) -> str:
    """Uploads the model of an exported folder to the Hub (creating the repository) and returns the commit URL.

    Only the files of the export go up (see `exported_files`): a fine-tuning output folder also holds checkpoints,
    optimizer states and the run's records, which are never uploaded.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; export the model with export_for_hub first.")
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in exported_files(folder)
    ]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
