"""question-answering: SQuAD-format data, run_qa's features and utils_qa's post-processing, squad scores, bad input,
and tiny end-to-end runs whose export answers through `pipeline("question-answering")`.

No SQuAD-format data ship offline, so `squad_rows` writes its own: real BBC News sentences as the passage, with two
made-up facts of one kind inserted among them ("Ines Duarte was born in Quito.", "Tom Baxter was born in Oslo."), and
a question whose answer is a span of one of them ("Where was Ines Duarte born?" -> "Quito").
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_pretrained_bert
from datasets import Dataset
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertTokenizer, EvalPrediction, pipeline

from hf_centered import CenteredBertForQuestionAnswering
from hf_centered.data import bbc_news
from hf_centered.finetuning import main, parse_arguments
from hf_centered.metrics import load_metric
from hf_centered.tasks import TASKS, TaskData, UsageError
from hf_centered.tasks.question_answering import (
    MODEL_INPUTS,
    EvaluationLinks,
    predicted_answers,
    squad_scores,
    tokenize_examples,
)

TASK = TASKS["question-answering"]
PEOPLE = ["Ada Moreno", "Tom Baxter", "Ines Duarte", "Kofi Mensah", "Lena Vogel", "Omar Haddad"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tallinn"]
# (fact, question, the slot that answers it); the amount answers with several words ("75 million pounds").
FACTS = [
    ("{person} was born in {city}.", "Where was {person} born?", "city"),
    ("{person} was born in {city}.", "Who was born in {city}?", "person"),
    ("The new bridge in {city} cost {amount}.", "How much did the new bridge in {city} cost?", "amount"),
]
MAX_SEQ_LENGTH = 64  # of the runs: the training passages need two or more features each
TRAIN_SENTENCES, EVAL_SENTENCES = (1, 3), (0, 1)  # (before, after) the fact: evaluation passages fit one feature


def bbc_sentences(count: int = 400) -> list[str]:
    """Real sentences of 6 to 30 words from the BBC News articles (their title lines left out)."""
    sentences = []
    for article in bbc_news()[0]:
        body = article.split("\n", 1)[-1]
        sentences += [s for s in re.split(r"(?<=[.!?])\s+", body.strip()) if 6 <= len(s.split()) <= 30]
        if len(sentences) >= count:
            return sentences[:count]
    return sentences


def squad_rows(count: int, seed: int, sentences: list[str], around: tuple[int, int]) -> list[dict]:
    """`count` flat SQuAD rows: `around` real sentences before and after an inserted fact, a distractor fact of the
    same kind about others placed among them, and a question on the fact."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        people, cities, amounts = rng.sample(PEOPLE, 2), rng.sample(CITIES, 2), rng.sample([12, 40, 75, 310], 2)
        values, others = (
            {"person": person, "city": city, "amount": f"{amount} million pounds"}
            for person, city, amount in zip(people, cities, amounts, strict=True)
        )
        fact_template, question_template, slot = FACTS[index % len(FACTS)]
        fact = fact_template.format(**values)
        before = [rng.choice(sentences) for _ in range(around[0])]
        after = [rng.choice(sentences) for _ in range(around[1])]
        passage = [*before, fact, *after]
        passage.insert(rng.randrange(len(passage) + 1), fact_template.format(**others))
        context = " ".join(passage)
        answer = values[slot]
        start = context.index(fact) + fact.index(answer)
        rows.append(
            {
                "id": f"q{seed}-{index}",
                "question": question_template.format(**values),
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return rows


def nested_squad(rows: list[dict]) -> dict:
    """The official SQuAD json of flat rows: one paragraph per context, answers as a list of objects."""
    paragraphs = []
    for row in rows:
        answers = [
            {"text": text, "answer_start": start}
            for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True)
        ]
        qa = {"id": row["id"], "question": row["question"], "answers": answers}
        paragraphs.append({"context": row["context"], "qas": [qa]})
    return {"version": "1.1", "data": [{"title": "fixture", "paragraphs": paragraphs}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def words_of(texts: list[str]) -> list[str]:
    """The words BERT's uncased pre-tokenisation makes of `texts`, in first-seen order."""
    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    seen = {}
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            seen.setdefault(word, None)
    return list(seen)


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    """A tiny BERT whose vocabulary holds every word of the fixture rows, its tokenizer, and the data files."""
    root = tmp_path_factory.mktemp("qa")
    sentences = bbc_sentences()
    train = squad_rows(24, seed=0, sentences=sentences, around=TRAIN_SENTENCES)
    short = [sentence for sentence in sentences if len(sentence.split()) <= 12]
    validation = squad_rows(9, seed=1, sentences=short, around=EVAL_SENTENCES)
    texts = [row[key] for row in train + validation for key in ("question", "context")]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + words_of(texts))}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=64)
    save_tiny_pretrained_bert(root / "tiny_bert", tokenizer, hidden_size=24)
    (root / "train.json").write_text(json.dumps(nested_squad(train)))
    return {
        "root": root,
        "model": root / "tiny_bert",
        "tokenizer": tokenizer,
        "sentences": sentences,
        "train_rows": train,
        "validation_rows": validation,
        "train": root / "train.json",
        "validation": write_jsonl(root / "validation.jsonl", validation),
    }


