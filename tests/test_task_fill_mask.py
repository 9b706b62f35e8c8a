"""--task fill-mask: masking statistics, whole words, fixed evaluation masks, perplexity, end-to-end runs, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import save_tiny_pretrained_bert
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertTokenizer,
    ByT5Tokenizer,
    PerceiverTokenizer,
    pipeline,
)

from hf_centered import finetuning
from hf_centered.finetuning import main, parse_arguments
from hf_centered.tasks import TASKS, UsageError
from hf_centered.tasks.base import IGNORED_LABEL
from hf_centered.tasks.fill_mask import FillMaskArguments, masking_collator
from hf_centered.tasks.texts import text_corpus

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "movie", "film", "plot", "was", "is", "good", "bad", "great", "dull", "fun", "actor"]
# Words of several WordPiece tokens: play|##ing, play|##ed, un|##believ|##able.
MULTI_PIECE_WORDS = ["playing", "played", "unbelievable"]
VOCAB = [*SPECIAL_TOKENS, *WORDS, "play", "##ing", "##ed", "un", "##believ", "##able", "."]
TINY_ARCHITECTURE = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 23,
    "max_position_embeddings": 40,
}
NORMAL_QUANTILE = 4.0  # seeded draws are compared with their expectation within 4 standard errors


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """A tiny pretrained BertModel (no masked-LM head, like the packaged MiniLM) with a WordPiece tokenizer that splits
    some words into several tokens, and small text data as .txt and .csv files."""
    root = tmp_path_factory.mktemp("fill_mask_assets")
    vocab = {token: i for i, token in enumerate(VOCAB)}
    save_tiny_pretrained_bert(
        root / "tiny_bert", BertTokenizer(vocab=vocab), **{**TINY_ARCHITECTURE, "max_position_embeddings": 48}
    )
    generator = torch.Generator().manual_seed(0)
    words = WORDS + MULTI_PIECE_WORDS

    def sentences(count: int) -> list[str]:
        lengths = torch.randint(3, 12, (count,), generator=generator).tolist()
        return [" ".join(words[int(i)] for i in torch.randint(len(words), (n,), generator=generator)) for n in lengths]

    files = SimpleNamespace(root=root, model=root / "tiny_bert")
    for split, count in (("train", 40), ("validation", 15)):
        texts = sentences(count)
        text_file = root / f"{split}.txt"
        text_file.write_text("\n\n".join(texts) + "\n")  # blank lines between the examples are skipped
        table = root / f"{split}.csv"
        with open(table, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["review", "stars"])
            writer.writerows([text, 3] for text in texts)
        setattr(files, f"{split}_txt", text_file)
        setattr(files, f"{split}_csv", table)
    return files


def run_argv(assets, output_dir: Path, *extra: str, model: tuple[str, ...] | None = None) -> list[str]:
    """A short .txt run of the tiny BERT (or of `model`'s options); `extra` overrides any of it."""
    return [
        "--task", "fill-mask",
        *(model if model is not None else ("--model_name_or_path", str(assets.model))),
        "--train_file", str(assets.train_txt),
        "--validation_file", str(assets.validation_txt),
        "--output_dir", str(output_dir),
        "--max_seq_length", "32",
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-2",
        "--save_strategy", "no",
        "--profile_sequences", "8",
        "--seed", "0",
        "--no_baseline",
        *extra,
    ]  # fmt: skip


def task_data(argv: list[str]):
    """The fill-mask data of a command line, as the runner prepares them."""
    args = parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    tokenizer = finetuning.load_processor(args, config, source)
    return args.task.load_data(args, config, tokenizer), tokenizer


def evaluation_scores(model, evaluation) -> tuple[float, float]:
    """Masked-token accuracy and exp(mean cross-entropy) over the masked tokens of `evaluation`, one row at a time."""
    losses, hits = [], []
    with torch.no_grad():
        for row in evaluation:
            inputs = {name: torch.tensor([row[name]]) for name in ("input_ids", "token_type_ids", "attention_mask")}
            logits = model(**inputs).logits[0].double()
            labels = torch.tensor(row["labels"])
            masked = labels != IGNORED_LABEL
            log_probabilities = logits[masked].log_softmax(dim=-1)
            losses += (-log_probabilities.gather(1, labels[masked, None])[:, 0]).tolist()
            hits += (logits[masked].argmax(dim=-1) == labels[masked]).tolist()
    assert losses, "the evaluation set has masked tokens"
    return sum(hits) / len(hits), math.exp(sum(losses) / len(losses))


def seeded_masks(rows: list[dict]) -> dict[str, list]:
    """The seeded collator's batch of `rows` (a module-level function: it runs in a spawned process too)."""
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)})
    batch = masking_collator(tokenizer, FillMaskArguments(), seed=5)([dict(row) for row in rows])
    return {name: batch[name].tolist() for name in ("input_ids", "labels")}


