"""`text-classification`: one label per text, a [CLS]-pooled head; accuracy and macro-F1.

Built-in offline datasets: `rotten_tomatoes` (12,808 review snippets, fresh/rotten, split by movie so that no movie is
on both sides) and `bbc_news` (2,225 articles, 5 topics). Files and Hub datasets need a text and a label column (class
ids or class names).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from datasets import DatasetDict, Value
from transformers import DataCollatorWithPadding

from .. import data as offline_data
from ..metrics import compute_metrics
from ..modeling_centered_bert import CenteredBertForSequenceClassification
from .base import (
    TEXT,
    Task,
    TaskData,
    check_texts,
    class_names_for,
    dataset_dict,
    load_data_files,
    normalise_labels,
    require_columns,
    require_examples,
    split_indices,
    subsample_splits,
)

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments


class TextClassification(Task):
    name = "text-classification"
    modality = TEXT
    auto_class = "AutoModelForSequenceClassification"
    model_class = CenteredBertForSequenceClassification
    builtin_datasets = ("rotten_tomatoes", "bbc_news")
    column_options = ("text_column", "label_column")
    metric_names = ("accuracy", "f1_macro")
    peft_task_type = "SEQ_CLS"

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        data_args, seed = args.data, args.training.seed
        if data_args.dataset_name in self.builtin_datasets:
            raw, label_names = builtin_dataset(data_args.dataset_name, data_args.validation_split_fraction, seed)
            dataset_label = data_args.dataset_name
        else:
            raw = require_columns(
                load_data_files(data_args, seed, self.builtin_datasets), [data_args.text_column, data_args.label_column]
            )
            check_texts(raw, data_args.text_column)
            # pandas gives large_string for csv/parquet text but string for json: one type for both splits
            raw = raw.cast_column(data_args.text_column, Value("string"))
            raw = raw.rename_columns({data_args.text_column: "text", data_args.label_column: "label"})
            raw, label_names = normalise_labels(raw)
            dataset_label = data_args.dataset_name or Path(data_args.train_file).stem
        require_examples(raw)
        label_names = class_names_for(raw, label_names, args.model.num_labels)
        train, evaluation = subsample_splits(raw, args)

        def tokenize(batch):
            return processor(batch["text"], truncation=True, max_length=data_args.max_seq_length)

        if processor is not None:
            with args.training.main_process_first(desc="tokenising"):
                train = train.map(tokenize, batched=True, remove_columns=["text"])
                evaluation = evaluation.map(tokenize, batched=True, remove_columns=["text"])
        return TaskData(
            train=train.rename_column("label", "labels"),
            evaluation=evaluation.rename_column("label", "labels"),
            dataset_label=dataset_label,
            label_names=label_names,
        )

    def data_collator(self, args: FinetuneArguments, processor):
        return DataCollatorWithPadding(processor)

    def compute_metrics(self, data: TaskData):
        return compute_metrics


def builtin_dataset(name: str, validation_fraction: float, seed: int) -> tuple[DatasetDict, list[str]]:
    """A built-in dataset as `DatasetDict(train, validation)` with `text` and `label`, and its class names."""
    if name == "rotten_tomatoes":
        texts, labels, movie_names = offline_data.rotten_tomatoes()
        train_idx, eval_idx = split_indices(labels, validation_fraction, seed, groups=movie_names)
        label_names = ["rotten", "fresh"]
    else:
        texts, labels, label_names = offline_data.bbc_news()
        train_idx, eval_idx = split_indices(labels, validation_fraction, seed)
    return dataset_dict({"text": texts, "label": labels}, train_idx, eval_idx), label_names
