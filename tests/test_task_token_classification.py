"""--task token-classification: sub-word alignment, CoNLL and table files, bad input, seqeval scores, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import save_tiny_pretrained_bert
from datasets import ClassLabel, Dataset, Features, List, Value
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertTokenizer,
    ByT5Tokenizer,
    EvalPrediction,
    pipeline,
)

from hf_centered.data import wnut16
from hf_centered.finetuning import main, parse_arguments
from hf_centered.tasks import TASKS, UsageError
from hf_centered.tasks.base import IGNORED_LABEL
from hf_centered.tasks.token_classification import (
    align_labels,
    inside_tags,
    read_conll,
    tokenize_and_align,
)

TASK = TASKS["token-classification"]
REPO_ROOT = Path(__file__).resolve().parent.parent
WORDS = ["john", "##son", "lives", "in", "paris", "york", "##shire", "mary", "works", "at", "acme", "corp", "visited"]
WORDS += ["london", "new", "the", "city", "."]
SENTENCES = [
    ("Johnson lives in Paris .", "B-PER O O B-LOC O"),
    ("Mary works at Acme Corp .", "B-PER O O B-ORG I-ORG O"),
    ("Mary visited New York .", "B-PER O B-LOC I-LOC O"),
    ("John Johnson visited London .", "B-PER I-PER O B-LOC O"),
    ("Acme Corp lives in Yorkshire .", "B-ORG I-ORG O O B-LOC O"),
    ("John works in the city .", "B-PER O O O O O"),
]
# sorted tag names, as numbered for name tags
TAGS = ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
TAG_IDS = {name: i for i, name in enumerate(TAGS)}


def ids_of(*tags: str | None) -> list[int]:
    """Token labels written as tag names, None for an ignored position."""
    return [IGNORED_LABEL if tag is None else TAG_IDS[tag] for tag in tags]


def write_conll(path: Path, sentences: list[tuple[str, str]], docstart: bool = True) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for words, tags in sentences:
        lines += [f"{word} NNP\t{tag}" for word, tag in zip(words.split(), tags.split(), strict=True)] + [""]
    path.write_text("\n".join(lines))
    return path


def write_json_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows_of(sentences: list[tuple[str, str]]) -> list[dict]:
    return [{"tokens": words.split(), "tags": tags.split()} for words, tags in sentences]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """A tiny pretrained BERT whose vocabulary splits Johnson and Yorkshire in two, and CoNLL train/validation files."""
    root = tmp_path_factory.mktemp("token_assets")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    save_tiny_pretrained_bert(root / "tiny_bert", BertTokenizer(vocab=vocab))
    return SimpleNamespace(
        root=root,
        model=root / "tiny_bert",
        train=write_conll(root / "train.conll", SENTENCES * 3),
        val=write_conll(root / "validation.conll", SENTENCES[:4], docstart=False),
    )


def token_argv(assets, output_dir: Path, *extra: str, train=None, val=None) -> list[str]:
    return [
        "--task", "token-classification",
        "--model_name_or_path", str(assets.model),
        "--train_file", str(train or assets.train),
        *(["--validation_file", str(val or assets.val)] if val is not False else []),
        "--output_dir", str(output_dir),
        "--max_steps", "3",
        "--per_device_train_batch_size", "4",
        "--save_strategy", "no",
        "--profile_sequences", "8",
        "--seed", "0",
        "--no_baseline",
        *extra,
    ]  # fmt: skip


def load(argv: list[str], tokenizer=None):
    """The task's data for `argv` (tokenised when a tokenizer is given)."""
    return TASK.load_data(parse_arguments(argv), None, tokenizer)


def tag_rows(dataset: Dataset, label_names: list[str]) -> list[list[str]]:
    return [[label_names[tag] for tag in row] for row in dataset["tags"]]


# alignment


