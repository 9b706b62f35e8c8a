"""sentence-transformers: an export of a sentence-transformers model keeps its modules (pooling, dense layers,
normalisation), so `SentenceTransformer(export)` is the stock model for `correction="none"` and runs the corrected model
otherwise; the packaged MiniLM's folder is a plain string every loader takes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_without_the_package
from huggingface_hub import ModelCard, constants
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

from hf_centered import CenteredBertForSequenceClassification, CenteredBertModel, export_for_hub
from hf_centered.cli import main as cli_main
from hf_centered.data import minilm_dir
from hf_centered.hub import EXPORT_MANIFEST

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.", "b a"]
MINILM_FILES = {
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
}
TINY_FILES = {
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "2_Dense/config.json",
    "2_Dense/model.safetensors",
    "3_Normalize/config.json",
}
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)

ENCODE_WITHOUT_PACKAGE = """
    import json, torch
    from sentence_transformers import SentenceTransformer
    folder, sentences = sys.argv[1], json.loads(sys.argv[2])
    model = SentenceTransformer(folder, trust_remote_code=True)
    transformer = model[0].model
    assert "hf_centered" not in type(transformer).__module__, type(transformer).__module__
    print(json.dumps({"class": type(transformer).__name__, "embeddings": model.encode(sentences).tolist()}))
"""


def encode(model: SentenceTransformer) -> torch.Tensor:
    return model.encode(SENTENCES, convert_to_tensor=True)


def manifest(folder: Path) -> set[str]:
    return set(json.loads((folder / EXPORT_MANIFEST).read_text())["files"])


def module_types(model: SentenceTransformer) -> list[str]:
    return [type(module).__name__ for module in model]


@pytest.fixture(scope="module")
def stock() -> SentenceTransformer:
    return SentenceTransformer(minilm_dir())


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory) -> Path:
    """A tiny sentence-transformers model saved by sentence-transformers itself: CLS pooling, a dense layer with
    weights of its own, normalisation."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_SIZES)).save_pretrained(root / "bert")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    BertTokenizer(vocab=vocab).save_pretrained(root / "bert")
    modules = [Transformer(str(root / "bert")), Pooling(32, "cls"), Dense(32, 8), Normalize()]
    SentenceTransformer(modules=modules).save(str(root / "st"))
    return root / "st"


def test_minilm_dir_is_a_string_sentence_transformers_takes(stock):
    assert isinstance(minilm_dir(), str)
    embeddings = encode(stock)
    assert embeddings.shape == (4, 384)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)  # the Normalize module is there
    assert embeddings[0] @ embeddings[1] == pytest.approx(0.755, abs=0.005)  # the upstream card's example


@pytest.mark.parametrize("via", ["python", "cli"])
def test_export_of_minilm_is_the_stock_sentence_transformer(tmp_path, stock, minilm_tokenizer, via):
    out = tmp_path / "export"
    if via == "python":
        model = CenteredBertModel.from_pretrained(minilm_dir(), correction="none")
        export_for_hub(model, out, minilm_tokenizer)
    else:
        assert cli_main(["export", minilm_dir(), str(out), "--task", "base", "--correction", "none"]) == 0
    assert manifest(out) >= MINILM_FILES
    exported = SentenceTransformer(str(out), trust_remote_code=True)
    assert module_types(exported) == ["Transformer", "Pooling", "Normalize"]
    assert type(exported[0].model).__name__ == "CenteredBertModel"
    assert (encode(exported) - encode(stock)).abs().max() <= 1e-6
    card = ModelCard.load(out / "README.md")
    assert "SentenceTransformer(" in card.text and "sentence-transformers" in card.data.tags