def qa_argv(qa, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--task", "question-answering",
        "--model_name_or_path", str(qa["model"]),
        "--train_file", str(qa["train"]),
        "--validation_file", str(qa["validation"]),
        "--max_seq_length", str(MAX_SEQ_LENGTH),
        "--doc_stride", "12",
        "--output_dir", str(output_dir),
        "--max_steps", "3",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3",
        "--save_strategy", "no",
        "--profile_sequences", "8",
        "--seed", "0",
        "--no_baseline",
        *extra,
    ]  # fmt: skip


def as_batch(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in ("id", "question", "context", "answers")}


def test_features_label_the_answer_where_their_window_holds_it(qa):
    """run_qa's features: a long context is cut into windows of r = max_length - 3 - question tokens context tokens,
    each starting r - stride tokens after the previous one; a window holding the whole answer is labelled with its
    first and last tokens, whose characters are the answer, any other with [CLS] (index 0)."""
    tokenizer, max_length, stride = qa["tokenizer"], 32, 5
    rows = squad_rows(12, seed=5, sentences=qa["sentences"], around=(2, 2))
    # An answer ending the context: the last token of the last window (run_qa's search runs past it into [SEP]).
    last = dict(rows[0], id="at-the-end", context=rows[0]["context"] + " Born in Oslo")
    rows.append(dict(last, answers={"text": ["Oslo"], "answer_start": [len(last["context"]) - len("Oslo")]}))
    features = tokenize_examples(as_batch(rows), tokenizer, max_length, stride)

    labelled, outside = set(), 0
    feature = 0
    for row in rows:
        question_tokens = len(tokenizer(row["question"], add_special_tokens=False)["input_ids"])
        context_offsets = tokenizer(row["context"], add_special_tokens=False, return_offsets_mapping=True)
        context_offsets = [tuple(offset) for offset in context_offsets["offset_mapping"]]
        room = max_length - 3 - question_tokens
        windows = 1 + math.ceil(max(0, len(context_offsets) - room) / (room - stride))
        assert features["example_id"][feature : feature + windows] == [row["id"]] * windows
        assert (
            feature + windows == len(features["example_id"]) or features["example_id"][feature + windows] != row["id"]
        )
        answer_start = row["answers"]["answer_start"][0]
        answer_end = answer_start + len(row["answers"]["text"][0])
        for window in range(windows):
            offsets = features["offset_mapping"][feature]
            in_context = [tuple(offset) for offset in offsets if offset is not None]
            first = window * (room - stride)
            assert in_context == context_offsets[first : first + room]
            start, end = features["start_positions"][feature], features["end_positions"][feature]
            if in_context[0][0] <= answer_start and answer_end <= in_context[-1][1]:
                assert offsets[start] is not None and offsets[end] is not None
                assert row["context"][offsets[start][0] : offsets[end][1]] == row["answers"]["text"][0]
                labelled.add(row["id"])
            else:
                assert start == end == 0 and features["input_ids"][feature][0] == tokenizer.cls_token_id
                outside += 1
            feature += 1
    assert feature == len(features["example_id"])
    assert labelled == {row["id"] for row in rows}, "every answer lies whole in at least one window"
    assert outside > 0, "some windows miss the answer"


def hand_feature(context: str, words: list[str], question_tokens: int = 2) -> list:
    """The offset mapping of a feature: [CLS], `question_tokens` question tokens, each of `words` (found in order in
    `context`), [SEP]; None outside the context."""
    offsets, position = [None] * (1 + question_tokens), 0
    for word in words:
        position = context.index(word, position)
        offsets.append((position, position + len(word)))
        position += len(word)
    return [*offsets, None]


