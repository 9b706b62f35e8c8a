"""Model classes: stock equivalence, padding invariance, backends, dtypes, checkpointing, saving and loading."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL_CORRECTIONS,
    CORRECTIONS,
    FUSIONS,
    VIT_SIZES,
    bert_config,
    bert_inputs,
    max_real_token_diff,
    pad_more,
    stock_config,
    vit_config,
    vit_inputs,
)
from huggingface_hub.errors import StrictDataclassFieldValidationError
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSemanticSegmentation,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
)
from transformers.modeling_outputs import SemanticSegmenterOutput

import hf_centered
from hf_centered import (
    CenteredBertConfig,
    CenteredBertForMaskedLM,
    CenteredBertForMultipleChoice,
    CenteredBertForNextSentencePrediction,
    CenteredBertForPreTraining,
    CenteredBertForQuestionAnswering,
    CenteredBertForSequenceClassification,
    CenteredBertForTokenClassification,
    CenteredBertModel,
    CenteredBertPreTrainedModel,
    CenteredViTConfig,
    CenteredViTForImageClassification,
    CenteredViTForMaskedImageModeling,
    CenteredViTForSemanticSegmentation,
    CenteredViTModel,
)
from hf_centered.corrections import CORRECTIONS as REGISTRY

METHOD_SETS = [[name] for name in CORRECTIONS] + [ALL_CORRECTIONS]
BERT_PAIRS = [
    (BertModel, CenteredBertModel),
    (BertForSequenceClassification, CenteredBertForSequenceClassification),
    (BertForMaskedLM, CenteredBertForMaskedLM),
    (BertForTokenClassification, CenteredBertForTokenClassification),
    (BertForQuestionAnswering, CenteredBertForQuestionAnswering),
    (BertForMultipleChoice, CenteredBertForMultipleChoice),
    (BertForNextSentencePrediction, CenteredBertForNextSentencePrediction),
    (BertForPreTraining, CenteredBertForPreTraining),
]
VIT_PAIRS = [
    (ViTModel, CenteredViTModel),
    (ViTForImageClassification, CenteredViTForImageClassification),
    (ViTForMaskedImageModeling, CenteredViTForMaskedImageModeling),
]
NEW_BERT_HEADS = [
    CenteredBertForQuestionAnswering,
    CenteredBertForMultipleChoice,
    CenteredBertForNextSentencePrediction,
    CenteredBertForPreTraining,
]
NUM_CHOICES = 2


def as_choices(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of rows `(B·NUM_CHOICES, n)` as multiple-choice inputs `(B, NUM_CHOICES, n)`."""
    return {name: tensor.view(-1, NUM_CHOICES, tensor.shape[-1]) for name, tensor in inputs.items()}