def test_first_sub_word_alignment_by_hand(assets):
    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    words, tags = ["Johnson", "lives", "in", "Yorkshire", "."], ["B-PER", "O", "O", "B-LOC", "O"]
    encoding = tokenizer([words], is_split_into_words=True)
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"][0])
    assert pieces == ["[CLS]", "john", "##son", "lives", "in", "york", "##shire", ".", "[SEP]"]
    tag_ids = [TAG_IDS[tag] for tag in tags]
    first = align_labels(encoding.word_ids(0), tag_ids)
    assert first == ids_of(None, "B-PER", None, "O", "O", "B-LOC", None, "O", None)
    # every sub-word: B-X's continuation becomes I-X (the tag set has I-PER and I-LOC)
    every = align_labels(encoding.word_ids(0), tag_ids, inside_tags(TAGS))
    assert every == ids_of(None, "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", None)
    # without an I-LOC in the tag set, a continuation of B-LOC keeps B-LOC (run_ner's b_to_i_label)
    no_inside = ["B-LOC", "B-PER", "I-PER", "O"]
    ids = [no_inside.index(tag) for tag in tags]
    assert align_labels(encoding.word_ids(0), ids, inside_tags(no_inside)) == [-100, 1, 2, 3, 3, 0, 0, 3, -100]
    assert inside_tags(no_inside) == [0, 2, 2, 3]


def test_label_all_tokens_trains_every_sub_word_but_evaluates_first_ones(assets, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    sentence = [("Johnson lives in Yorkshire .", "B-PER O O B-LOC O")]
    train = write_conll(tmp_path / "train.conll", [*SENTENCES, *sentence])
    val = write_conll(tmp_path / "val.conll", sentence)
    argv = token_argv(assets, tmp_path / "out", "--label_all_tokens", "true", train=train, val=val)
    data = load(argv, tokenizer)
    assert data.label_names == TAGS
    assert data.train[len(SENTENCES)]["labels"] == ids_of(None, "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", None)
    assert data.evaluation[0]["labels"] == ids_of(None, "B-PER", None, "O", "O", "B-LOC", None, "O", None)
    assert set(data.evaluation.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_truncation_keeps_labels_aligned(assets):
    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    dataset = Dataset.from_dict({"tokens": [["Johnson", "lives", "in", "Yorkshire"]], "tags": [[2, 6, 6, 0]]})
    aligned = tokenize_and_align(dataset, tokenizer, max_length=5, inside_of=None)
    assert aligned[0]["input_ids"] == tokenizer.convert_tokens_to_ids(["[CLS]", "john", "##son", "lives", "[SEP]"])
    assert aligned[0]["labels"] == [-100, 2, -100, 6, -100]


# reading the data


def test_read_conll(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\n\n\n"  # CRLF, and two blank lines between sentences
        "-DOCSTART- -X- -X- O\n"
        "Peter\tB-PER\nBlackburn\tI-PER\n"
        "-DOCSTART- -X- -X- O\n"  # a document start also ends a sentence
        "#  O\n"  # CoNLL-2000 has a token '#'
        "1.8 CD I-NP O"  # no newline at the end
    )
    path = tmp_path / "data.conll"
    path.write_bytes(text.encode())
    tokens, tags = read_conll(str(path))
    assert tokens == [["EU", "rejects"], ["Peter", "Blackburn"], ["#", "1.8"]]
    assert tags == [["B-ORG", "O"], ["B-PER", "I-PER"], ["O", "O"]]


def test_every_format_reads_the_same_sentences(assets, tmp_path):
    """CoNLL, csv of space-separated cells, jsonl of lists, csv of numeric ids with --tag_names, and parquet of
    ClassLabel ids: the same words and tags."""
    train, val = SENTENCES, SENTENCES[:2]
    base = ["--model_name_or_path", str(assets.model), "--output_dir", str(tmp_path / "out")]
    expected = [row["tags"] for row in rows_of(train)]
    runs = {"conll": [*base, "--train_file", str(assets.train)]}

    with open(tmp_path / "train.csv", "w") as handle:
        handle.write("words,labels\n" + "".join(f"{w},{t}\n" for w, t in train))
    with open(tmp_path / "val.csv", "w") as handle:
        handle.write("words,labels\n" + "".join(f"{w},{t}\n" for w, t in val))
    columns = ["--tokens_column", "words", "--tags_column", "labels"]
    runs["csv"] = [*base, "--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "val.csv")]
    runs["csv"] += columns

    runs["jsonl"] = [*base, "--train_file", str(write_json_lines(tmp_path / "train.jsonl", rows_of(train)))]
    runs["jsonl"] += ["--validation_file", str(write_json_lines(tmp_path / "val.jsonl", rows_of(val)))]

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for split, sentences in (("train", train), ("val", val)):
        with open(tmp_path / f"{split}-ids.csv", "w") as handle:
            handle.write("tokens,tags\n")
            for words, tags in sentences:
                handle.write(f"{words},{' '.join(str(names.index(tag)) for tag in tags.split())}\n")
        features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=names))})
        rows = [{"tokens": row["tokens"], "tags": [names.index(t) for t in row["tags"]]} for row in rows_of(sentences)]
        Dataset.from_list(rows, features=features).to_parquet(tmp_path / f"{split}.parquet")
    runs["csv ids"] = [*base, "--train_file", str(tmp_path / "train-ids.csv")]
    runs["csv ids"] += ["--validation_file", str(tmp_path / "val-ids.csv"), "--tag_names", *names]
    runs["parquet ClassLabel"] = [*base, "--train_file", str(tmp_path / "train.parquet")]
    runs["parquet ClassLabel"] += ["--validation_file", str(tmp_path / "val.parquet")]

    for kind, argv in runs.items():
        data = load(["--task", "token-classification", *argv])
        assert data.label_names == (names if kind in ("csv ids", "parquet ClassLabel") else TAGS), kind
        train_rows = tag_rows(data.train, data.label_names)
        if kind == "conll":  # three copies of the sentences, no validation file: 20% held out
            assert len(data.train) + len(data.evaluation) == 3 * len(SENTENCES)
            continue
        assert train_rows == expected, kind
        assert data.train["tokens"] == [row["tokens"] for row in rows_of(train)], kind
        assert tag_rows(data.evaluation, data.label_names) == expected[:2], kind