def logits_for(length: int, values: dict[int, float]) -> np.ndarray:
    """Logits of -10 (never part of a best span here) but at `values`' positions."""
    logits = np.full(length, -10.0, dtype=np.float32)
    for position, value in values.items():
        logits[position] = value
    return logits


def test_post_processing_takes_the_best_span_over_all_features():
    context = "alpha beta gamma delta epsilon zeta eta theta"
    # Two windows of the context; positions 1, 2 are question tokens, the context starts at position 3.
    first = hand_feature(context, ["alpha", "beta", "gamma", "delta", "epsilon"])
    second = hand_feature(context, ["delta", "epsilon", "zeta", "eta", "theta"])
    width = 12  # the Trainer pads shorter batches' logits: positions past a feature's length are padding
    # window 1: "beta gamma" scores 2 + 2, "delta" 6 - 1; the question token (9) and "delta .. alpha" (6 + 7, the
    # end before the start) score higher but are no answers. Window 2: "zeta eta" scores 3 + 3.5, the best; its
    # padding position 10 scores highest of all and is ignored.
    starts = np.stack([logits_for(width, {1: 9.0, 4: 2.0, 6: 6.0}), logits_for(width, {5: 3.0, 10: 50.0})])
    ends = np.stack([logits_for(width, {3: 7.0, 5: 2.0, 6: -1.0}), logits_for(width, {6: 3.5, 10: 50.0})])
    features = [{"example_id": "a", "offset_mapping": first}, {"example_id": "a", "offset_mapping": second}]
    examples = [{"id": "a", "context": context}]
    assert predicted_answers(examples, features, starts, ends, 20, 30) == {"a": "zeta eta"}
    # spans of one token: window 1's "delta" (5) beats window 2's best single token (3 - 10)
    assert predicted_answers(examples, features, starts, ends, 20, 1) == {"a": "delta"}
    # n_best_size=1 pairs each window's top start with its top end only: window 2's padding takes no place
    assert predicted_answers(examples, features, starts, ends, 1, 30) == {"a": "zeta eta"}
    # window 1 alone: its 2 best starts (question token, "delta") and ends ("alpha", "gamma") make no valid span;
    # its 3 best add the start "beta" and the end "delta": "delta" (6 - 1) beats "beta gamma" (2 + 2)
    assert predicted_answers(examples, features[:1], starts, ends, 2, 30) == {"a": ""}
    assert predicted_answers(examples, features[:1], starts, ends, 3, 30) == {"a": "delta"}
    # equal scores: the earlier window wins, as in utils_qa
    tied = np.stack([logits_for(width, {4: 1.0}), logits_for(width, {3: 1.0})])
    assert predicted_answers(examples, features, tied, tied, 20, 30) == {"a": "beta"}


def test_squad_scores_on_hand_cases():
    """Exact match and F1 of the answers the logits pick, against every reference answer (SQuAD v1.1 rules: case,
    punctuation and articles ignored; the best reference counts)."""
    contexts = {
        "paris": "The Eiffel Tower in Paris opened in 1889.",
        "bridge": "The bridge cost 75 million pounds in total.",
        "miss": "Tom Baxter was born in Oslo.",
    }
    words = {key: re.findall(r"\w+", context) for key, context in contexts.items()}
    # predicted word spans (first, last word) and the reference answers
    cases = {
        "paris": ((0, 2), ["Eiffel Tower", "the tower"]),  # "The Eiffel Tower": exact after normalisation
        "bridge": ((3, 5), ["cost 75 million"]),  # "75 million pounds": 2 of 3 words shared both ways
        "miss": ((0, 1), ["Oslo"]),  # "Tom Baxter": nothing shared
    }
    examples, features, starts, ends = [], [], [], []
    for key, ((first, last), answers) in cases.items():
        context = contexts[key]
        examples.append(
            {"id": key, "context": context, "answers": {"text": answers, "answer_start": [0] * len(answers)}}
        )
        features.append({"example_id": key, "offset_mapping": hand_feature(context, words[key])})
        starts.append(logits_for(16, {3 + first: 5.0}))
        ends.append(logits_for(16, {3 + last: 5.0}))
    links = EvaluationLinks(
        examples=Dataset.from_list(examples),
        features=Dataset.from_list(features),
        n_best_size=20,
        max_answer_length=30,
    )
    f1_bridge = 2 * (2 / 3) * (2 / 3) / (2 / 3 + 2 / 3)
    expected = {"exact_match": 100 * 1 / 3, "f1": 100 * (1 + f1_bridge + 0) / 3}
    scores = squad_scores(links, np.stack(starts), np.stack(ends))
    assert scores == pytest.approx(expected)
    # the Trainer's compute_metrics gives the same from its EvalPrediction (labels are the start/end positions)
    compute = TASK.compute_metrics(TaskData(train=None, evaluation=None, dataset_label="x", metric_inputs=links))
    labels = (np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64))
    assert compute(EvalPrediction(predictions=(np.stack(starts), np.stack(ends)), label_ids=labels)) == scores