def test_sentence_transformers_runs_the_corrected_model(tmp_path, stock, minilm_tokenizer):
    fixed = CenteredBertModel.from_pretrained(minilm_dir(), correction="centered").eval()
    export_for_hub(fixed, tmp_path / "fixed", minilm_tokenizer)
    corrected = encode(SentenceTransformer(str(tmp_path / "fixed"), trust_remote_code=True))
    assert (corrected - encode(stock)).abs().max() > 0.05
    # the corrected model's own mean-pooled, normalised last hidden state
    inputs = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = fixed(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert (corrected - expected).abs().max() <= 1e-5

    # learned strengths start as the stock model
    learned = CenteredBertModel.from_pretrained(
        minilm_dir(), correction=["centered", "contranorm"], correction_strength="learned"
    )
    export_for_hub(learned, tmp_path / "learned", minilm_tokenizer)
    at_init = SentenceTransformer(str(tmp_path / "learned"), trust_remote_code=True)
    assert type(at_init[0].model).__name__ == "CenteredBertModel"
    assert at_init[0].model.config.correction_strength == "learned"
    assert (encode(at_init) - encode(stock)).abs().max() <= 1e-6


def test_export_keeps_every_module_and_loads_without_the_package(tmp_path, tiny_st):
    model = CenteredBertForSequenceClassification.from_pretrained(tiny_st, correction="centered", num_labels=2)
    out = export_for_hub(model, tmp_path / "export", AutoTokenizer.from_pretrained(tiny_st))
    assert manifest(out) >= TINY_FILES
    dense_weights = "2_Dense/model.safetensors"
    assert (out / dense_weights).read_bytes() == (tiny_st / dense_weights).read_bytes()
    exported = SentenceTransformer(str(out), trust_remote_code=True)
    assert module_types(exported) == ["Transformer", "Pooling", "Dense", "Normalize"]
    embeddings = encode(exported)
    assert embeddings.shape == (4, 8)
    assert (embeddings - encode(SentenceTransformer(str(tiny_st)))).abs().max() > 1e-3  # the correction acts

    result = run_without_the_package(tmp_path, ENCODE_WITHOUT_PACKAGE, str(out), json.dumps(SENTENCES))
    assert result["class"] == "CenteredBertModel"
    assert (torch.tensor(result["embeddings"]) - embeddings).abs().max() <= 1e-6


def test_stock_correction_of_a_tiny_model_equals_it(tmp_path, tiny_st):
    model = CenteredBertModel.from_pretrained(tiny_st, correction="none")
    out = export_for_hub(model, tmp_path / "export", AutoTokenizer.from_pretrained(tiny_st), source=str(tiny_st))
    exported, stock = SentenceTransformer(str(out), trust_remote_code=True), SentenceTransformer(str(tiny_st))
    assert (encode(exported) - encode(stock)).abs().max() <= 1e-6


def test_overwrite_removes_the_sentence_transformers_files(tmp_path, tiny_st):
    out = tmp_path / "export"
    tokenizer = AutoTokenizer.from_pretrained(tiny_st)
    export_for_hub(CenteredBertModel.from_pretrained(tiny_st), out, tokenizer)
    assert manifest(out) >= TINY_FILES
    (out / "3_Normalize" / "notes.txt").write_text("mine")

    plain = CenteredBertModel(CenteredBertModel.config_class(**TINY_SIZES))  # not from a sentence-transformers folder
    export_for_hub(plain, out, tokenizer, overwrite=True)
    files = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert not TINY_FILES & (files | manifest(out))
    assert not (out / "1_Pooling").exists() and not (out / "2_Dense").exists()
    assert (out / "3_Normalize" / "notes.txt").read_text() == "mine"
    card = ModelCard.load(out / "README.md")
    assert "SentenceTransformer" not in card.text and "sentence-transformers" not in card.data.tags


def test_sentence_transformers_files_only_from_the_same_base_model(tmp_path, tiny_st, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_st)
    other = CenteredBertModel(CenteredBertModel.config_class(**{**TINY_SIZES, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        export_for_hub(other, tmp_path / "explicit", tokenizer, source=str(tiny_st))
    assert not (tmp_path / "explicit").exists()

    other.config._name_or_path = str(tiny_st)  # what the model says it came from, but it is another architecture
    out = export_for_hub(other, tmp_path / "implicit", tokenizer)
    assert "modules.json" not in manifest(out) and not (out / "modules.json").exists()
    assert "num_hidden_layers" in caplog.text

    # without the tokenizer sentence-transformers could not load the folder: the files are not kept
    out = export_for_hub(CenteredBertModel.from_pretrained(tiny_st), tmp_path / "no-tokenizer")
    assert "modules.json" not in manifest(out) and "SentenceTransformer" not in (out / "README.md").read_text()


def test_sentence_transformers_files_of_a_hub_id_come_from_the_cache(tmp_path, tiny_st, monkeypatch):
    """A Hub id as source (what `hf-centered export org/model` records): offline, its files come from the cache."""
    repository, revision = tmp_path / "hub" / "models--org--tiny-st", "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_st, repository / "snapshots" / revision)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = CenteredBertModel.from_pretrained(tiny_st, correction="none")
    tokenizer = AutoTokenizer.from_pretrained(tiny_st)
    out = export_for_hub(model, tmp_path / "export", tokenizer, source="org/tiny-st")
    assert manifest(out) >= TINY_FILES
    assert (
        encode(SentenceTransformer(str(out), trust_remote_code=True)) - encode(SentenceTransformer(str(tiny_st)))
    ).abs().max() <= 1e-6
    # a repository that is not in the cache: nothing to keep, and no error
    out = export_for_hub(model, tmp_path / "absent", tokenizer, source="org/absent")
    assert "modules.json" not in manifest(out)
