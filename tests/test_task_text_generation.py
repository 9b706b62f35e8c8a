"""--task text-generation: the collator, perplexity and next-token accuracy against their formulas, runs from scratch
and from a checkpoint (LoRA), the export (pipeline, without the package), the shared built-in corpus, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_without_the_package
from tokenizers import Tokenizer, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertTokenizer,
    EvalPrediction,
    LlamaConfig,
    TokenizersBackend,
    pipeline,
)

from hf_centered import finetuning
from hf_centered.finetuning import main, parse_arguments
from hf_centered.tasks import TASKS, UsageError
from hf_centered.tasks.base import IGNORED_LABEL
from hf_centered.tasks.text_generation import (
    DataCollatorForCausalLanguageModeling,
    next_token_metrics,
    next_tokens_and_losses,
    open_ended,
    text_boundaries,
)

TASK = TASKS["text-generation"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "movie", "film", "plot", "was", "is", "good", "bad", "great", "dull", "fun", "actor", "."]
VOCAB = [*SPECIAL_TOKENS, *WORDS]
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
FAMILY_FIELDS = {
    "llama": dict(intermediate_size=23, num_key_value_heads=1),
    "gpt2": dict(n_inner=23),
}


def tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)})


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """A tiny tokenizer and text files of a little grammar (so that a few steps learn something)."""
    root = tmp_path_factory.mktemp("text_generation_assets")
    tokenizer().save_pretrained(root / "tokenizer")
    generator = torch.Generator().manual_seed(0)

    def sentences(count: int) -> list[str]:
        subjects, adjectives = (
            ["the movie", "the film", "the plot", "the actor"],
            ["good", "bad", "great", "dull", "fun"],
        )
        picks = torch.randint(20, (count, 3), generator=generator).tolist()
        return [f"{subjects[s % 4]} {['was', 'is'][v % 2]} {adjectives[a % 5]} ." for s, v, a in picks]

    files = SimpleNamespace(root=root, tokenizer=root / "tokenizer")
    for split, count in (("train", 48), ("validation", 16)):
        path = root / f"{split}.txt"
        path.write_text("\n".join(sentences(count)) + "\n")
        setattr(files, split, path)
    return files


def run_argv(assets, output_dir: Path, *extra: str, family: str = "llama") -> list[str]:
    architecture = {"model_type": family, **TINY, **FAMILY_FIELDS[family], "vocab_size": len(VOCAB)}
    architecture["max_position_embeddings"] = 24
    return [
        "--task", "text-generation",
        "--architecture", json.dumps(architecture),
        "--tokenizer_name", str(assets.tokenizer),
        "--train_file", str(assets.train),
        "--validation_file", str(assets.validation),
        "--output_dir", str(output_dir),
        "--max_seq_length", "16",
        "--max_steps", "4",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "5",
        "--learning_rate", "1e-2",
        "--save_strategy", "no",
        "--profile_sequences", "8",
        "--seed", "0",
        "--no_baseline",
        *extra,
    ]  # fmt: skip


def explicit_scores(model, evaluation) -> tuple[float, float]:
    """Perplexity and next-token accuracy over every token after a text's first, one text at a time."""
    losses, hits = [], []
    with torch.no_grad():
        for row in evaluation:
            ids = torch.tensor([row["input_ids"]])
            log_probabilities = model(input_ids=ids).logits[0].double().log_softmax(dim=-1)
            for position in range(1, ids.shape[1]):
                token = int(ids[0, position])
                losses.append(-float(log_probabilities[position - 1, token]))
                hits.append(int(log_probabilities[position - 1].argmax()) == token)
    return math.exp(sum(losses) / len(losses)), sum(hits) / len(hits)


def tokenizer_that_opens(texts_with: str):
    """The tiny vocabulary's tokenizer with a BERT template ([CLS] text [SEP]), one that adds only a BOS token (as
    Llama's), or one that adds none (as GPT-2's)."""
    bert = tokenizer()
    if texts_with == "[CLS] text [SEP]":
        return bert
    backend = Tokenizer.from_str(bert.backend_tokenizer.to_str())
    if texts_with == "[CLS] text":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A", pair="[CLS] $A $B:1", special_tokens=[("[CLS]", VOCAB.index("[CLS]"))]
        )
    else:
        backend.post_processor = None
    return TokenizersBackend(
        tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]"
    )


