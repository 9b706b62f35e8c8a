"""Plain texts for the language-modelling tasks (`fill-mask`, `text-generation`): one `text` column, each row one
example.

- `text_corpus`, built in and offline: the 12,808 Rotten Tomatoes review snippets and the 2,225 BBC News articles,
  15,033 texts, split at random by `seed` (`validation_split_fraction` held out) with the same share of each source
  on both sides.
- Local files: csv/json(l)/parquet with a `text_column` (an empty text is an error), or plain .txt with one example
  per non-empty line (blank lines are skipped); a .txt training file takes a .txt validation file.
- Hub datasets (`datasets.load_dataset(dataset_name)`) with a `text_column`; their empty rows are skipped: corpora such
  as wikitext separate paragraphs with them, and a Hub dataset cannot be edited as a file can.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, Value

from .. import data as offline_data
from .base import check_texts, dataset_dict, fail, load_data_files, require_columns, split_indices

if TYPE_CHECKING:
    from ..finetuning import DataArguments, FinetuneArguments

TEXT_CORPUS = "text_corpus"
TEXT_FILE_SUFFIX = ".txt"


def read_texts(args: FinetuneArguments, builtin_datasets: tuple[str, ...]) -> tuple[DatasetDict, str]:
    """`DatasetDict(train, validation)` of one `text` column, and the dataset's name for the card."""
    data_args, seed = args.data, args.training.seed
    if data_args.dataset_name == TEXT_CORPUS:
        return text_corpus(data_args.validation_split_fraction, seed), data_args.dataset_name
    column = data_args.text_column
    files = [path for path in (data_args.train_file, data_args.validation_file) if path is not None]
    text_files = [path for path in files if Path(path).suffix.lower() == TEXT_FILE_SUFFIX]
    if text_files and len(text_files) != len(files):
        fail(f"give both data files as .txt or neither; got {', '.join(files)}")
    if text_files:
        raw = read_text_files(data_args, column, seed)
    else:
        raw = require_columns(load_data_files(data_args, seed, builtin_datasets), [column])
    if data_args.dataset_name is not None:  # a Hub dataset: blank rows separate paragraphs (module docstring)
        raw = raw.filter(lambda row: row[column] is not None and bool(str(row[column]).strip()))
    else:
        check_texts(raw, column)
    # pandas gives large_string for csv/parquet text but string for json: one type for both splits
    raw = raw.cast_column(column, Value("string"))
    if column != "text":
        raw = raw.rename_column(column, "text")
    return raw, data_args.dataset_name or Path(data_args.train_file).stem


def text_corpus(validation_fraction: float, seed: int) -> DatasetDict:
    """The built-in `text_corpus`: Rotten Tomatoes snippets and BBC News articles, split with equal source shares."""
    reviews, _, _ = offline_data.rotten_tomatoes()
    articles, _, _ = offline_data.bbc_news()
    sources = [0] * len(reviews) + [1] * len(articles)
    train_idx, eval_idx = split_indices(sources, validation_fraction, seed)
    return dataset_dict({"text": reviews + articles}, train_idx, eval_idx)


def read_text_files(data_args: DataArguments, column: str, seed: int) -> DatasetDict:
    """Plain-text data files, one example per non-empty line, in `column`; without a validation file a seeded
    `validation_split_fraction` of the training lines is held out."""
    splits = {}
    for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file)):
        if path is None:
            continue
        try:
            lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            fail(f"data file {path} is not UTF-8 text; save it as UTF-8")
        if not lines:
            fail(f"data file {path} holds no text (a .txt file holds one example per non-empty line)")
        splits[split] = Dataset.from_dict({column: lines})
    if "validation" not in splits:
        held_out = splits["train"].train_test_split(test_size=data_args.validation_split_fraction, seed=seed)
        splits = {"train": held_out["train"], "validation": held_out["test"]}
    return DatasetDict(splits)


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def check_tokenizer_fits(tokenizer, config, max_seq_length: int) -> None:
    """The tokenizer's ids lie inside the model's vocabulary, and no text is cut longer than the model's positions."""
    name = tokenizer_name(tokenizer)
    if len(tokenizer) > config.vocab_size:
        fail(
            f"the tokenizer {name} has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: use "
            "the model's own tokenizer, or from scratch an architecture with vocab_size >= the tokenizer's"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_seq_length > positions:
        fail(f"max_seq_length={max_seq_length} exceeds the model's max_position_embeddings={positions}")