def load_examples(qa, tmp_path, train_file: Path, validation_file: Path, *extra: str):
    files = ["--train_file", str(train_file), "--validation_file", str(validation_file)]
    lengths = ["--max_seq_length", str(MAX_SEQ_LENGTH), "--doc_stride", "12"]
    args = parse_arguments(["--task", "question-answering", *files, *lengths, "--output_dir", str(tmp_path), *extra])
    data = TASK.load_data(args, None, None)
    return data.train.to_list(), data.evaluation.to_list()


def test_the_nested_squad_json_and_flat_files_give_the_same_examples(qa, tmp_path):
    train_rows = qa["train_rows"][:5]
    validation_rows = [dict(qa["validation_rows"][0], id="two-answers")]
    context = validation_rows[0]["context"]
    answer = validation_rows[0]["answers"]["text"][0]
    validation_rows[0]["answers"] = {"text": [answer, answer[1:]], "answer_start": [context.index(answer)] * 2}
    validation_rows[0]["answers"]["answer_start"][1] += 1
    (tmp_path / "train.json").write_text(json.dumps(nested_squad(train_rows)))
    (tmp_path / "dev.json").write_text(json.dumps(nested_squad(validation_rows)))
    expected_train = [dict(row, question=row["question"].strip()) for row in train_rows]
    assert load_examples(qa, tmp_path, tmp_path / "train.json", tmp_path / "dev.json") == (
        expected_train,
        validation_rows,
    )
    # the flat format of the Hub's squad, as json lines and as parquet; answers also as a list of objects
    flat_train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    flat_validation = write_jsonl(tmp_path / "dev.jsonl", validation_rows)
    assert load_examples(qa, tmp_path, flat_train, flat_validation) == (expected_train, validation_rows)
    Dataset.from_list(train_rows).to_parquet(tmp_path / "train.parquet")
    Dataset.from_list(validation_rows).to_parquet(tmp_path / "dev.parquet")
    assert load_examples(qa, tmp_path, tmp_path / "train.parquet", tmp_path / "dev.parquet") == (
        expected_train,
        validation_rows,
    )
    listed = [
        dict(row, answers=nested_squad([row])["data"][0]["paragraphs"][0]["qas"][0]["answers"]) for row in train_rows
    ]
    assert load_examples(qa, tmp_path, write_jsonl(tmp_path / "listed.jsonl", listed), flat_train)[0] == expected_train
    # other column names
    renamed = [{"id": r["id"], "q": r["question"], "passage": r["context"], "gold": r["answers"]} for r in train_rows]
    renamed_file = write_jsonl(tmp_path / "renamed.jsonl", renamed)
    options = ["--question_column", "q", "--context_column", "passage", "--answer_column", "gold"]
    assert load_examples(qa, tmp_path, renamed_file, renamed_file, *options)[0] == expected_train