def head_inputs(model_class: type) -> dict[str, torch.Tensor]:
    """Inputs shaped as the head takes them: a padded batch for BERT (3 questions × 2 choices for multiple choice),
    images for ViT, with half the patches masked for masked image modelling (its loss then compares too)."""
    if model_class is CenteredBertForMultipleChoice:
        return as_choices(bert_inputs(batch_size=3 * NUM_CHOICES))
    if issubclass(model_class, CenteredBertPreTrainedModel):
        return bert_inputs()
    inputs = vit_inputs()
    if model_class is CenteredViTForMaskedImageModeling:
        num_patches = (VIT_SIZES["image_size"] // VIT_SIZES["patch_size"]) ** 2
        inputs["bool_masked_pos"] = torch.rand(inputs["pixel_values"].shape[0], num_patches) < 0.5
    return inputs


def head_config(model_class: type, **fields):
    """The tiny configuration of the head's family, with what the head needs: two logits per token for question
    answering (start, end), and patch_size × patch_size pixels reconstructed per patch in masked image modelling."""
    if issubclass(model_class, CenteredBertPreTrainedModel):
        return bert_config(**({"num_labels": 2} if model_class is CenteredBertForQuestionAnswering else {}), **fields)
    return vit_config(encoder_stride=VIT_SIZES["patch_size"], **fields)


def compared_outputs(output) -> dict[str, torch.Tensor]:
    """Every tensor a head returns (logits, reconstruction, loss, ...), without the per-layer states."""
    return {name: value for name, value in output.items() if name not in ("hidden_states", "attentions")}


def real_token_diff(actual: torch.Tensor, expected: torch.Tensor, attention_mask: torch.Tensor | None) -> float:
    """Largest difference, over the real tokens for a per-token output (padded positions are garbage)."""
    if attention_mask is not None and actual.shape[: attention_mask.dim()] == attention_mask.shape:
        return max_real_token_diff(actual, expected, attention_mask)
    return (actual - expected).abs().max().item()


def _assert_stock_equivalent(stock_class, centered_class, config, inputs, tol=1e-6):
    model = centered_class(config).eval()
    stock = stock_class(stock_config(config)).eval()
    missing, unexpected = stock.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all("corrections" in name for name in unexpected)
    with torch.no_grad():
        expected, actual = compared_outputs(stock(**inputs)), compared_outputs(model(**inputs))
    assert actual.keys() == expected.keys() and actual
    for name in expected:
        assert real_token_diff(actual[name], expected[name], inputs.get("attention_mask")) <= tol, name


@pytest.mark.parametrize(("stock_class", "centered_class"), BERT_PAIRS, ids=lambda c: c.__name__)
def test_bert_none_equals_stock(stock_class, centered_class):
    config = head_config(centered_class, correction="none")
    _assert_stock_equivalent(stock_class, centered_class, config, head_inputs(centered_class))


@pytest.mark.parametrize(("stock_class", "centered_class"), VIT_PAIRS, ids=lambda c: c.__name__)
def test_vit_none_equals_stock(stock_class, centered_class):
    config = head_config(centered_class, correction="none")
    _assert_stock_equivalent(stock_class, centered_class, config, head_inputs(centered_class))


@pytest.mark.parametrize(
    ("stock_class", "centered_class"),
    [pair for pair in BERT_PAIRS + VIT_PAIRS if pair[1] in (*NEW_BERT_HEADS, CenteredViTForMaskedImageModeling)],
    ids=lambda c: c.__name__,
)
def test_stock_head_checkpoint_loads_every_weight(tmp_path, stock_class, centered_class):
    """A stock checkpoint of the same head loads whole (tied decoders and ViT's legacy names included), and with
    `correction="none"` gives the stock outputs."""
    stock = stock_class(stock_config(head_config(centered_class, correction="none"))).eval()
    stock.save_pretrained(tmp_path)
    model, info = centered_class.from_pretrained(tmp_path, correction="none", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs = head_inputs(centered_class)
    with torch.no_grad():
        expected, actual = compared_outputs(stock(**inputs)), compared_outputs(model.eval()(**inputs))
    for name in expected:
        assert real_token_diff(actual[name], expected[name], inputs.get("attention_mask")) <= 1e-6, name
    if centered_class is CenteredBertForPreTraining:
        decoder, embeddings = model.cls.predictions.decoder, model.bert.embeddings.word_embeddings
        assert decoder.weight.data_ptr() == embeddings.weight.data_ptr()


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("model_class", NEW_BERT_HEADS, ids=lambda c: c.__name__)
def test_new_bert_heads_are_padding_invariant(model_class, methods, training):
    """Extra padding changes no output at real tokens: the pooled heads (multiple choice, next sentence) read [CLS],
    question answering and pre-training every real token; the multiple-choice rows are flattened into one batch."""
    model = model_class(head_config(model_class, correction=methods)).train(training)
    inputs = bert_inputs(batch_size=3 * NUM_CHOICES)
    shape = as_choices if model_class is CenteredBertForMultipleChoice else dict
    with torch.no_grad():
        short = compared_outputs(model(**shape(inputs)))
        long = compared_outputs(model(**shape(pad_more(inputs, 5))))
    for name, tensor in short.items():
        if tensor.shape[:2] == inputs["attention_mask"].shape:
            assert max_real_token_diff(tensor, long[name], inputs["attention_mask"]) <= 1e-5, name
        else:
            torch.testing.assert_close(tensor, long[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("name", CORRECTIONS)
def test_zero_strength_equals_stock(name):
    strength = {REGISTRY[name].strength_field: 0.0}
    _assert_stock_equivalent(BertModel, CenteredBertModel, bert_config(correction=name, **strength), bert_inputs())
    _assert_stock_equivalent(ViTModel, CenteredViTModel, vit_config(correction=name, **strength), vit_inputs())


LEARNED = dict(correction_strength="learned")


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_learned_strength_starts_as_the_stock_model(methods, fusion, implementation, training):
    """Gates at 0 reproduce the stock model exactly, on a padded batch, whatever the configured strengths."""
    for stock_class, centered_class, config, inputs in [
        (BertModel, CenteredBertModel, bert_config, bert_inputs()),
        (ViTModel, CenteredViTModel, vit_config, vit_inputs()),
    ]:
        fields = dict(correction=methods, fusion=fusion, attn_implementation=implementation, **LEARNED)
        model = centered_class(config(**fields)).train(training)
        stock = stock_class(stock_config(model.config)).train(training)
        missing, _ = stock.load_state_dict(model.state_dict(), strict=False)
        assert not missing
        with torch.no_grad():
            expected, actual = stock(**inputs).last_hidden_state, model(**inputs).last_hidden_state
        if "attention_mask" in inputs:
            assert max_real_token_diff(actual, expected, inputs["attention_mask"]) <= 1e-6
        else:
            assert (actual - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("architecture", ["bert", "vit"])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
def test_every_learned_gate_gets_a_gradient_at_zero(methods, fusion, architecture):
    """At step 0 the gates are 0, yet every one of them has a non-zero gradient, so training can move it."""
    if architecture == "bert":
        model_class, config, inputs = CenteredBertForSequenceClassification, bert_config, bert_inputs()
    else:
        model_class, config, inputs = CenteredViTForImageClassification, vit_config, vit_inputs()
    model = model_class(config(correction=methods, fusion=fusion, **LEARNED)).train()
    model(**inputs, labels=torch.tensor([0, 2, 1])).loss.backward()
    gates = {name: parameter for name, parameter in model.named_parameters() if "strength_gate" in name}
    expected_gates = sum(len(places) for places in model.correction_strengths().values())
    assert len(gates) == expected_gates > 0
    for name, gate in gates.items():
        assert torch.all(gate == 0) and torch.all(gate.grad != 0), name


def test_correction_strengths_report_the_effective_strength_per_layer_and_head():
    config = vit_config(correction=ALL_CORRECTIONS, fusion="gate", correction_layers=[1, 2], **LEARNED)
    model = CenteredViTModel(config)
    with torch.no_grad():
        model.layers[1].attention.corrections["centered"].strength_gate.copy_(torch.tensor([0.01, -0.02, 0.0, 0.03]))
        model.final_norm_corrections["contranorm"].strength_gate.fill_(-0.005)
        model.fusion.strength_gate.fill_(0.004)
    strengths = model.correction_strengths()
    assert list(strengths) == ["centered", "neutreno", "contranorm", "dgn", "gate fusion"]
    assert list(strengths["centered"]) == ["layer 1", "layer 2"]
    assert strengths["centered"]["layer 1"] == pytest.approx([0.7, -1.4, 0.0, 2.1])  # γ · 100 · θ
    assert strengths["centered"]["layer 2"] == [0.0] * 4
    assert list(strengths["contranorm"]) == ["layer 1", "layer 2", "final norm"]
    assert strengths["contranorm"]["final norm"] == pytest.approx([0.3 * 100 * -0.005])
    assert strengths["gate fusion"] == {"output": pytest.approx([0.4])}
    fixed = CenteredBertModel(bert_config(correction=["centered", "dgn"])).correction_strengths()
    assert fixed == {
        name: {f"layer {i}": [value] for i in range(3)} for name, value in (("centered", 0.7), ("dgn", 0.5))
    }


def test_a_strength_changed_on_the_config_takes_effect():
    model = CenteredBertModel(bert_config(correction=["centered", "contranorm"])).eval()
    inputs = bert_inputs()
    with torch.no_grad():
        corrected = model(**inputs).last_hidden_state
        model.config.centered_scale = model.config.contranorm_scale = 0.0
        stock_like = model(**inputs).last_hidden_state
    stock = BertModel(stock_config(model.config)).eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        expected = stock(**inputs).last_hidden_state
    assert max_real_token_diff(stock_like, expected, inputs["attention_mask"]) <= 1e-6
    assert max_real_token_diff(corrected, expected, inputs["attention_mask"]) > 1e-3


STRUCTURAL_CHANGES = [
    ("correction", ["centered", "dgn"]),
    ("correction_layers", [0]),
    ("fusion", "gate"),
    ("correction_strength", "learned"),
    ("strength_gate_scale", 10.0),
    ("dgn_groups", 4),
]


@pytest.mark.parametrize(("field", "value"), STRUCTURAL_CHANGES, ids=[f for f, _ in STRUCTURAL_CHANGES])
@pytest.mark.parametrize("architecture", ["bert", "vit"])
def test_a_structural_field_changed_on_a_built_model_raises(tmp_path, architecture, field, value):
    """The configuration is the single source of truth: what cannot take effect (the modules are built) raises at the
    next forward and at save_pretrained, instead of saving a config.json that the weights do not match."""
    if architecture == "bert":
        model, inputs = CenteredBertForSequenceClassification(bert_config(correction="centered")), bert_inputs()
    else:
        model, inputs = CenteredViTForImageClassification(vit_config(correction="centered")), vit_inputs()
    model(**inputs)
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=f"{field}=.* \\(built with .*cannot change on a built model"):
        model(**inputs)
    with pytest.raises(ValueError, match=field):
        model.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_invalid_strength_set_on_a_built_model_is_not_saved(tmp_path):
    model = CenteredBertModel(bert_config(correction="centered"))
    model.config.centered_scale = -1.0
    with pytest.raises(ValueError, match=r"centered_scale=-1\.0 is not valid"):
        model.save_pretrained(tmp_path)


@pytest.mark.parametrize("methods", [["dgn"], ALL_CORRECTIONS], ids="+".join)
def test_converting_a_stock_checkpoint_with_learned_strengths_initialises_the_gates(tmp_path, methods):
    """The gates are new parameters: `_init_weights` sets them to 0 (not leftover memory), and the converted model
    equals the stock checkpoint."""
    stock = BertModel(stock_config(bert_config(correction="none"))).eval()
    stock.save_pretrained(tmp_path)
    model, info = CenteredBertModel.from_pretrained(
        tmp_path, correction=methods, fusion="max", output_loading_info=True, **LEARNED
    )
    gates = {name for name, _ in model.named_parameters() if "strength_gate" in name}
    assert gates and gates <= set(info["missing_keys"])
    assert all(torch.all(parameter == 0) for name, parameter in model.named_parameters() if name in gates)
    inputs = bert_inputs()
    with torch.no_grad():
        diff = max_real_token_diff(
            model.eval()(**inputs).last_hidden_state, stock(**inputs).last_hidden_state, inputs["attention_mask"]
        )
    assert diff <= 1e-6


@pytest.mark.parametrize("name", CORRECTIONS)
def test_correction_changes_outputs(name):
    """The equivalence tests above would pass trivially if a correction did nothing."""
    model = CenteredBertModel(bert_config(correction=name)).eval()
    inputs = bert_inputs()
    stock = BertModel(stock_config(model.config)).eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        diff = max_real_token_diff(
            model(**inputs).last_hidden_state, stock(**inputs).last_hidden_state, inputs["attention_mask"]
        )
    assert diff > 1e-3


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_padding_invariance(methods, fusion, training):
    model = CenteredBertForTokenClassification(bert_config(correction=methods, fusion=fusion)).train(training)
    inputs = bert_inputs()
    with torch.no_grad():
        short = model(**inputs).logits
        long = model(**pad_more(inputs, 5)).logits
    assert max_real_token_diff(short, long, inputs["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
def test_eager_equals_sdpa(methods, fusion):
    inputs = bert_inputs()
    bert = CenteredBertModel(bert_config(correction=methods, fusion=fusion, attn_implementation="eager")).eval()
    vit = CenteredViTModel(vit_config(correction=methods, fusion=fusion, attn_implementation="eager")).eval()
    with torch.no_grad():
        bert_eager, vit_eager = bert(**inputs).last_hidden_state, vit(**vit_inputs()).last_hidden_state
        bert.set_attn_implementation("sdpa")
        vit.set_attn_implementation("sdpa")
        bert_sdpa, vit_sdpa = bert(**inputs).last_hidden_state, vit(**vit_inputs()).last_hidden_state
    assert bert.config._attn_implementation == "sdpa"
    assert max_real_token_diff(bert_eager, bert_sdpa, inputs["attention_mask"]) <= 1e-5
    assert (vit_eager - vit_sdpa).abs().max() <= 1e-5


@pytest.mark.parametrize("strength", ["fixed", "learned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_all_padding_row_and_bf16_are_finite(implementation, dtype, strength):
    config = bert_config(
        correction=ALL_CORRECTIONS, fusion="gate", attn_implementation=implementation, correction_strength=strength
    )
    model = CenteredBertForSequenceClassification(config).to(dtype)
    inputs = bert_inputs()
    inputs["attention_mask"][2] = 0
    for training in (True, False):
        model.train(training)
        output = model(**inputs, labels=torch.tensor([0, 1, 2]), output_hidden_states=True)
        assert torch.isfinite(output.logits).all() and torch.isfinite(output.loss)
        assert all(torch.isfinite(h).all() for h in output.hidden_states)
        output.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        gates = [p for name, p in model.named_parameters() if "strength_gate" in name]
        assert all(gate.grad.dtype == dtype and gate.grad.abs().sum() > 0 for gate in gates)
    vit = CenteredViTForImageClassification(vit_config(correction=ALL_CORRECTIONS, fusion="concat")).to(dtype)
    assert torch.isfinite(vit(**vit_inputs()).logits).all()


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("architecture", ["bert", "vit"])
def test_hidden_states_are_the_raw_layers(fusion, architecture):
    """Every fusion leaves `hidden_states` as the unfused model's layers; only `last_hidden_state` is fused."""
    if architecture == "bert":
        model_class, config, inputs = CenteredBertModel, bert_config, bert_inputs()
    else:
        model_class, config, inputs = CenteredViTModel, vit_config, vit_inputs()
    torch.manual_seed(0)
    model = model_class(config(correction="dgn", fusion=fusion)).eval()
    unfused = model_class(config(correction="dgn")).eval()
    unfused.load_state_dict(model.state_dict(), strict=False)  # the same weights, no fusion parameters
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
        expected = unfused(**inputs, output_hidden_states=True)
    assert len(output.hidden_states) == model.config.num_hidden_layers + 1
    for layer, (actual, reference) in enumerate(zip(output.hidden_states, expected.hidden_states, strict=True)):
        torch.testing.assert_close(actual, reference, msg=f"hidden_states[{layer}]")
    fused_differs = not torch.equal(output.last_hidden_state, expected.last_hidden_state)
    assert fused_differs == (fusion not in ("none", "concat"))  # concat starts as "select the last layer"


@pytest.mark.parametrize(("fusion", "tolerance"), [("concat", 1e-6), ("gate", 0.05)])
def test_fusion_initialisation_preserves_the_pretrained_output(tmp_path, fusion, tolerance):
    """Loading a pretrained checkpoint with a new fusion initialises it (`_init_weights`) to keep the output."""
    base = CenteredBertModel(bert_config(correction="none")).eval()
    base.save_pretrained(tmp_path)
    inputs = bert_inputs()
    fused = CenteredBertModel.from_pretrained(tmp_path, fusion=fusion).eval()
    with torch.no_grad():
        reference = base(**inputs, output_hidden_states=True)
        diff = max_real_token_diff(
            fused(**inputs).last_hidden_state, reference.last_hidden_state, inputs["attention_mask"]
        )
        assert diff <= tolerance
        if fusion == "gate":  # the last layer starts at weight 0.99
            weights = fused.encoder.fusion.layer_weights(torch.stack(list(reference.hidden_states[1:])))
            torch.testing.assert_close(weights[-1], torch.full_like(weights[-1], 0.99))


@pytest.mark.parametrize("strength", ["fixed", "learned"])
@pytest.mark.parametrize("architecture", ["bert", "vit"])
@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
def test_gradient_checkpointing_gives_the_same_gradients(methods, use_reentrant, architecture, strength):
    if architecture == "bert":
        model_class, config, inputs = CenteredBertForSequenceClassification, bert_config, bert_inputs()
    else:
        model_class, config, inputs = CenteredViTForImageClassification, vit_config, vit_inputs()
    config = config(correction=methods, fusion="gate", correction_strength=strength)
    labels = torch.tensor([0, 2, 1])
    gradients, running = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = model_class(config).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
        model(**inputs, labels=labels).loss.backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        running.append({n: b.clone() for n, b in model.named_buffers() if "running" in n})
    assert gradients[0].keys() == gradients[1].keys()
    assert (strength == "learned") == any("strength_gate" in name for name in gradients[0])
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], atol=1e-6, rtol=1e-5, msg=name)
    for name in running[0]:  # recomputation must not update DGN's running statistics a second time
        torch.testing.assert_close(running[1][name], running[0][name], msg=name)


def test_torch_compile_smoke():
    """Inductor compiles the combined corrections (about 45 s on 2 cores) and gives the eager outputs."""
    model = CenteredBertForSequenceClassification(bert_config(correction=ALL_CORRECTIONS, fusion="gate")).eval()
    inputs = bert_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(**inputs).logits, expected)


@pytest.mark.parametrize("strength", ["fixed", "learned"])
@pytest.mark.parametrize("methods", [["none"], ALL_CORRECTIONS], ids="+".join)
@pytest.mark.parametrize("fusion", ["none", "concat", "gate"])
def test_save_load_round_trip(tmp_path, methods, fusion, strength):
    bert = CenteredBertForSequenceClassification(
        bert_config(correction=methods, fusion=fusion, correction_layers=[0, 2], correction_strength=strength)
    )
    with torch.no_grad():  # gates away from 0, as after training
        for name, parameter in bert.named_parameters():
            if "strength_gate" in name:
                parameter.normal_(std=0.01)
    bert.train()
    bert(**bert_inputs())  # moves DGN's running statistics off their initial values
    bert.eval()
    bert.save_pretrained(tmp_path / "bert")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    assert type(loaded) is CenteredBertForSequenceClassification
    for field in ("correction", "correction_layers", "fusion", "centered_scale", "dgn_groups", "correction_strength"):
        assert getattr(loaded.config, field) == getattr(bert.config, field)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**bert_inputs()).logits, bert(**bert_inputs()).logits, atol=0, rtol=0)
    vit = CenteredViTForImageClassification(
        vit_config(correction=methods, fusion=fusion, correction_strength=strength)
    ).eval()
    vit.save_pretrained(tmp_path / "vit")
    loaded_vit = AutoModelForImageClassification.from_pretrained(tmp_path / "vit").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded_vit(**vit_inputs()).logits, vit(**vit_inputs()).logits, atol=0, rtol=0)


def test_auto_classes_resolve_to_centered_models():
    bert = bert_config()
    vit = vit_config()
    assert type(AutoConfig.for_model("centered_bert")) is CenteredBertConfig
    assert type(AutoModel.from_config(bert)) is CenteredBertModel
    assert type(AutoModelForSequenceClassification.from_config(bert)) is CenteredBertForSequenceClassification
    assert type(AutoModelForMaskedLM.from_config(bert)) is CenteredBertForMaskedLM
    assert type(AutoModelForTokenClassification.from_config(bert)) is CenteredBertForTokenClassification
    assert type(AutoModelForQuestionAnswering.from_config(bert)) is CenteredBertForQuestionAnswering
    assert type(AutoModelForMultipleChoice.from_config(bert)) is CenteredBertForMultipleChoice
    assert type(AutoModelForNextSentencePrediction.from_config(bert)) is CenteredBertForNextSentencePrediction
    assert type(AutoModelForPreTraining.from_config(bert)) is CenteredBertForPreTraining
    assert type(AutoModel.from_config(vit)) is CenteredViTModel
    assert type(AutoModelForImageClassification.from_config(vit)) is CenteredViTForImageClassification
    assert type(AutoModelForMaskedImageModeling.from_config(vit)) is CenteredViTForMaskedImageModeling
    assert type(AutoModelForSemanticSegmentation.from_config(vit)) is CenteredViTForSemanticSegmentation
    assert hf_centered.available_corrections()[0] == "none"
    assert set(hf_centered.available_fusions()) == {"none", "concat", "max", "gate"}


@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
def test_sparse_prediction_scores_the_labelled_positions_with_the_dense_loss(methods):
    torch.manual_seed(0)
    dense = CenteredBertForMaskedLM(bert_config(correction=methods)).train()
    sparse = CenteredBertForMaskedLM(bert_config(correction=methods, sparse_prediction=True)).train()
    sparse.load_state_dict(dense.state_dict())
    inputs = bert_inputs()
    labels = torch.where(torch.rand(inputs["input_ids"].shape) < 0.3, inputs["input_ids"], -100)
    labels[inputs["attention_mask"] == 0] = -100
    labelled = labels != -100
    outputs = {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        torch.manual_seed(1)  # the same dropout masks
        output = model(**inputs, labels=labels)
        output.loss.backward()
        outputs[name] = output
    expected = torch.nn.functional.cross_entropy(outputs["dense"].logits[labelled], labels[labelled])
    assert outputs["sparse"].logits.shape == (int(labelled.sum()), dense.config.vocab_size)
    torch.testing.assert_close(outputs["sparse"].logits, outputs["dense"].logits[labelled])
    torch.testing.assert_close(outputs["sparse"].loss, expected)
    torch.testing.assert_close(outputs["dense"].loss, expected)
    for (name, dense_parameter), sparse_parameter in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        if dense_parameter.grad is not None:
            torch.testing.assert_close(sparse_parameter.grad, dense_parameter.grad, msg=name)
    sparse.eval()
    with torch.no_grad():  # without labels (inference, pipelines) every position is scored
        assert sparse(**inputs).logits.shape == (*inputs["input_ids"].shape, dense.config.vocab_size)
        assert isinstance(sparse(**inputs, labels=labels, return_dict=False), tuple)


def test_masked_lm_keeps_tied_embeddings():
    model = CenteredBertForMaskedLM(bert_config())
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()


@pytest.mark.parametrize("methods", [["none"], ["centered", "dgn"]], ids="+".join)
def test_stock_bert_checkpoint_loads_every_weight(tmp_path, methods):
    stock = BertForMaskedLM(stock_config(bert_config(correction="none")))
    stock.save_pretrained(tmp_path)
    model, info = CenteredBertForSequenceClassification.from_pretrained(
        tmp_path, correction=methods, fusion="concat", num_labels=4, output_loading_info=True
    )
    new = {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
        "bert.encoder.fusion.weight",
        "bert.encoder.fusion.bias",
    }
    if "dgn" in methods:
        new |= {
            f"bert.encoder.layer.{i}.corrections.dgn.{name}"
            for i in range(3)
            for name in ("assign.weight", "assign.bias", "weight", "bias", "running_mean", "running_var")
        }
    assert set(info["missing_keys"]) == new
    assert set(info["unexpected_keys"]) <= {k for k in stock.state_dict() if k.startswith("cls.")}
    assert model.config.model_type == "centered_bert" and model.config.correction == methods
    stock_weights = stock.state_dict()
    for name, tensor in model.state_dict().items():
        if name not in new:
            assert torch.equal(tensor, stock_weights[name]), name
    if "dgn" in methods:  # new buffers are initialised too, not left as uninitialised memory from the meta device
        dgn = model.bert.encoder.layer[1].corrections.dgn
        assert torch.all(dgn.running_var == 1) and torch.all(dgn.running_mean == 0) and torch.all(dgn.weight == 1)


def test_legacy_vit_checkpoint_loads(tmp_path):
    stock = ViTModel(stock_config(vit_config()), add_pooling_layer=False)
    stock.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        assert "encoder.layer.0.attention.attention.query.weight" in set(saved.keys())
    model, info = CenteredViTForImageClassification.from_pretrained(
        tmp_path, correction=["centered", "contranorm"], num_labels=5, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"]
    stock_weights = stock.state_dict()
    for name, tensor in model.vit.state_dict().items():
        torch.testing.assert_close(tensor, stock_weights[name], atol=0, rtol=0, msg=name)
    model.save_pretrained(tmp_path / "ours")
    with safe_open(tmp_path / "ours" / "model.safetensors", "pt") as saved:
        assert "vit.encoder.layer.2.attention.attention.value.weight" in set(saved.keys())


def test_invalid_assignment_is_caught_when_building_a_model():
    config = bert_config()
    config.correction = "bogus"
    with pytest.raises(ValueError, match="correction"):
        CenteredBertModel(config)


def _saved_for_backward(model: torch.nn.Module, inputs: dict, activation_bytes: int) -> tuple[int, list[torch.Tensor]]:
    """How many storages of at least `activation_bytes` autograd saves for backward (parameters excluded; views
    count once), and every floating-point tensor saved."""
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    large, floating = set(), []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and storage.nbytes() >= activation_bytes:
            large.add(storage.data_ptr())
        if tensor.is_floating_point():
            floating.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return len(large), floating


@pytest.mark.parametrize("strength", ["fixed", "learned"])
@pytest.mark.parametrize("method", [*CORRECTIONS, *(f"fusion:{name}" for name in FUSIONS if name != "none")])
def test_backward_keeps_only_the_declared_extra_activations(method, strength):
    """A method's `saved_activations` is exactly what training BERT costs on top of the stock model, counted in
    `(B, n, d)` tensors that autograd saves (each correction per call), and nothing n×n is saved: SDPA keeps none.
    Learned strengths keep nothing more for the corrections; a gated fusion keeps the difference it multiplies."""
    kwargs = {"fusion": method.split(":")[1]} if method.startswith("fusion:") else {"correction": method}
    kwargs["correction_strength"] = strength
    inputs = bert_inputs()
    batch, seq_len = inputs["input_ids"].shape
    activation_bytes = batch * seq_len * bert_config().hidden_size * 4
    counts = {}
    for variant, config in [("stock", bert_config(correction="none")), ("ours", bert_config(**kwargs))]:
        torch.manual_seed(0)
        model = CenteredBertModel(config).train()
        counts[variant], floating = _saved_for_backward(model, inputs, activation_bytes)
    if method.startswith("fusion:"):
        fusion = model.encoder.fusion
        expected = fusion.saved_activations + (fusion.strength_gate is not None)
    else:  # in BERT each instance acts once per forward
        instances = [module for module in model.modules() if isinstance(module, REGISTRY[method])]
        expected = REGISTRY[method].saved_activations * len(instances)
        assert instances
    assert counts["ours"] - counts["stock"] == expected
    # SDPA on CPU also saves the padding mask as an additive (B, 1, n, n) float tensor; it needs no gradient.
    assert not any(tensor.requires_grad and tensor.shape[-2:] == (seq_len, seq_len) for tensor in floating)


# Semantic segmentation: a 15×15 image in 3×3 patches (a 5×5 grid), 5 classes.
SEGMENTATION_SIZES = dict(image_size=15, patch_size=3, num_labels=5)


def reference_segmentation_logits(model: CenteredViTForSemanticSegmentation, pixel_values, **kwargs) -> torch.Tensor:
    """Segmenter's linear decoder written out: each patch token (row-major over the grid, after [CLS]) times the
    decoder's weights, laid out on the `(H/p, W/p)` grid, bilinearly upsampled to the image's size."""
    batch_size, _, height, width = pixel_values.shape
    patch = SEGMENTATION_SIZES["patch_size"]
    tokens = model.vit(pixel_values, **kwargs).last_hidden_state[:, 1:]
    weight, bias = model.decode_head.weight, model.decode_head.bias
    grid = torch.einsum("bnd,kd->bnk", tokens, weight) + bias
    grid = grid.reshape(batch_size, height // patch, width // patch, -1).permute(0, 3, 1, 2)
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)


def reference_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean over the pixels whose label is not `ignore_index` of −log softmax(logits)[label]."""
    kept = labels != ignore_index
    log_probabilities = logits.permute(0, 2, 3, 1)[kept].log_softmax(dim=-1)
    return -log_probabilities.gather(1, labels[kept][:, None]).mean()


@pytest.mark.parametrize(
    ("height", "width", "interpolate"),
    [(15, 15, False), (15, 9, True), (16, 11, True)],
    ids=["config-size", "non-square", "not-a-multiple-of-the-patch"],
)
@pytest.mark.parametrize(
    "fields",
    [{"correction": ["none"]}, *({"correction": methods} for methods in METHOD_SETS), {"fusion": "gate"}],
    ids=["none", *("+".join(methods) for methods in METHOD_SETS), "centered+gate-fusion"],
)
def test_segmentation_logits_and_loss_follow_segmenters_linear_decoder(fields, height, width, interpolate):
    """Logits `(B, num_labels, H, W)` at the input's size on odd and non-square sizes, equal to the decoder written
    out (under every correction, and on fused tokens); the loss is the cross-entropy averaged over the pixels not
    labelled `semantic_loss_ignore_index`."""
    config = vit_config(**fields, **SEGMENTATION_SIZES)
    model = CenteredViTForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, height, width)
    labels = torch.randint(0, config.num_labels, (2, height, width))
    labels[0, :4] = config.semantic_loss_ignore_index  # the top rows of one image are not annotated
    kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
    with torch.no_grad():
        output = model(pixel_values=pixel_values, labels=labels, **kwargs)
        expected = reference_segmentation_logits(model, pixel_values, **kwargs)
    assert isinstance(output, SemanticSegmenterOutput)
    assert output.logits.shape == (2, config.num_labels, height, width)
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.loss, reference_cross_entropy(expected, labels, 255), atol=1e-5, rtol=1e-5)


def test_segmentation_loss_ignores_the_configured_label_and_trains_the_decoder():
    """Pixels labelled `semantic_loss_ignore_index` (here 3, a class id) get no gradient and leave the loss the mean
    over the other pixels; the gradient reaches the decoder and the backbone's first layer."""
    model = CenteredViTForSemanticSegmentation(vit_config(semantic_loss_ignore_index=3, **SEGMENTATION_SIZES))
    pixel_values = torch.randn(2, 3, 15, 15)
    labels = torch.randint(0, 5, (2, 15, 15))
    labels[:, :, :6] = 3
    output = model(pixel_values=pixel_values, labels=labels)
    output.logits.retain_grad()
    output.loss.backward()
    ignored = (labels == 3)[:, None].expand_as(output.logits)
    assert torch.all(output.logits.grad[ignored] == 0) and output.logits.grad[~ignored].abs().min() > 0
    expected = reference_cross_entropy(output.logits.detach(), labels, ignore_index=3)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.decode_head.weight.grad.abs().sum() > 0
    assert model.vit.layers[0].attention.q_proj.weight.grad.abs().sum() > 0


def test_segmentation_head_loads_a_stock_vit_checkpoint(tmp_path):
    """Every backbone weight of a stock ViT checkpoint (legacy names) loads; only the decoder is new, initialised by
    `_init_weights` as transformers initialises a linear layer (N(0, initializer_range), bias 0)."""
    stock = ViTModel(stock_config(vit_config(image_size=15, patch_size=3)), add_pooling_layer=False)
    stock.save_pretrained(tmp_path)
    model, info = CenteredViTForSemanticSegmentation.from_pretrained(
        tmp_path, correction="centered", num_labels=40, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"decode_head.weight", "decode_head.bias"} and not info["unexpected_keys"]
    for name, tensor in stock.state_dict().items():
        assert torch.equal(model.vit.state_dict()[name], tensor), name
    assert torch.all(model.decode_head.bias == 0)
    assert model.decode_head.weight.std().item() == pytest.approx(model.config.initializer_range, rel=0.2)


def test_segmentation_refuses_a_loss_over_one_class():
    model = CenteredViTForSemanticSegmentation(vit_config(image_size=15, patch_size=3, num_labels=1))
    with pytest.raises(ValueError, match="num_labels=1"):
        model(pixel_values=torch.randn(1, 3, 15, 15), labels=torch.zeros(1, 15, 15, dtype=torch.long))


@pytest.mark.parametrize("value", ["255", 2.0, True, None])
def test_semantic_loss_ignore_index_is_validated_and_saved(tmp_path, value):
    assert CenteredViTConfig().semantic_loss_ignore_index == 255
    with pytest.raises(StrictDataclassFieldValidationError, match=f"semantic_loss_ignore_index={value!r} is not"):
        CenteredViTConfig(semantic_loss_ignore_index=value)
    vit_config(semantic_loss_ignore_index=-100).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).semantic_loss_ignore_index == -100
    with pytest.raises(StrictDataclassFieldValidationError, match="semantic_loss_ignore_index"):
        CenteredViTConfig.from_pretrained(tmp_path, semantic_loss_ignore_index=value)