def test_builtin_wnut16():
    tokens, tags = wnut16()
    assert (len(tokens), sum(map(len, tokens))) == (2394, 46469)
    assert all(len(words) == len(row) for words, row in zip(tokens, tags, strict=True))
    names = sorted({tag for row in tags for tag in row})
    assert len(names) == 21 and names[-1] == "O" and "B-geo-loc" in names
    data = load(["--task", "token-classification", "--dataset_name", "wnut16", "--output_dir", "unused"])
    assert (len(data.train), len(data.evaluation)) == (1915, 479)  # validation_split_fraction 0.2
    assert data.label_names == names
    assert data.dataset_label == "wnut16"


# bad input: one line, exit code 2, nothing written


BAD_INPUTS = {
    "missing column": (
        {"train.jsonl": [{"words": ["a"], "tags": ["O"]}]},
        [],
        "column(s) ['tokens'] not found in the train data; its columns are ['words', 'tags']",
    ),
    "tag unseen in training": (
        {"train.jsonl": rows_of(SENTENCES), "val.jsonl": [{"tokens": ["Mary"], "tags": ["B-MISC"]}]},
        [],
        "tag(s) ['B-MISC'] of the evaluation data never occur in the training data",
    ),
    "length mismatch": (
        {
            "train.jsonl": rows_of(SENTENCES),
            "val.jsonl": [*rows_of(SENTENCES[:2]), {"tokens": ["a", "b"], "tags": ["O"]}],
        },
        [],
        "row 2 of the validation data has 2 tokens but 1 tags; every token needs exactly one tag",
    ),
    "empty sentence": (
        {"train.jsonl": [*rows_of(SENTENCES), {"tokens": [], "tags": []}]},
        [],
        "row 6 of the train data is an empty sentence (no tokens); remove it",
    ),
    "id out of range": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": [1, 0]}, {"tokens": ["Mary"], "tags": [3]}]},
        ["--tag_names", "O", "B-PER", "I-PER"],
        "row 1 of the train data has tag id(s) [3] outside 0..2 (3 tag names)",
    ),
    "ids without names": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": [1, 0]}]},
        [],
        "the tags are integer ids without names; name them with --tag_names",
    ),
    "names and ids mixed": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": ["B-PER", 0]}]},
        [],
        "tags must be all names or all integer ids, got a mix of int, str",
    ),
    "tag_names for name tags": (
        {"train.jsonl": rows_of(SENTENCES)},
        ["--tag_names", "O", "B-PER"],
        "--tag_names names integer tag ids, but the tags of these data are names already",
    ),
    "POS tags": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": ["NNP", "VBZ"]}]},
        [],
        "tag(s) ['NNP', 'VBZ'] are not entity tags seqeval reads",
    ),
    "types without prefix": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": ["PER", "O"]}]},
        [],
        "tag(s) ['PER'] are not entity tags seqeval reads",
    ),
    "BILOU": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": ["U-PER", "O"]}]},
        [],
        "tag(s) ['U-PER'] are not entity tags seqeval reads",
    ),
    "single tag": (
        {"train.jsonl": [{"tokens": ["John", "lives"], "tags": ["O", "O"]}]},
        [],
        "the data hold a single tag ('O'); token classification needs at least two",
    ),
    "num_labels": (
        {"train.jsonl": rows_of(SENTENCES)},
        ["--num_labels", "3"],
        "num_labels=3 does not match the data, which have 7 tags",
    ),
    "CoNLL line without tag": (
        {"train.conll": "John B-PER\nlives\n"},
        [],
        "train.conll line 2 ('lives') has no tag",
    ),
    "CoNLL with a table": (
        {"train.conll": "John B-PER\nlives O\n", "val.jsonl": rows_of(SENTENCES)},
        [],
        "the training file is a CoNLL file but the validation file a table; give both in one format",
    ),
    "unsupported extension": (
        {"train.tsv": "John\tB-PER\n"},
        [],
        "unsupported train file type .tsv; use .conll, .txt, .iob, .csv, .json, .jsonl, .parquet",
    ),
    "same column twice": (
        {"train.jsonl": rows_of(SENTENCES)},
        ["--tags_column", "tokens"],
        "tokens_column and tags_column are both 'tokens'; name two different columns",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_before_anything_is_written(assets, tmp_path, capsys, case):
    files, extra, message = BAD_INPUTS[case]
    paths = {}
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            write_json_lines(path, content)
        paths["val" if name.startswith("val") else "train"] = path
    output_dir = tmp_path / "out"
    argv = token_argv(assets, output_dir, *extra, train=paths["train"], val=paths.get("val", paths["train"]))
    with pytest.raises(UsageError) as raised:
        main(argv)
    assert raised.value.code == 2
    assert message in raised.value.message
    # the one line, after the datasets library's progress bars if it read files
    assert capsys.readouterr().err.splitlines()[-1] == f"finetune.py: {raised.value}"
    assert not output_dir.exists()


def test_too_few_sentences_to_hold_out_a_validation_share(assets, tmp_path):
    train = write_conll(tmp_path / "train.conll", SENTENCES[:1])
    with pytest.raises(UsageError, match=r"validation_split_fraction=0.2 of 1 sentence\(s\) leaves none to train on"):
        main(token_argv(assets, tmp_path / "out", train=train, val=False))


def test_slow_tokenizer_is_refused(assets, tmp_path):
    ByT5Tokenizer().save_pretrained(tmp_path / "byt5")
    with pytest.raises(UsageError, match=r"needs a fast tokenizer .* ByT5Tokenizer is a slow one"):
        main(token_argv(assets, tmp_path / "out", "--tokenizer_name", str(tmp_path / "byt5")))


def test_options_of_this_task_are_refused_for_another(assets, tmp_path):
    with pytest.raises(UsageError, match="--label_all_tokens is an option of --task token-classification"):
        parse_arguments(["--dataset_name", "rotten_tomatoes", "--label_all_tokens", "true"])


def test_unknown_hub_dataset_is_one_line(assets, tmp_path):
    argv = ["--task", "token-classification", "--model_name_or_path", str(assets.model)]
    with pytest.raises(UsageError, match=r"unknown dataset 'no-such/ner-set': not a built-in dataset of this task \("):
        main([*argv, "--dataset_name", "no-such/ner-set", "--output_dir", str(tmp_path / "out"), "--no_baseline"])


# metrics


def test_seqeval_scores_against_a_hand_computed_case():
    names = ["B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O"]
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"], ["O", "B-PER"]]
    predictions = [["B-PER", "I-PER", "B-LOC", "O"], ["B-LOC", "B-ORG", "O"], ["O", "I-PER"]]
    # Entities (type, span). Reference: PER 0-1, LOC 3 | ORG 1-2 | PER 1  -> 4.
    # Predicted: PER 0-1, LOC 2 | LOC 0, ORG 1 | PER 1 (conlleval: I- after O starts an entity) -> 5.
    # Right: PER 0-1 of sentence 1 and PER 1 of sentence 3 -> 2.  Words tagged right: 2 + 1 + 1 of 9.
    precision, recall = 2 / 5, 2 / 4
    expected = {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "accuracy": 4 / 9,
    }
    # As the Trainer hands them over: arg-max ids padded to one length, -100 on special tokens, continuation
    # sub-words and padding, whose (arbitrary) predictions must be ignored.
    length = 9  # [CLS] + 4 words each followed by a continuation
    label_ids = np.full((3, length), IGNORED_LABEL)
    predicted_ids = np.full((3, length), names.index("B-ORG"))
    for row, (reference, prediction) in enumerate(zip(references, predictions, strict=True)):
        positions = [1 + 2 * word for word in range(len(reference))]  # every other position: a continuation
        label_ids[row, positions] = [names.index(tag) for tag in reference]
        predicted_ids[row, positions] = [names.index(tag) for tag in prediction]
    data = SimpleNamespace(label_names=names)
    scores = TASK.compute_metrics(data)(EvalPrediction(predictions=predicted_ids, label_ids=label_ids))
    assert scores == pytest.approx(expected, abs=1e-12)
    assert list(scores)[:3] == ["precision", "recall", "f1"]
    logits = torch.randn(2, 3, len(names))
    assert torch.equal(TASK.preprocess_logits_for_metrics()((logits, None), None), logits.argmax(-1))


# end to end


def test_end_to_end_export_and_pipelines(assets, tmp_path):
    output_dir = tmp_path / "out"
    metrics = main(token_argv(assets, output_dir, "--learning_rate", "0.01", "--max_steps", "6"))
    assert set(TASK.metric_names) <= {key.removeprefix("eval_") for key in metrics}

    card = (output_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["pipeline_tag"] == "token-classification"
    results = front["model-index"][0]["results"][0]
    assert results["task"]["type"] == "token-classification"
    assert {metric["type"]: metric["value"] for metric in results["metrics"]} == pytest.approx(
        {name: metrics[f"eval_{name}"] for name in ("f1", "precision", "recall", "accuracy")}
    )
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(TAGS)}

    # The evaluation's scores, recomputed with the seqeval package from the export's own first-sub-word predictions
    model = AutoModelForTokenClassification.from_pretrained(output_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    references, predictions = [], []
    for words, tags in SENTENCES[:4]:
        encoding = tokenizer([words.split()], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            tag_ids = model(**encoding).logits[0].argmax(-1).tolist()
        word_ids = encoding.word_ids(0)
        firsts = [i for i, word in enumerate(word_ids) if word is not None and word != word_ids[i - 1]]
        predictions.append([model.config.id2label[tag_ids[i]] for i in firsts])
        references.append(tags.split())
    recomputed = {
        "precision": precision_score(references, predictions, zero_division=0),
        "recall": recall_score(references, predictions, zero_division=0),
        "f1": f1_score(references, predictions, zero_division=0),
        "accuracy": accuracy_score(references, predictions),
    }
    assert recomputed == pytest.approx({name: metrics[f"eval_{name}"] for name in recomputed}, abs=1e-6)
    assert recomputed["accuracy"] > 0  # learned something, so the comparison is not of two zeros only

    for task in ("token-classification", "ner"):
        tagger = pipeline(task, model=str(output_dir), trust_remote_code=True)
        entities = tagger("Johnson lives in Yorkshire .")
        assert all(entity["entity"] in TAGS and entity["entity"] != "O" for entity in entities)
        assert [entity["index"] for entity in entities] == sorted(entity["index"] for entity in entities)
    grouped = pipeline("ner", model=str(output_dir), trust_remote_code=True, aggregation_strategy="first")
    for entity in grouped("Johnson lives in Yorkshire ."):
        assert entity["entity_group"] in {"LOC", "ORG", "PER"}


def test_lora_with_the_stock_baseline(assets, tmp_path):
    output_dir = tmp_path / "out"
    argv = token_argv(assets, output_dir, "--use_lora", "--merge_lora", "--max_steps", "2")
    argv.remove("--no_baseline")
    metrics = main(argv)
    baseline = json.loads((output_dir / "stock-baseline" / "eval_results.json").read_text())
    assert set(baseline) >= {f"eval_{name}" for name in TASK.metric_names}
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card
    assert f"{metrics['eval_f1']:.4f}" in card and f"{baseline['eval_f1']:.4f}" in card
    model = AutoModelForTokenClassification.from_pretrained(output_dir, trust_remote_code=True)
    assert model.config.num_labels == len(TAGS) and type(model).__name__ == "CenteredBertForTokenClassification"


def test_config_file_runs_on_builtin_data():
    config = yaml.safe_load((REPO_ROOT / "configs" / "token-classification.yaml").read_text())
    assert config["task"] == "token-classification" and config["dataset_name"] in TASK.builtin_datasets
    args = parse_arguments(["--config", str(REPO_ROOT / "configs" / "token-classification.yaml")])
    assert args.task is TASK