def bad_rows(qa, case: str) -> list[dict]:
    """Fixture rows with one problem (`case`) in the row with id "bad"."""
    rows = [dict(row) for row in qa["train_rows"][:4]]
    bad = rows[2] = dict(rows[2], id="bad")
    text, start = bad["answers"]["text"][0], bad["answers"]["answer_start"][0]
    if case == "moved_answer":
        bad["answers"] = {"text": [text], "answer_start": [start + 2]}
    elif case == "answer_past_the_context":
        bad["answers"] = {"text": [text], "answer_start": [len(bad["context"]) - 2]}
    elif case == "negative_start":
        bad["answers"] = {"text": [text], "answer_start": [-1]}
    elif case == "unanswerable":
        bad["answers"] = {"text": [], "answer_start": []}
    elif case == "empty_answer":
        bad["answers"] = {"text": [""], "answer_start": [0]}
    elif case == "empty_question":
        bad["question"] = "   "
    elif case == "empty_context":
        bad["context"] = ""
    elif case == "duplicate_id":
        rows[3] = dict(rows[3], id="bad")
    elif case == "long_question":
        bad["question"] = " ".join(["where"] * 70)
    elif case == "question_leaves_little_room":
        bad["question"] = " ".join(["where"] * 30)
    return rows


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "missing_column",
            r"column\(s\) \['query'\] not found in the train data; its columns are \['id', 'title', 'context'",
        ),
        (
            "moved_answer",
            r"the answer '.+' of example 'bad' of the train data does not occur in its context at answer_start=\d+ "
            r"\(the context reads '.+' there; it occurs at character \d+\)",
        ),
        (
            "answer_past_the_context",
            r"the answer '.+' of example 'bad' of the train data at answer_start=\d+ lies "
            r"outside its context \(\d+ characters\)",
        ),
        ("negative_start", r"answer_start=-1 lies outside its context"),
        ("unanswerable", r"example 'bad' of the train data has no answer; .*SQuAD v2, are not supported"),
        ("empty_answer", r"example 'bad' of the train data has an empty answer text"),
        ("empty_question", r"example 'bad' of the train data has an empty question"),
        ("empty_context", r"example 'bad' of the train data has an empty context"),
        ("duplicate_id", r"the id 'bad' occurs twice in the train data"),
        ("csv_answers", r"the answers column of example 'q0-0' of the train data holds str .*csv files cannot hold"),
        ("stride_too_long", r"doc_stride=64 must be >= 0 and smaller than max_seq_length=64"),
        (
            "long_question",
            r"the question of example 'bad' of the train data takes 70 tokens: with the special tokens no context "
            r"fits in max_seq_length=64",
        ),
        (
            "question_leaves_little_room",
            r"the question of example 'bad' of the train data takes 30 tokens, leaving 31 of max_seq_length=64 for "
            r"the context: not more than doc_stride=40",
        ),
        ("longer_than_the_model", r"max_seq_length=96 exceeds the model's 64 positions"),
        ("three_labels", r"num_labels=3 does not fit question answering"),
    ],
)
def test_bad_input_stops_before_training(qa, tmp_path, capsys, case, message):
    output_dir = tmp_path / "out"
    argv = qa_argv(qa, output_dir)
    if case == "missing_column":
        argv += ["--question_column", "query"]
    elif case == "csv_answers":
        bad_file = tmp_path / "bad.csv"
        rows = [dict(row, answers=json.dumps(row["answers"])) for row in qa["train_rows"][:3]]
        Dataset.from_list(rows).to_csv(bad_file)
        argv += ["--train_file", str(bad_file), "--validation_file", str(bad_file)]
    elif case == "stride_too_long":
        argv += ["--doc_stride", "64"]
    elif case == "question_leaves_little_room":
        argv += ["--train_file", str(write_jsonl(tmp_path / "bad.jsonl", bad_rows(qa, case))), "--doc_stride", "40"]
    elif case == "longer_than_the_model":
        argv += ["--max_seq_length", "96"]
    elif case == "three_labels":
        argv += ["--num_labels", "3"]
    else:
        argv += ["--train_file", str(write_jsonl(tmp_path / "bad.jsonl", bad_rows(qa, case)))]
    with pytest.raises(UsageError) as raised:
        main(argv)
    assert raised.value.code == 2
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("finetune.py: error: ")]
    assert len(lines) == 1 and re.search(message, lines[0]), error
    assert not output_dir.exists()