def test_the_seeded_collator_masks_alike_in_a_spawned_process():
    """experiments/run_all.py runs finetune.py in spawned worker processes, where transformers refuses to seed a
    collator lazily; the seeded masks there are those of the main process."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    rows = [{"input_ids": [2, *range(len(SPECIAL_TOKENS), len(VOCAB)), 3]} for _ in range(4)]
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        in_worker = pool.submit(seeded_masks, rows).result()
    assert in_worker == seeded_masks(rows)
    assert any(label != IGNORED_LABEL for row in in_worker["labels"] for label in row)


def test_masking_rate_and_replacements():
    """15% of the non-special tokens are chosen; of them 80% become [MASK], 10% a random token (which may draw the
    original or [MASK] itself, 1/V each), 10% stay; labels hold the original token there and -100 elsewhere."""
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)})
    vocab_size, mask_id = len(tokenizer), tokenizer.mask_token_id
    generator = torch.Generator().manual_seed(1)
    first_word = len(SPECIAL_TOKENS)
    rows = []
    for length in torch.randint(60, 120, (200,), generator=generator).tolist():
        words = torch.randint(first_word, vocab_size, (length,), generator=generator).tolist()
        rows.append({"input_ids": [tokenizer.cls_token_id, *words, tokenizer.sep_token_id]})
    originals = [row["input_ids"] for row in rows]
    batch = masking_collator(tokenizer, FillMaskArguments(), seed=0)(rows)

    chosen = changed_to_mask = unchanged = tokens = 0
    for i, original in enumerate(originals):
        inputs, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert labels[0] == labels[len(original) - 1] == IGNORED_LABEL  # [CLS], [SEP] and padding are never chosen
        assert set(labels[len(original) :]) <= {IGNORED_LABEL}
        for position in range(1, len(original) - 1):
            tokens += 1
            if labels[position] == IGNORED_LABEL:
                assert inputs[position] == original[position]
                continue
            assert labels[position] == original[position]
            chosen += 1
            changed_to_mask += inputs[position] == mask_id
            unchanged += inputs[position] == original[position]

    def assert_near(count: int, trials: int, probability: float) -> None:
        standard_error = math.sqrt(probability * (1 - probability) / trials)
        assert abs(count / trials - probability) < NORMAL_QUANTILE * standard_error

    assert_near(chosen, tokens, 0.15)
    assert_near(changed_to_mask, chosen, 0.8 + 0.1 / vocab_size)
    assert_near(unchanged, chosen, 0.1 + 0.1 / vocab_size)


def word_ids(tokens: list[str]) -> list[int | None]:
    """Each token's word by WordPiece's own marker (a token starting with ## continues the word before it), None for
    special tokens: independent of the text offsets transformers' whole-word masking reads."""
    ids, word = [], -1
    for token in tokens:
        if token in SPECIAL_TOKENS:
            ids.append(None)
            continue
        word += not token.startswith("##")
        ids.append(word)
    return ids


def assert_whole_words(input_ids: list[int], labels: list[int], original: list[int], tokenizer) -> tuple[int, int, int]:
    """Checks that each word of `original` is masked in all its tokens (each replaced by [MASK]) or in none; returns
    the number of words, of masked words and of masked words of several tokens."""
    words: dict[int, list[int]] = {}
    for position, word in enumerate(word_ids(tokenizer.convert_ids_to_tokens(original))):
        if word is not None:
            words.setdefault(word, []).append(position)
    masked_words = masked_multi_piece = 0
    for positions in words.values():
        masked = [labels[position] != IGNORED_LABEL for position in positions]
        assert all(masked) or not any(masked), tokenizer.convert_ids_to_tokens([original[p] for p in positions])
        if all(masked):
            assert all(labels[p] == original[p] and input_ids[p] == tokenizer.mask_token_id for p in positions)
            masked_words += 1
            masked_multi_piece += len(positions) > 1
    return len(words), masked_words, masked_multi_piece


def test_whole_word_masking_masks_every_piece_of_a_word(assets, tmp_path):
    """Training batches (rows of different lengths) and the evaluation set: a word is masked in all its WordPiece
    tokens or in none, always with [MASK], and 15% of the words are chosen."""
    argv = run_argv(assets, tmp_path / "out", "--whole_word_mask", "true")
    data, tokenizer = task_data(argv)
    assert len({len(row) for row in data.train["input_ids"]}) > 1
    collator = masking_collator(tokenizer, FillMaskArguments(whole_word_mask=True), seed=0)
    words = masked_words = masked_multi_piece = 0
    for _ in range(30):
        rows = data.train.to_list()
        batch = collator(rows)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            inputs, labels = batch["input_ids"][i, :length].tolist(), batch["labels"][i, :length].tolist()
            counts = assert_whole_words(inputs, labels, row["input_ids"], tokenizer)
            words, masked_words, masked_multi_piece = (
                a + b for a, b in zip((words, masked_words, masked_multi_piece), counts, strict=True)
            )
    assert masked_multi_piece > 0
    assert abs(masked_words / words - 0.15) < NORMAL_QUANTILE * math.sqrt(0.15 * 0.85 / words)

    evaluation_masked = 0
    for row in data.evaluation:
        original = [
            label if label != IGNORED_LABEL else token
            for token, label in zip(row["input_ids"], row["labels"], strict=True)
        ]
        evaluation_masked += assert_whole_words(row["input_ids"], row["labels"], original, tokenizer)[1]
    assert evaluation_masked > 0


def test_evaluation_masks_are_fixed(assets, tmp_path):
    """The evaluation set is masked once, identically in every run and whatever the training seed, and the collator
    pads its rows without masking them again; training batches draw new masks."""
    first, tokenizer = task_data(run_argv(assets, tmp_path / "a"))
    second, _ = task_data(run_argv(assets, tmp_path / "b", "--seed", "7"))
    assert first.evaluation.to_list() == second.evaluation.to_list()
    assert set(first.evaluation.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    masked = sum(label != IGNORED_LABEL for labels in first.evaluation["labels"] for label in labels)
    assert masked > 0
    assert list(first.profile_inputs["input_ids"]) != list(first.evaluation["input_ids"])  # the texts, unmasked
    assert tokenizer.mask_token_id not in {token for row in first.profile_inputs["input_ids"] for token in row}

    collator = TASKS["fill-mask"].data_collator(parse_arguments(run_argv(assets, tmp_path / "a")), tokenizer)
    rows = first.evaluation.to_list()
    batch = collator(rows)
    for i, row in enumerate(rows):
        length = len(row["input_ids"])
        assert batch["input_ids"][i, :length].tolist() == row["input_ids"]
        assert batch["labels"][i].tolist() == row["labels"] + [IGNORED_LABEL] * (batch["labels"].shape[1] - length)
    train_rows = first.train.to_list()
    torch.manual_seed(0)
    assert not torch.equal(collator(train_rows)["labels"], collator(train_rows)["labels"])


def test_text_corpus_is_both_built_in_corpora_split_by_seed():
    from hf_centered.data import bbc_news, rotten_tomatoes

    reviews, articles = rotten_tomatoes()[0], bbc_news()[0]
    corpus = text_corpus(0.2, seed=3)
    texts = list(corpus["train"]["text"]) + list(corpus["validation"]["text"])
    assert sorted(texts) == sorted(reviews + articles) and len(texts) == 15_033
    assert abs(len(corpus["validation"]) / len(texts) - 0.2) < 1e-3
    reviews_held_out = len(set(corpus["validation"]["text"]) & set(reviews)) / len(corpus["validation"])
    assert abs(reviews_held_out - len(reviews) / len(texts)) < 0.01  # each source keeps its share on both sides
    assert list(text_corpus(0.2, seed=3)["validation"]["text"]) == list(corpus["validation"]["text"])
    assert list(text_corpus(0.2, seed=4)["validation"]["text"]) != list(corpus["validation"]["text"])


def test_tables_and_dataset_folders(assets, tmp_path):
    """A csv's text column is read under its name; a dataset name (here a local folder, read by datasets.load_dataset
    as a Hub dataset would be) skips its blank rows."""
    argv = run_argv(
        assets,
        tmp_path / "out",
        "--train_file",
        str(assets.train_csv),
        "--validation_file",
        str(assets.validation_csv),
        "--text_column",
        "review",
    )
    from_csv, _ = task_data(argv)
    from_txt, _ = task_data(run_argv(assets, tmp_path / "out"))
    assert from_csv.train.to_list() == from_txt.train.to_list()
    assert from_csv.evaluation.to_list() == from_txt.evaluation.to_list()

    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, rows in (("train", ["the movie was fun", "", "a dull plot"]), ("validation", ["great actor", "  "])):
        (folder / f"{split}.csv").write_text("review\n" + "\n".join(f'"{row}"' for row in rows) + "\n")
    argv = ["--task", "fill-mask", "--model_name_or_path", str(assets.model), "--dataset_name", str(folder)]
    argv += ["--text_column", "review", "--output_dir", str(tmp_path / "hub"), "--max_seq_length", "32"]
    from_folder, _ = task_data(argv)
    assert len(from_folder.train) == 2 and len(from_folder.evaluation) == 1
    assert from_folder.dataset_label == str(folder)


def test_run_export_pipeline_and_stock_baseline(assets, tmp_path, capsys):
    """A corrected run beside its stock baseline: the export is a fill-mask checkpoint (tied decoder, card, pipeline),
    and both runs' accuracy and perplexity are those of their exported model on the same fixed evaluation masks."""
    output_dir = tmp_path / "out"
    argv = run_argv(assets, output_dir, "--correction", "centered", "--baseline", "true")
    metrics = main(argv)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert "accuracy" in header and "perplexity" in header
    assert any(line.startswith("stock, same setup") for line in out.splitlines())

    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "type: perplexity" in card and "type: accuracy" in card
    assert f"{metrics['eval_perplexity']:.4f}" in card and "mlm_probability" in card
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == ["CenteredBertForMaskedLM"] and config["tie_word_embeddings"]

    data, _ = task_data(argv)
    baseline_dir = output_dir / finetuning.BASELINE_DIR
    baseline_metrics = json.loads((baseline_dir / "eval_results.json").read_text())
    for folder, run_metrics in ((baseline_dir, baseline_metrics), (output_dir, metrics)):
        model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
        accuracy, perplexity = evaluation_scores(model, data.evaluation)
        assert run_metrics["eval_perplexity"] == pytest.approx(perplexity, rel=1e-5)
        assert run_metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)

    # `model` is now the corrected export's
    fill_mask = pipeline("fill-mask", model=str(output_dir), trust_remote_code=True)
    predictions = fill_mask("the movie was [MASK].")
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    inputs = tokenizer("the movie was [MASK].", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, inputs["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    top = logits.softmax(dim=-1).topk(5)
    assert [prediction["token"] for prediction in predictions] == top.indices.tolist()
    assert [prediction["score"] for prediction in predictions] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_lora_trains_the_head_transform_and_reloads(assets, tmp_path):
    """LoRA: the adapter holds the LoRA weights and the head's transform, not the tied decoder; the base model plus
    the adapter, rebuilt as the runner builds it, computes the merged export's logits."""
    output_dir = tmp_path / "lora"
    argv = run_argv(assets, output_dir, "--use_lora", "--merge_lora", "--correction", "none")
    metrics = main(argv)
    assert {"eval_accuracy", "eval_perplexity"} <= set(metrics)
    adapter = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    head = {name for name in adapter if ".cls." in name}
    assert head == {
        f"base_model.model.cls.predictions.transform.{name}"
        for name in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias")
    }
    assert any("lora_A" in name for name in adapter)

    args = parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    base = finetuning.build_model(config, source, args.task)
    reloaded = PeftModel.from_pretrained(base, output_dir / "adapter").eval()
    merged = AutoModelForMaskedLM.from_pretrained(output_dir, trust_remote_code=True).eval()
    assert merged.cls.predictions.decoder.weight is merged.bert.embeddings.word_embeddings.weight
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    inputs = tokenizer(["the movie was [MASK] .", "a dull plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, merged(**inputs).logits, atol=1e-5, rtol=0)
        trained_transform = reloaded.base_model.model.cls.predictions.transform.modules_to_save["default"].dense.weight
        torch.testing.assert_close(merged.cls.predictions.transform.dense.weight, trained_transform)
        # the transform trained away from the head it was initialised with
        assert not torch.allclose(base.cls.predictions.transform.original_module.dense.weight, trained_transform)


def test_from_scratch_with_whole_word_masking(assets, tmp_path):
    output_dir = tmp_path / "scratch"
    architecture = json.dumps({**TINY_ARCHITECTURE, "vocab_size": len(VOCAB) + 3})
    model = ("--architecture", architecture, "--tokenizer_name", str(assets.model))
    metrics = main(run_argv(assets, output_dir, "--whole_word_mask", "true", "--mlm_probability", "0.3", model=model))
    assert {"eval_accuracy", "eval_perplexity"} <= set(metrics)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["vocab_size"] == len(VOCAB) + 3 and config["hidden_size"] == 16
    assert "| whole_word_mask | True |" in (output_dir / "README.md").read_text()


def test_sparse_prediction_trains_and_scores_as_the_dense_head(assets, tmp_path):
    """`sparse_prediction` changes which logits the model returns in training and evaluation, not what it learns or
    how it scores: the same run with the dense head gives the same metrics."""
    metrics = {}
    for sparse in (False, True):
        architecture = json.dumps({**TINY_ARCHITECTURE, "vocab_size": len(VOCAB) + 3, "sparse_prediction": sparse})
        model = ("--architecture", architecture, "--tokenizer_name", str(assets.model))
        output_dir = tmp_path / f"sparse-{sparse}"
        metrics[sparse] = main(run_argv(assets, output_dir, "--max_steps", "3", model=model))
    assert json.loads((output_dir / "config.json").read_text())["sparse_prediction"] is True
    assert metrics[True]["eval_accuracy"] == metrics[False]["eval_accuracy"]
    for name in ("eval_perplexity", "eval_loss"):
        assert metrics[True][name] == pytest.approx(metrics[False][name], rel=1e-4)


def bad_input_argv(assets, folder: Path, case: str) -> tuple[list[str], str]:
    """The command line of one bad input, with (a fragment of) the line it must be refused with."""
    output_dir = folder / "out"

    def from_scratch(tokenizer, vocab_size: int, *extra: str) -> list[str]:
        tokenizer.save_pretrained(folder / "tokenizer")
        architecture = json.dumps({**TINY_ARCHITECTURE, "vocab_size": vocab_size})
        model = ("--architecture", architecture, "--tokenizer_name", str(folder / "tokenizer"))
        return run_argv(assets, output_dir, *extra, model=model)

    def with_files(train: Path, validation: Path, *extra: str) -> list[str]:
        return run_argv(assets, output_dir, "--train_file", str(train), "--validation_file", str(validation), *extra)

    if case == "missing text column":
        return with_files(assets.train_csv, assets.validation_csv), "column(s) ['text'] not found in the train data"
    if case == "empty text":
        table = folder / "empty.csv"
        table.write_text('review\n"the movie"\n""\n"a plot"\n')
        argv = with_files(table, assets.validation_csv, "--text_column", "review")
        return argv, "1 empty text(s) in the train data (rows [1])"
    if case == "no mask token":
        return from_scratch(ByT5Tokenizer(), 400), "has no mask token"
    if case == "vocabulary smaller than the tokenizer's":
        return from_scratch(BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)}), 10), (
            f"has {len(VOCAB)} tokens but the model's vocab_size is 10"
        )
    if case == "whole words without offsets":
        return from_scratch(PerceiverTokenizer(), 300, "--whole_word_mask", "true"), "needs a fast tokenizer"
    if case == "txt and csv":
        return with_files(assets.train_txt, assets.validation_csv), "give both data files as .txt or neither"
    if case == "blank txt":
        blank = folder / "blank.txt"
        blank.write_text("\n  \n\n")
        return with_files(blank, assets.validation_txt), f"data file {blank} holds no text"
    if case == "not UTF-8":
        latin = folder / "latin.txt"
        latin.write_bytes("the movie was très fun\n".encode("latin-1"))
        return with_files(latin, assets.validation_txt), "is not UTF-8 text"
    if case == "longer than the positions":
        return run_argv(assets, output_dir, "--max_seq_length", "49"), "max_position_embeddings=48"
    if case == "no evaluation token masked":
        one_word = folder / "one_word.txt"
        one_word.write_text("good\n")
        return with_files(assets.train_txt, one_word, "--mlm_probability", "0.01"), "chose none of them"
    probability = case.removeprefix("mlm_probability=")
    return run_argv(assets, output_dir, "--mlm_probability", probability), "must lie strictly between 0 and 1"


BAD_INPUTS = [
    "missing text column",
    "empty text",
    "no mask token",
    "vocabulary smaller than the tokenizer's",
    "whole words without offsets",
    "txt and csv",
    "blank txt",
    "not UTF-8",
    "longer than the positions",
    "no evaluation token masked",
    "mlm_probability=0",
    "mlm_probability=1",
    "mlm_probability=-0.1",
    "mlm_probability=1.5",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_before_training(case, assets, tmp_path, capsys):
    argv, message = bad_input_argv(assets, tmp_path, case)
    with pytest.raises(UsageError) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("finetune.py:")]
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("finetune.py: error: ") and message in errors[0], errors
    assert not (tmp_path / "out").exists()
