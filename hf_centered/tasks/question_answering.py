"""`question-answering`: extractive QA in the SQuAD v1.1 setting, start and end logits over the context tokens;
exact match and F1 (the Hub metric `squad`).

Data: local files or a Hub dataset (`--dataset_name squad`); there is no built-in dataset, since no extractive QA set
ships in an installed package and a question made up for a classification corpus would test nothing. Files are
- the official SQuAD json, `{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
  "answer_start"}]}]}]}]}` (its field names are fixed), or
- flat rows as in the Hub's `squad` (json(l) or parquet): an `id` column, and the columns `question_column`,
  `context_column` and `answer_column`, the last holding `{"text": [...], "answer_start": [...]}` per row (a list of
  `{"text", "answer_start"}` objects is taken too). csv cannot hold such nested answers and is refused.
Every question needs at least one answer, a span of its context that starts at `answer_start`: unanswerable questions
(SQuAD v2's empty answers) are not supported. Before any training, bad data stop with one line naming the example:
missing columns, duplicate ids, empty questions or contexts, answers that do not occur at their `answer_start` or
reach past the context, questions so long that no context (or no more than `doc_stride` tokens of it) fits.

Preprocessing and post-processing are those of transformers' `examples/pytorch/question-answering` (run_qa.py and
utils_qa.py):
- question and context are tokenised as a pair, only the context truncated (`truncation="only_second"`) to
  `max_seq_length`; a longer context becomes several features that overlap by `doc_stride` tokens;
- a feature is labelled with the first answer's start and end tokens when the answer lies wholly inside its part of
  the context, else with the [CLS] index. Evaluation features are labelled the same way, so that the Trainer reports
  an `eval_loss` (and calls `compute_metrics`, which it does only for labelled data); they also keep their example's
  id and their offset mapping (None outside the context) in `TaskData.metric_inputs`, out of the Trainer's way;
- an example's answer is the best-scoring span (start logit + end logit) over all of its features, among the
  `n_best_size` best starts and ends of each feature, inside the context, ending after it starts and at most
  `max_answer_length` tokens long, mapped back to the context's characters through the offsets; an example without
  any such span is answered with the empty string (utils_qa answers the word "empty").
One difference from run_qa: an answer starting in the last context token of a feature is labelled with that token
(run_qa's search runs on through [SEP] there). Features are padded per batch (not to `max_seq_length`), which keeps
CPU training and evaluation short; positions past a feature's own length are never chosen. The span search is
`hf_centered.pipeline_question_answering.span_candidates`, which the `question-answering` pipeline shipped with an
export uses too (transformers 5 has none of its own), so that pipeline answers as the evaluation scored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value
from transformers import DataCollatorWithPadding, EvalPrediction

from ..metrics import load_metric
from ..modeling_centered_bert import CenteredBertForQuestionAnswering
from ..pipeline_question_answering import span_candidates
from .base import TEXT, Task, TaskData, fail, load_data_files, require_columns, require_examples, subsample_splits

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments

EXAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "context": Value("string"),
        "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
    }
)
# What each evaluation feature keeps for the post-processing, beside the model inputs.
FEATURE_LINKS = ["example_id", "offset_mapping"]
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class QuestionAnsweringArguments:
    """Options of `--task question-answering`."""

    question_column: str = field(default="question", metadata={"help": "Question column of flat QA data."})
    context_column: str = field(default="context", metadata={"help": "Context (passage) column of flat QA data."})
    answer_column: str = field(
        default="answers",
        metadata={"help": 'Answers column of flat QA data: {"text": [...], "answer_start": [...]} per row.'},
    )
    doc_stride: int = field(
        default=128,
        metadata={"help": "Tokens of overlap between the features a long context is cut into (< max_seq_length)."},
    )
    max_answer_length: int = field(
        default=30, metadata={"help": "Longest answer, in tokens, that the evaluation may predict."}
    )
    n_best_size: int = field(
        default=20, metadata={"help": "Best start and end tokens of each feature searched for the answer."}
    )


@dataclass
class EvaluationLinks:
    """What the post-processing needs besides the logits: the evaluation examples (id, context, answers), each
    evaluation feature's example id and offset mapping (in the Trainer's order), and the span limits."""

    examples: Dataset
    features: Dataset
    n_best_size: int
    max_answer_length: int


class QuestionAnswering(Task):
    name = "question-answering"
    modality = TEXT
    auto_class = "AutoModelForQuestionAnswering"
    model_class = CenteredBertForQuestionAnswering
    arguments = QuestionAnsweringArguments
    metric_names = ("exact_match", "f1")
    peft_task_type = "QUESTION_ANS"  # PEFT trains and saves qa_outputs itself

    def check_arguments(self, args: FinetuneArguments) -> None:
        options, max_seq_length = self.options(args), args.data.max_seq_length
        if not 0 <= options.doc_stride < max_seq_length:
            fail(
                f"doc_stride={options.doc_stride} must be >= 0 and smaller than max_seq_length={max_seq_length} "
                "(it is the overlap between the features a long context is cut into); run_qa uses 128 of 384"
            )
        for name in ("max_answer_length", "n_best_size"):
            if getattr(options, name) < 1:
                fail(f"{name}={getattr(options, name)} must be >= 1")
        if args.model.num_labels not in (None, 2):
            fail(
                f"num_labels={args.model.num_labels} does not fit question answering, whose head gives a start and "
                "an end logit per token; leave --num_labels out"
            )

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        options, data_args = self.options(args), args.data
        raw = load_data_files(data_args, args.training.seed, read_file=read_squad_json)
        columns = ["id", options.question_column, options.context_column, options.answer_column]
        raw = require_columns(raw, list(dict.fromkeys(columns)))
        raw = DatasetDict({split: squad_examples(dataset, split, *columns[1:]) for split, dataset in raw.items()})
        require_examples(raw)
        train_examples, eval_examples = subsample_splits(raw, args)
        dataset_label = data_args.dataset_name or Path(data_args.train_file).stem
        if processor is None:
            return TaskData(train=train_examples, evaluation=eval_examples, dataset_label=dataset_label)

        max_seq_length = data_args.max_seq_length
        if not getattr(processor, "is_fast", False):
            fail(
                "question answering maps answers to tokens through offsets, which needs a fast tokenizer, not a "
                f"{type(processor).__name__}"
            )
        if max_seq_length > config.max_position_embeddings:
            fail(
                f"max_seq_length={max_seq_length} exceeds the model's {config.max_position_embeddings} positions "
                "(max_position_embeddings)"
            )
        for split, examples in (("train", train_examples), ("validation", eval_examples)):
            check_lengths(examples, split, processor, max_seq_length, options.doc_stride)

        def tokenize(batch):
            return tokenize_examples(batch, processor, max_seq_length, options.doc_stride)

        with args.training.main_process_first(desc="tokenising"):
            train = train_examples.map(tokenize, batched=True, remove_columns=train_examples.column_names)
            evaluation = eval_examples.map(tokenize, batched=True, remove_columns=eval_examples.column_names)
        links = EvaluationLinks(
            examples=eval_examples,
            features=evaluation.select_columns(FEATURE_LINKS),
            n_best_size=options.n_best_size,
            max_answer_length=options.max_answer_length,
        )
        evaluation = evaluation.remove_columns(FEATURE_LINKS)
        return TaskData(
            train=train.remove_columns(FEATURE_LINKS),
            evaluation=evaluation,
            dataset_label=dataset_label,
            metric_inputs=links,
            example_counts=(len(train_examples), len(eval_examples)),
            profile_inputs=evaluation.select_columns(
                [name for name in MODEL_INPUTS if name in evaluation.column_names]
            ),
        )

    def configure(self, config, data: TaskData) -> None:
        # The head gives two logits per token; a checkpoint's own labels (e.g. a classifier's) do not apply.
        config.num_labels = 2
        config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
        config.label2id = {"LABEL_0": 0, "LABEL_1": 1}

    def data_collator(self, args: FinetuneArguments, processor):
        return DataCollatorWithPadding(processor)

    def compute_metrics(self, data: TaskData):
        links: EvaluationLinks = data.metric_inputs

        def compute(eval_prediction: EvalPrediction) -> dict[str, float]:
            start_logits, end_logits = eval_prediction.predictions[:2]
            return squad_scores(links, start_logits, end_logits)

        return compute

    def card_hyperparameters(self, args: FinetuneArguments) -> dict[str, Any]:
        options = self.options(args)
        return {
            "max_seq_length": args.data.max_seq_length,
            "doc_stride": options.doc_stride,
            "max_answer_length": options.max_answer_length,
        }


def read_squad_json(path: str) -> Dataset | None:
    """The questions of an official SQuAD json file as flat rows (id, title, context, question, answers), or None
    for any other file (flat json, json lines, other formats), which the usual loaders then read."""
    if Path(path).suffix.lower() != ".json":
        return None
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list) or not all(isinstance(item, dict) and "paragraphs" in item for item in articles):
        return None
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                rows["id"].append(qa.get("id"))
                rows["title"].append(article.get("title"))
                rows["context"].append(paragraph.get("context"))
                rows["question"].append(qa.get("question"))
                rows["answers"].append(qa.get("answers", []))
    return Dataset.from_dict(rows)


def squad_examples(dataset: Dataset, split: str, question_column: str, context_column: str, answer_column: str):
    """The rows of `dataset` as checked examples with the columns id, question, context and answers ({"text": [...],
    "answer_start": [...]}); the first problem found stops the run with one line naming the example."""
    rows: dict[str, list] = {"id": [], "question": [], "context": [], "answers": []}
    seen = set()
    columns = zip(dataset["id"], dataset[question_column], dataset[context_column], dataset[answer_column], strict=True)
    for row, (example_id, question, context, answers) in enumerate(columns):
        if example_id is None or not str(example_id).strip():
            fail(f"the example in row {row} of the {split} data has no id")
        example_id = str(example_id)
        if example_id in seen:
            fail(f"the id {example_id!r} occurs twice in the {split} data; every question needs its own id")
        seen.add(example_id)
        # Leading whitespace would only take room from the context when tokenised (run_qa strips it too).
        question = "" if question is None else str(question).strip()
        context = "" if context is None else str(context)
        if not question:
            fail(f"example {example_id!r} of the {split} data has an empty question")
        if not context.strip():
            fail(f"example {example_id!r} of the {split} data has an empty context")
        texts, starts = answer_lists(answers, example_id, split, answer_column)
        for text, start in zip(texts, starts, strict=True):
            check_answer(text, start, context, example_id, split)
        rows["id"].append(example_id)
        rows["question"].append(question)
        rows["context"].append(context)
        rows["answers"].append({"text": texts, "answer_start": starts})
    return Dataset.from_dict(rows, features=EXAMPLE_FEATURES)


def answer_lists(answers: Any, example_id: str, split: str, column: str) -> tuple[list[str], list[int]]:
    """The answer texts and starts of one example, from `{"text": [...], "answer_start": [...]}` (or single values)
    or from a list of `{"text", "answer_start"}` objects."""
    where = f"example {example_id!r} of the {split} data"
    if isinstance(answers, list) and all(isinstance(answer, dict) for answer in answers):
        texts = [answer.get("text") for answer in answers]
        starts = [answer.get("answer_start") for answer in answers]
    elif isinstance(answers, dict) and {"text", "answer_start"} <= set(answers):
        texts, starts = answers["text"], answers["answer_start"]
        if not isinstance(texts, list) and not isinstance(starts, list):
            texts, starts = [texts], [starts]
    else:
        shown = f"{type(answers).__name__} {str(answers)[:60]!r}"
        fail(
            f"the {column} column of {where} holds {shown}, not answers {{'text': [...], 'answer_start': [...]}} "
            "(csv files cannot hold them: use json, jsonl or parquet files, or the official SQuAD json)"
        )
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        fail(f"the answers of {where} need as many texts as answer_start values, got {texts!r} and {starts!r}")
    if not texts:
        fail(
            f"{where} has no answer; every question needs one (unanswerable questions, as in SQuAD v2, are not "
            "supported)"
        )
    for start in starts:
        if isinstance(start, bool) or not isinstance(start, (int, np.integer, float)) or start != int(start):
            fail(f"answer_start {start!r} of {where} is not a character index (a whole number)")
    return [text if text is None else str(text) for text in texts], [int(start) for start in starts]


def check_answer(text: str | None, start: int, context: str, example_id: str, split: str) -> None:
    """An answer must be a non-empty span of the context beginning at `start`."""
    where = f"example {example_id!r} of the {split} data"
    if not text:
        fail(
            f"{where} has an empty answer text; every answer must be a span of the context (unanswerable questions, "
            "as in SQuAD v2, are not supported)"
        )
    if not 0 <= start < len(context) or start + len(text) > len(context):
        fail(
            f"the answer {text!r} of {where} at answer_start={start} lies outside its context "
            f"({len(context)} characters)"
        )
    if context[start : start + len(text)] != text:
        found = context.find(text)
        elsewhere = f"it occurs at character {found}" if found >= 0 else "it does not occur in the context at all"
        fail(
            f"the answer {text!r} of {where} does not occur in its context at answer_start={start} (the context "
            f"reads {context[start : start + len(text)]!r} there; {elsewhere})"
        )


def check_lengths(examples: Dataset, split: str, tokenizer, max_seq_length: int, doc_stride: int) -> None:
    """Every example whose question and context do not fit in one feature must leave more than `doc_stride` tokens
    of context per feature (the tokenizer cannot cut the context otherwise)."""
    special_tokens = tokenizer.num_special_tokens_to_add(pair=True)
    question_ids = tokenizer(list(examples["question"]), add_special_tokens=False)["input_ids"]
    for index, ids in enumerate(question_ids):
        room = max_seq_length - special_tokens - len(ids)
        if room > doc_stride:
            continue
        example = examples[index]
        context_tokens = len(tokenizer(example["context"], add_special_tokens=False)["input_ids"])
        if context_tokens <= room:
            continue  # the whole pair fits in one feature
        where = f"example {example['id']!r} of the {split} data"
        if room <= 0:
            fail(
                f"the question of {where} takes {len(ids)} tokens: with the special tokens no context fits in "
                f"max_seq_length={max_seq_length}; shorten it or raise max_seq_length"
            )
        fail(
            f"the question of {where} takes {len(ids)} tokens, leaving {room} of max_seq_length={max_seq_length} for "
            f"the context: not more than doc_stride={doc_stride}; lower doc_stride or raise max_seq_length"
        )


def tokenize_examples(batch: dict[str, list], tokenizer, max_seq_length: int, doc_stride: int) -> dict[str, list]:
    """Features of a batch of examples (run_qa's `prepare_train_features` and `prepare_validation_features` in one):
    model inputs, `start_positions`/`end_positions` of the first answer ([CLS] where the feature does not hold it
    whole), `example_id`, and `offset_mapping` with None outside the context."""
    encoded = tokenizer(
        batch["question"],
        batch["context"],
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    example_indices = encoded.pop("overflow_to_sample_mapping")
    offset_mappings = encoded.pop("offset_mapping")
    features: dict[str, list] = {"start_positions": [], "end_positions": [], "example_id": [], "offset_mapping": []}
    for feature, (example, offsets) in enumerate(zip(example_indices, offset_mappings, strict=True)):
        sequence_ids = encoded.sequence_ids(feature)
        context_tokens = [token for token, sequence in enumerate(sequence_ids) if sequence == 1]
        answers = batch["answers"][example]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        start, end = answer_tokens(offsets, context_tokens[0], context_tokens[-1], start_char, end_char)
        if start is None:
            start = end = encoded["input_ids"][feature].index(tokenizer.cls_token_id)
        features["start_positions"].append(start)
        features["end_positions"].append(end)
        features["example_id"].append(batch["id"][example])
        features["offset_mapping"].append(
            [offset if sequence == 1 else None for offset, sequence in zip(offsets, sequence_ids, strict=True)]
        )
    return {**encoded, **features}


def answer_tokens(
    offsets, first: int, last: int, start_char: int, end_char: int
) -> tuple[int, int] | tuple[None, None]:
    """The first and last tokens of the answer's characters [start_char, end_char) among the context tokens
    first..last, or (None, None) when the answer does not lie wholly inside them."""
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return None, None
    start = first
    while start < last and offsets[start + 1][0] <= start_char:
        start += 1
    end = last
    while end > first and offsets[end - 1][1] >= end_char:
        end -= 1
    return start, end


def predicted_answers(
    examples: Iterable[dict],
    features: Iterable[dict],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> dict[str, str]:
    """Each example's answer: the text of its best span over all of its features (the empty string if none), the
    span search shared with the exported pipeline."""
    best: dict[str, tuple[float, int, int]] = {}
    for index, feature in enumerate(features):
        offsets, example_id = feature["offset_mapping"], feature["example_id"]
        for span in span_candidates(start_logits[index], end_logits[index], offsets, n_best_size, max_answer_length):
            # Strictly better only: among equal scores the earlier feature, start and end win, as in utils_qa.
            if example_id not in best or span[0] > best[example_id][0]:
                best[example_id] = span
    answers = {}
    for example in examples:
        span = best.get(example["id"])
        answers[example["id"]] = example["context"][span[1] : span[2]] if span is not None else ""
    return answers


def squad_scores(links: EvaluationLinks, start_logits: np.ndarray, end_logits: np.ndarray) -> dict[str, float]:
    """Exact match and F1 (in percent, the `squad` metric) of the answers the logits of the evaluation features
    give, against every reference answer of their examples."""
    if len(start_logits) != len(links.features):
        raise ValueError(f"got logits of {len(start_logits)} features for {len(links.features)} evaluation features")
    answers = predicted_answers(
        links.examples, links.features, start_logits, end_logits, links.n_best_size, links.max_answer_length
    )
    scores = load_metric("squad").compute(
        predictions=[{"id": example_id, "prediction_text": text} for example_id, text in answers.items()],
        references=[{"id": example["id"], "answers": example["answers"]} for example in links.examples],
    )
    return {"exact_match": scores["exact_match"], "f1": scores["f1"]}