def test_run_exports_a_model_whose_pipeline_gives_the_evaluated_answers(qa, tmp_path, capsys):
    """A corrected run beside its stock baseline: both are evaluated with exact match and F1 and compared; the
    export's card is a question-answering card, and its pipeline gives exactly the answers the evaluation scored."""
    output_dir = tmp_path / "run"
    argv = [arg for arg in qa_argv(qa, output_dir) if arg != "--no_baseline"]
    metrics = main([*argv, "--correction", "centered", "--correction_strength", "learned"])
    assert 0 <= metrics["eval_exact_match"] <= 100 and 0 <= metrics["eval_f1"] <= 100 and "eval_loss" in metrics
    printed = capsys.readouterr().out
    assert re.search(r"stock, same setup +[\d.]+ +[\d.]+", printed) and "exact match" in printed

    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForQuestionAnswering"].endswith("CenteredBertForQuestionAnswering")
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: question-answering" in card
    for name in ("exact_match", "f1"):
        assert f"type: {name}" in card and f"{metrics[f'eval_{name}']:.4f}" in card
    assert "doc_stride" in card and "max_answer_length" in card
    profile = json.loads((output_dir / "oversmoothing_profile.json").read_text())
    assert profile["num_sequences"] == 8

    impl = "pipeline_question_answering.ExtractiveQuestionAnsweringPipeline"
    assert config["custom_pipelines"]["question-answering"]["impl"] == impl
    rows = qa["validation_rows"]
    tokenizer = qa["tokenizer"]
    fits = [len(tokenizer(row["question"], row["context"])["input_ids"]) <= MAX_SEQ_LENGTH for row in rows]
    assert all(fits), "each evaluation passage is one feature, where pipeline and evaluation rank spans alike"
    answerer = pipeline("question-answering", model=str(output_dir), trust_remote_code=True)
    limits = {"max_seq_len": MAX_SEQ_LENGTH, "doc_stride": 12, "max_answer_len": 30}
    answers = [answerer(question=row["question"], context=row["context"], **limits)["answer"] for row in rows]
    for answer, row in zip(answers, rows, strict=True):
        assert answer and answer in row["context"]
    scores = load_metric("squad").compute(
        predictions=[{"id": row["id"], "prediction_text": answer} for row, answer in zip(rows, answers, strict=True)],
        references=[{"id": row["id"], "answers": row["answers"]} for row in rows],
    )
    assert scores["exact_match"] == pytest.approx(metrics["eval_exact_match"])
    assert scores["f1"] == pytest.approx(metrics["eval_f1"])

    # Passages of several windows, asked together: the pipeline ranks the spans of all windows as the evaluation's
    # post-processing does on the same model's logits; top_k gives the best spans with softmax scores.
    long_rows = qa["train_rows"][:3]
    features = tokenize_examples(as_batch(long_rows), tokenizer, MAX_SEQ_LENGTH, 12)
    assert len(features["example_id"]) > len(long_rows)
    model = CenteredBertForQuestionAnswering.from_pretrained(output_dir).eval()
    starts, ends = [], []
    with torch.no_grad():
        for index in range(len(features["example_id"])):
            inputs = {name: torch.tensor([features[name][index]]) for name in MODEL_INPUTS}
            outputs = model(**inputs)
            starts.append(outputs.start_logits[0].numpy())
            ends.append(outputs.end_logits[0].numpy())
    links = [
        {"example_id": example_id, "offset_mapping": offsets}
        for example_id, offsets in zip(features["example_id"], features["offset_mapping"], strict=True)
    ]
    expected = predicted_answers(long_rows, links, starts, ends, 20, 30)
    questions, contexts = [row["question"] for row in long_rows], [row["context"] for row in long_rows]
    together = answerer(question=questions, context=contexts, **limits)
    assert [answer["answer"] for answer in together] == [expected[row["id"]] for row in long_rows]
    batched = answerer(question=questions, context=contexts, batch_size=2, **limits)  # padded features
    assert [answer["answer"] for answer in batched] == [answer["answer"] for answer in together]
    assert [answer["score"] for answer in batched] == pytest.approx([answer["score"] for answer in together])
    best = answerer(question=questions[0], context=contexts[0], top_k=3, **limits)
    assert best[0] == together[0] and len(best) == 3
    assert best[0]["score"] >= best[1]["score"] >= best[2]["score"] and sum(a["score"] for a in best) <= 1 + 1e-6
    assert all(answer["answer"] == contexts[0][answer["start"] : answer["end"]] for answer in best)


def test_lora_trains_the_head_and_merges(qa, tmp_path, capsys):
    output_dir = tmp_path / "lora"
    # evaluated on the training questions, whose contexts span several windows each
    main(
        qa_argv(
            qa, output_dir, "--use_lora", "--merge_lora", "--correction", "dgn", "--validation_file", str(qa["train"])
        )
    )
    questions = len(qa["train_rows"])
    features = len(tokenize_examples(as_batch(qa["train_rows"]), qa["tokenizer"], MAX_SEQ_LENGTH, 12)["input_ids"])
    assert features > questions
    assert f"({questions} examples); saved to" in capsys.readouterr().out  # questions, not their windows
    card = (output_dir / "README.md").read_text()
    for split in ("train", "eval"):
        assert f"| {split}_samples | {questions} |" in card and f"| {split}_features | {features} |" in card
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "QUESTION_ANS"
    assert {"qa_outputs", "dgn"} <= set(adapter_config["modules_to_save"])
    merged = CenteredBertForQuestionAnswering.from_pretrained(output_dir)
    assert merged.config.correction == "dgn" and merged.qa_outputs.out_features == 2
    assert "pipeline_tag: question-answering" in (output_dir / "README.md").read_text()