@pytest.mark.parametrize("texts_with", ["[CLS] text [SEP]", "[CLS] text", "text"])
def test_each_text_is_opened_as_the_tokenizer_opens_it_and_closed_with_eos(assets, tmp_path, texts_with):
    """The training ids of a text: the tokenizer's opening ids, its tokens cut to fit, the EOS id (a BERT tokenizer's
    own encoding, cut texts included); the saved tokenizer opens a prompt the same way and leaves it open."""
    loaded = tokenizer_that_opens(texts_with)
    loaded.save_pretrained(tmp_path / "tokenizer")
    max_seq_length = 5
    argv = run_argv(assets, tmp_path / "out", "--max_seq_length", str(max_seq_length))
    argv[argv.index("--tokenizer_name") + 1] = str(tmp_path / "tokenizer")
    args = parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    processor = finetuning.load_processor(args, config, source)
    data = args.task.load_data(args, config, processor)

    opening = [VOCAB.index("[CLS]")] if texts_with != "text" else []
    eos = VOCAB.index("[SEP]")
    texts = assets.validation.read_text().splitlines()
    assert len(data.evaluation) == len(texts)
    cut = 0
    for row, text in zip(data.evaluation, texts, strict=True):
        words = [VOCAB.index(word) for word in text.split()]
        room = max_seq_length - len(opening) - 1
        assert row["input_ids"] == opening + words[:room] + [eos]
        assert row["attention_mask"] == [1] * len(row["input_ids"])
        if texts_with == "[CLS] text [SEP]":
            assert row["input_ids"] == loaded(text, truncation=True, max_length=max_seq_length)["input_ids"]
        cut += len(words) > room
    assert cut > 0

    processor.save_pretrained(tmp_path / "saved")
    prompt = AutoTokenizer.from_pretrained(tmp_path / "saved")("the movie")
    assert prompt["input_ids"] == [*opening, VOCAB.index("the"), VOCAB.index("movie")]
    assert "token_type_ids" not in prompt
    if texts_with != "[CLS] text [SEP]":  # a tokenizer that leaves texts open is kept as it is
        assert open_ended(loaded) is loaded


def test_a_tokenizer_whose_special_tokens_change_the_text_is_refused_in_one_line():
    class Rewriting:
        """Encodes "a" as [5] alone but as [1, 7, 2] with its special tokens: no opening and closing ids to tell."""

        name_or_path = "rewriting-tokenizer"

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return {"input_ids": [1, 7, 2] if add_special_tokens else [5]}

    assert text_boundaries(tokenizer()) == ([VOCAB.index("[CLS]")], [VOCAB.index("[SEP]")])
    with pytest.raises(UsageError) as raised:
        text_boundaries(Rewriting())
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("error: the tokenizer rewriting-tokenizer encodes a text differently")


def test_the_collator_pads_on_the_right_and_ignores_only_padding():
    """Right padding whatever the tokenizer's side; an EOS that doubles as the pad token is still a label where it
    ends a text."""
    bert = tokenizer()
    bert.padding_side = "left"
    bert.pad_token = "[SEP]"  # as decoders often set pad = eos
    rows = [bert("the movie was good ."), bert("fun")]
    batch = DataCollatorForCausalLanguageModeling(bert)([dict(row) for row in rows])
    long, short = rows[0]["input_ids"], rows[1]["input_ids"]
    padding = len(long) - len(short)
    assert batch["input_ids"].tolist() == [long, short + [bert.sep_token_id] * padding]
    assert batch["attention_mask"].tolist() == [[1] * len(long), [1] * len(short) + [0] * padding]
    assert batch["labels"].tolist() == [long, short + [IGNORED_LABEL] * padding]
    assert short[-1] == bert.sep_token_id  # the text's own end keeps its label


