"""What every fine-tuning task shares: the `Task` interface the runner calls, the data it returns, and data helpers.

A task (named by its Hub pipeline tag) owns everything that differs between tasks: its data preparation and checks,
its collator, its head, its metrics and what its model card shows. The runner (`hf_centered.finetuning`) owns what
does not: arguments, the Trainer, the LoRA setup, saving, export, push, resume and the stock baseline. Tasks report
bad input with `fail`, one line and exit code 2, before any training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

from ..cli import USAGE_ERROR_CODE
from ..modeling_generic import corrected_model_class, stock_heads

if TYPE_CHECKING:
    from ..finetuning import DataArguments, FinetuneArguments

TEXT, IMAGE = "text", "image"
IGNORED_LABEL = -100
"""The label of the positions the loss and the metrics leave out (transformers' convention)."""
DATA_FILE_BUILDERS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


class UsageError(SystemExit):
    """Bad input, found before any work: `finetune.py` writes `finetune.py: error: <message>` to stderr, and the
    process exits with argparse's code for bad usage, 2. `str()` of the exception is `error: <message>`."""

    def __init__(self, message: str) -> None:
        super().__init__(USAGE_ERROR_CODE)
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"


def fail(message: str) -> NoReturn:
    """Stops with one clear line (no traceback, no usage block) and exit code 2."""
    raise UsageError(message)


@dataclass
class TaskData:
    """A task's datasets ready for the Trainer, and what the runner needs to know about them."""

    train: Dataset
    evaluation: Dataset
    dataset_label: str
    """The dataset's name in the model card."""
    label_names: list[str] | None = None
    """Class names of a classification head (sequence, token or pixel classes); None for heads without classes."""
    metric_inputs: Any = None
    """Whatever the task's metrics need besides predictions and labels (e.g. the QA examples and their features)."""
    profile_inputs: Dataset | None = None
    """Rows for the card's over-smoothing profile (model inputs only); default: `evaluation`."""
    example_counts: tuple[int, int] | None = None
    """(training, evaluation) examples where a dataset row is not one example (QA cuts a question's context into
    several windows, its features); default: the rows of `train` and `evaluation`."""

    @property
    def examples(self) -> tuple[int, int]:
        """(training, evaluation) examples."""
        return self.example_counts or (len(self.train), len(self.evaluation))


class Task:
    """One fine-tuning task. Subclasses set the class attributes and implement `load_data` and `data_collator`."""

    name: ClassVar[str]
    """The Hub pipeline tag, also the value of `--task`."""
    modality: ClassVar[str]
    """`"text"` (a BERT, a tokenizer) or `"image"` (a ViT, an image processor)."""
    auto_class: ClassVar[str]
    """The Auto class that loads this task's head in any family (`"AutoModelForSequenceClassification"`)."""
    model_class: ClassVar[type[PreTrainedModel] | None] = None
    """The dedicated corrected BERT or ViT head this task trains, or None where only the generic path has one."""
    builtin_datasets: ClassVar[tuple[str, ...]] = ()
    """Offline datasets this task knows by name (`--dataset_name`). Several tasks may read one; a run naming a
    dataset without `--task` trains the first registered task that lists it."""
    column_options: ClassVar[tuple[str, ...]] = ()
    """The runner's column options (`--text_column`, `--label_column`) this task's data reading honours; another
    one given is refused, since the task would silently ignore it."""
    arguments: ClassVar[type | None] = None
    """A dataclass of the options only this task reads; its fields are command-line options of their own."""
    metric_names: ClassVar[tuple[str, ...]]
    """The evaluation's quality metrics (without `eval_`), the headline first: printed, compared with the stock
    baseline and written into the card's model-index, so they carry the Hub's metric ids."""
    peft_task_type: ClassVar[str | None] = None
    """PEFT's `task_type` for this head (PEFT then trains and saves the head itself), or None."""
    head_modules: ClassVar[tuple[str, ...]] = ()
    """Head modules PEFT must train fully and save with the adapter when `peft_task_type` does not cover them."""
    pretokenized: ClassVar[bool] = False
    """Whether the task tokenizes text already split into words (byte-level BPE tokenizers then need a prefix space)."""
    remove_unused_columns: ClassVar[bool] = True
    """False for a task whose collator reads dataset columns the model does not take (the Trainer would drop them);
    its datasets then hold only those and the model's inputs."""

    def head_class(self, config) -> type[PreTrainedModel] | None:
        """The head this task trains for `config`: `model_class` for the corrected BERT and ViT, else the generic
        path's corrected head of the configuration's family (the one `auto_class` loads), or None where the family
        has no such head."""
        if self.model_class is not None and isinstance(config, self.model_class.config_class):
            return self.model_class
        stock_config_class = getattr(config, "stock_config_class", None)
        heads = () if stock_config_class is None else stock_heads(stock_config_class).get(self.auto_class, ())
        return corrected_model_class(heads[0]) if heads else None  # the Auto class's default head

    @property
    def scratch_model_type(self) -> str:
        """The family `--architecture` builds when it names no `model_type`."""
        return "vit" if self.modality == IMAGE else "bert"

    def names_own_data(self, args: FinetuneArguments) -> bool:
        """Whether this task's own options name the training data (e.g. a folder of images), which then replaces
        `--dataset_name` as `--train_file` does."""
        return False

    def check_arguments(self, args: FinetuneArguments) -> None:
        """Checks of this task's options that need no data or model; `fail` on a bad one."""

    def adapt_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        """The tokenizer this task reads its data with and saves with the model, from the loaded one: by default that
        one itself."""
        return tokenizer

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        """Raw data → checked → subsampled → preprocessed; every data error stops here with `fail`, before
        training. `config` is the model configuration (labels not yet set), `processor` the tokenizer or image
        processor (None only where a test checks the data alone)."""
        raise NotImplementedError

    def configure(self, config, data: TaskData) -> None:
        """Sets what the head's size depends on in `config`: by default the class names as labels."""
        if data.label_names is not None:
            config.num_labels = len(data.label_names)
            config.id2label = dict(enumerate(data.label_names))
            config.label2id = {name: i for i, name in enumerate(data.label_names)}

    def data_collator(self, args: FinetuneArguments, processor) -> Callable:
        """The Trainer's `data_collator`."""
        raise NotImplementedError

    def compute_metrics(self, data: TaskData) -> Callable[[EvalPrediction], dict[str, float]]:
        """The Trainer's `compute_metrics` for the evaluation of `data`."""
        raise NotImplementedError

    def preprocess_logits_for_metrics(self) -> Callable | None:
        """The Trainer's `preprocess_logits_for_metrics` (e.g. an arg-max that keeps evaluation memory small)."""
        return None

    def card_hyperparameters(self, args: FinetuneArguments) -> dict[str, Any]:
        """Task-specific entries of the card's training hyper-parameters."""
        return {"max_seq_length": args.data.max_seq_length} if self.modality == TEXT else {}

    def options(self, args: FinetuneArguments) -> Any:
        """This task's own options (an instance of `arguments`)."""
        return args.task_options[self.name]


def split_indices(labels: list[int], fraction: float, seed: int, groups: list[str] | None = None):
    """Seeded (train, evaluation) index arrays: stratified by label, or keeping each group on one side."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    indices = np.arange(len(labels))
    if groups is not None:  # whole groups (movies) on one side only
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        return next(splitter.split(indices, labels, groups=groups))
    return train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)


def dataset_dict(columns: dict[str, list], train_idx, eval_idx) -> DatasetDict:
    """`DatasetDict(train, validation)` of the rows `train_idx` and `eval_idx` of `columns`."""
    splits = {}
    for split, indices in (("train", train_idx), ("validation", eval_idx)):
        splits[split] = Dataset.from_dict({key: [values[i] for i in indices] for key, values in columns.items()})
    return DatasetDict(splits)


def load_data_files(
    data_args: DataArguments,
    seed: int,
    builtin_datasets: tuple[str, ...] = (),
    read_file: Callable[[str], Dataset | None] | None = None,
) -> DatasetDict:
    """Local csv/json(l)/parquet files or a Hub dataset, with `train` and `validation` splits (the validation split
    is a seeded `validation_split_fraction` of train when the data have neither validation nor test split).

    `read_file(path)` lets a task read a file format of its own (e.g. the nested SQuAD json): it returns the file's
    rows, or None to leave the file to the csv/json/parquet loaders."""
    if data_args.train_file is not None:
        data_files = {"train": data_args.train_file}
        if data_args.validation_file is not None:
            data_files["validation"] = data_args.validation_file
        builders = {}
        for path in data_files.values():
            extension = Path(path).suffix.lstrip(".").lower()
            if extension not in DATA_FILE_BUILDERS:
                fail(f"unsupported data file type .{extension} ({path}); use .csv, .json, .jsonl or .parquet")
            builders[path] = DATA_FILE_BUILDERS[extension]
        splits = {}
        for split, path in data_files.items():  # one at a time, so that an error names its file and columns
            own_format = read_file(path) if read_file is not None else None
            if own_format is not None:
                splits[split] = own_format
                continue
            try:
                splits[split] = load_dataset(builders[path], data_files={split: path}, split=split)
            except Exception as error:  # the loaders raise many types for unreadable files
                cause: BaseException | None = error
                while cause is not None and not isinstance(cause, UnicodeDecodeError):
                    cause = cause.__cause__ or cause.__context__
                if cause is not None:
                    fail(f"data file {path} is not UTF-8 text; save it as UTF-8")
                fail(f"cannot read the data file {path}: {str(error).splitlines()[0]}")
        raw = DatasetDict(splits)
    else:
        try:
            raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        except Exception as error:  # offline, unknown names raise connection or not-found errors
            builtin = f"not a built-in dataset of this task ({', '.join(builtin_datasets)})" if builtin_datasets else ""
            fail(
                f"unknown dataset {data_args.dataset_name!r}: {builtin}{' and ' if builtin else ''}"
                f"datasets.load_dataset failed ({type(error).__name__}: {str(error).splitlines()[0]})"
            )
    if "validation" not in raw:
        held_out = "test" if "test" in raw else None
        if held_out is None:
            rows, fraction = len(raw["train"]), data_args.validation_split_fraction
            if math.ceil(rows * fraction) >= rows:  # datasets holds out ceil(rows · fraction), leaving no training row
                fail(
                    f"the training data hold {rows} example(s): too few to hold out validation_split_fraction="
                    f"{fraction} of them for evaluation; give more data or a --validation_file"
                )
            raw = raw["train"].train_test_split(test_size=fraction, seed=seed)
            held_out = "test"
        raw = DatasetDict(train=raw["train"], validation=raw[held_out])
    return raw


def require_columns(raw: DatasetDict, columns: list[str]) -> DatasetDict:
    """`raw` reduced to `columns`; a missing one is an error naming the split and the columns it has."""
    for split, dataset in raw.items():
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            fail(f"column(s) {missing} not found in the {split} data; its columns are {dataset.column_names}")
    return raw.select_columns(columns)


def require_examples(raw: DatasetDict) -> None:
    for split, dataset in raw.items():
        if len(dataset) == 0:
            fail(f"the {split} data hold no examples")


def check_texts(raw: DatasetDict, column: str) -> None:
    """Refuses empty or missing texts in `column`, naming the split and the first rows."""
    for split, dataset in raw.items():
        empty = [i for i, text in enumerate(dataset[column]) if text is None or not str(text).strip()]
        if empty:
            fail(f"{len(empty)} empty text(s) in the {split} data (rows {empty[:5]}); remove or fill them")


def normalise_labels(raw: DatasetDict, column: str = "label") -> tuple[DatasetDict, list[str] | None]:
    """Class ids as integers: ClassLabel and integer columns keep theirs, class names are numbered in sorted order."""
    feature = raw["train"].features[column]
    if isinstance(feature, ClassLabel):
        return raw, list(feature.names)
    values = [value for split in raw.values() for value in split[column]]
    if any(value is None for value in values):
        fail(f"the {column} column has empty values")
    if all(isinstance(value, str) for value in values):
        label_names = sorted(set(raw["train"][column]))
        by_case: dict[str, list[str]] = {}
        for name in label_names:
            by_case.setdefault(name.strip().lower(), []).append(name)
        clashing = [names for names in by_case.values() if len(names) > 1]
        if clashing:
            fail(f"class names {clashing[0]} differ only in case or spaces; write each class the same way")
        unseen = sorted(set(values) - set(label_names))
        if unseen:
            fail(f"evaluation labels {unseen} never occur in the training data")
        label_ids = {name: i for i, name in enumerate(label_names)}
        features = raw["train"].features.copy()
        features[column] = Value("int64")  # map alone would keep the string type and store "0", "1"
        return raw.map(lambda row: {column: label_ids[row[column]]}, features=features), label_names
    if not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        kinds = sorted({type(value).__name__ for value in values})
        fail(f"labels must be all integer class ids or all class names, got a mix of {', '.join(kinds)}")
    return raw, None


def class_names_for(raw: DatasetDict, label_names: list[str] | None, num_labels: int | None) -> list[str]:
    """The head's class names for single-label classification data with integer `label` ids: checks that the
    training data hold two classes or more, that every id lies in range and that `num_labels` (when given) matches."""
    classes = sorted(set(raw["train"]["label"]))
    if len(classes) < 2:
        # transformers would build a one-output regression head and report a meaningless accuracy of 1.0
        only = label_names[classes[0]] if label_names else classes[0]
        fail(f"the training data hold a single class ({only!r}); classification needs at least two")
    data_classes = len(label_names) if label_names else 1 + max(max(split["label"]) for split in raw.values())
    num_labels = data_classes if num_labels is None else num_labels
    if num_labels < 2:
        fail(f"num_labels={num_labels} is not valid: allowed values are integers >= 2 (the data have {data_classes})")
    if label_names is None:
        check_label_range(raw, num_labels)
    if num_labels != data_classes:
        described = ", ".join(label_names) if label_names else f"class ids 0..{data_classes - 1}"
        fail(
            f"num_labels={num_labels} does not match the data, which have {data_classes} classes ({described}); "
            "leave --num_labels out to take it from the data"
        )
    if label_names is None or len(label_names) != num_labels:
        label_names = [f"LABEL_{i}" for i in range(num_labels)]
    return label_names


def check_label_range(raw: DatasetDict, num_labels: int) -> None:
    """Labels outside 0..num_labels-1 would crash (or silently corrupt) the loss mid-training."""
    for split, dataset in raw.items():
        bad = sorted({int(value) for value in dataset["label"] if not 0 <= int(value) < num_labels})
        if bad:
            fail(f"{split} label value(s) {bad[:10]} lie outside 0..{num_labels - 1} (num_labels={num_labels})")


def subsample(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of `limit` rows (all rows when `limit` is None)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def subsample_splits(raw: DatasetDict, args: FinetuneArguments) -> tuple[Dataset, Dataset]:
    """(train, evaluation) cut to `max_train_samples` and `max_eval_samples`."""
    seed = args.training.seed
    return (
        subsample(raw["train"], args.data.max_train_samples, seed),
        subsample(raw["validation"], args.data.max_eval_samples, seed),
    )