def test_perplexity_and_accuracy_are_their_formulas():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 6, 11, generator=generator)
    labels = torch.randint(11, (3, 6), generator=generator)
    labels[1, 4:] = IGNORED_LABEL
    labels[2, 2:] = IGNORED_LABEL
    predicted, losses = next_tokens_and_losses(logits, labels)
    metrics = next_token_metrics(EvalPrediction(predictions=(predicted.numpy(), losses.numpy()), label_ids=labels))
    cross_entropies, hits = [], []
    for row in range(3):
        for position in range(1, 6):
            target = int(labels[row, position])
            if target == IGNORED_LABEL:
                continue
            log_probabilities = logits[row, position - 1].double().log_softmax(dim=-1)
            cross_entropies.append(-float(log_probabilities[target]))
            hits.append(int(log_probabilities.argmax()) == target)
    assert len(cross_entropies) == 5 + 3 + 1
    assert metrics["perplexity"] == pytest.approx(math.exp(sum(cross_entropies) / len(cross_entropies)), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    # the model's own loss (transformers shifts the labels the same way) over the same tokens
    model_loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert metrics["perplexity"] == pytest.approx(math.exp(float(model_loss)), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_corrected_causal_lm_trains_from_scratch_and_exports(assets, tmp_path, family):
    """Every generic correction on a decoder from scratch: metrics equal the formulas recomputed from the export, the
    tokenizer's [CLS]/[SEP] open and close texts, the model stays causal."""
    output_dir = tmp_path / "out"
    corrections = ["centered", "neutreno", "contranorm", "dgn"] if family == "llama" else ["centered", "neutreno"]
    argv = run_argv(assets, output_dir, "--correction", *corrections, family=family)
    metrics = main(argv)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == f"corrected_{family}" and config["correction"] == corrections
    assert (config["bos_token_id"], config["eos_token_id"]) == (VOCAB.index("[CLS]"), VOCAB.index("[SEP]"))
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "type: perplexity" in card

    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    assert type(model).__module__ == "hf_centered.modeling_generic"
    args = parse_arguments(argv)
    config_object, source = finetuning.resolve_base_config(args)
    data = args.task.load_data(args, config_object, finetuning.load_processor(args, config_object, source))
    perplexity, accuracy = explicit_scores(model, data.evaluation)
    assert metrics["eval_perplexity"] == pytest.approx(perplexity, rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    # four steps learn more than a uniform guess over the vocabulary
    assert metrics["eval_perplexity"] < len(VOCAB) and metrics["eval_accuracy"] > 3 / len(VOCAB)

    ids = torch.tensor([data.evaluation[0]["input_ids"]])
    changed = ids.clone()
    changed[0, -1] = VOCAB.index("fun") if int(ids[0, -1]) != VOCAB.index("fun") else VOCAB.index("dull")
    with torch.no_grad():  # causal: a later token changes no earlier prediction
        torch.testing.assert_close(model(input_ids=changed).logits[0, :-1], model(input_ids=ids).logits[0, :-1])


def test_the_export_generates_in_a_pipeline_and_without_the_package(assets, tmp_path):
    output_dir = tmp_path / "out"
    main(run_argv(assets, output_dir, "--correction", "centered", "neutreno", "--max_steps", "8"))
    generator = pipeline("text-generation", model=str(output_dir))
    outputs = generator("the movie", max_new_tokens=6, do_sample=False, return_tensors=True)
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    # opened as the training texts were, and left open: no [SEP], no token_type_ids
    prompt = AutoTokenizer.from_pretrained(output_dir)("the movie", return_tensors="pt")
    assert list(prompt) == ["input_ids", "attention_mask"]
    assert prompt["input_ids"][0].tolist() == [VOCAB.index(token) for token in ("[CLS]", "the", "movie")]
    expected = model.generate(**prompt, max_new_tokens=6, do_sample=False)[0].tolist()
    assert outputs[0]["generated_token_ids"] == expected and len(expected) > 3
    # prompts of different lengths in one batch (padded on the left) continue as they do one at a time
    assert generator.tokenizer.padding_side == "left"
    prompts = ["the movie", "the actor is fun . the plot was dull . the film", "fun"]
    one_at_a_time = [generator(text, max_new_tokens=4, do_sample=False) for text in prompts]
    assert generator(prompts, max_new_tokens=4, do_sample=False, batch_size=3) == one_at_a_time
    script = """
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        prompt = torch.tensor([[int(token) for token in sys.argv[2:]]])
        print(json.dumps(model.generate(prompt, max_new_tokens=6, do_sample=False)[0].tolist()))
    """
    prompt_ids = [str(token) for token in prompt["input_ids"][0].tolist()]
    assert run_without_the_package(tmp_path, script, str(output_dir), *prompt_ids) == expected


def test_lora_on_a_decoder_checkpoint_reloads_onto_the_corrected_base(assets, tmp_path):
    from peft import PeftModel

    checkpoint = tmp_path / "llama"
    fields = {**TINY, **FAMILY_FIELDS["llama"], "vocab_size": len(VOCAB), "max_position_embeddings": 24}
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(
        LlamaConfig(**fields, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    ).save_pretrained(checkpoint)
    tokenizer().save_pretrained(checkpoint)
    output_dir = tmp_path / "out"
    argv = run_argv(assets, output_dir, "--correction", "centered", "--use_lora", "true", "--baseline", "true")
    start = argv.index("--architecture")
    argv[start : start + 4] = ["--model_name_or_path", str(checkpoint)]  # replaces --architecture and --tokenizer_name
    metrics = main(argv)
    assert "eval_perplexity" in metrics
    adapter_dir = output_dir / "adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert (output_dir / finetuning.BASELINE_DIR / "adapter" / "adapter_config.json").is_file()
    args = parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    adapted = PeftModel.from_pretrained(finetuning.build_model(config, source, args.task), adapter_dir).eval()
    assert adapted.base_model.model.config.correction == "centered"
    base = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.tensor([[2, 5, 6, 11, 3]])
    with torch.no_grad():
        assert not torch.allclose(adapted(input_ids=ids).logits, base(input_ids=ids).logits)


def test_the_built_in_corpus_is_read_by_both_language_modelling_tasks(tmp_path, capsys):
    assert parse_arguments(["--dataset_name", "text_corpus", "--output_dir", str(tmp_path)]).data.task == "fill-mask"
    args = parse_arguments(
        ["--task", "text-generation", "--dataset_name", "text_corpus", "--output_dir", str(tmp_path)]
    )
    assert args.task is TASK
    with pytest.raises(UsageError):
        main(["--task", "text-classification", "--dataset_name", "text_corpus", "--output_dir", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        "finetune.py: error: the built-in dataset 'text_corpus' is for --task fill-mask, text-generation; the built-in "
        "datasets of text-classification are rotten_tomatoes, bbc_news"
    ]


def bad_input(assets, folder: Path, case: str) -> tuple[list[str], str]:
    output_dir = folder / "out"
    if case == "default checkpoint":
        argv = ["--task", "text-generation", "--dataset_name", "text_corpus", "--output_dir", str(output_dir)]
        return argv, "(the default checkpoint) is a 'bert' model, whose family has no head for --task text-generation;"
    if case == "family without a causal head":
        argv = run_argv(assets, output_dir)
        architecture = json.dumps({"model_type": "distilbert", "dim": 16, "n_layers": 1, "n_heads": 2})
        argv[argv.index("--architecture") + 1] = architecture
        return argv, "architecture's model_type='distilbert' has no head for --task text-generation"
    if case in ("bert", "roberta"):  # encoders, whose causal-LM heads are not offered
        argv = run_argv(assets, output_dir)
        argv[argv.index("--architecture") + 1] = json.dumps({"model_type": case, **TINY, "intermediate_size": 23})
        return argv, f"architecture's model_type='{case}' has no head for --task text-generation"
    if case == "vocabulary smaller than the tokenizer's":
        argv = run_argv(assets, output_dir)
        architecture = json.loads(argv[argv.index("--architecture") + 1])
        argv[argv.index("--architecture") + 1] = json.dumps({**architecture, "vocab_size": 9})
        return argv, f"has {len(VOCAB)} tokens but the model's vocab_size is 9"
    if case == "longer than the positions":
        return run_argv(assets, output_dir, "--max_seq_length", "25"), "max_position_embeddings=24"
    if case == "no room for a text":
        return (
            run_argv(assets, output_dir, "--max_seq_length", "2"),
            "max_seq_length=2 leaves no token of text beside the 2 ids that open and close each text",
        )
    if case == "image model":
        argv = run_argv(assets, output_dir)
        argv[argv.index("--architecture") + 1] = json.dumps({"model_type": "vit", "image_size": 8, "patch_size": 4})
        return argv, "--task text-generation needs a text model (llama, qwen2, gpt2)"
    blank = folder / "blank.txt"
    blank.write_text("\n \n")
    return run_argv(assets, output_dir, "--train_file", str(blank)), f"data file {blank} holds no text"


@pytest.mark.parametrize(
    "case",
    [
        "default checkpoint",
        "family without a causal head",
        "bert",
        "roberta",
        "vocabulary smaller than the tokenizer's",
        "longer than the positions",
        "no room for a text",
        "image model",
        "blank txt",
    ],
)
def test_bad_input_is_one_line_before_training(case, assets, tmp_path, capsys):
    argv, message = bad_input(assets, tmp_path, case)
    capsys.readouterr()
    with pytest.raises(UsageError) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("finetune.py:")]
    assert "Traceback" not in err
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()
