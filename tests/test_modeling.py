"""Model classes: stock equivalence, padding invariance, backends, dtypes, checkpointing, saving and loading."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL_CORRECTIONS,
    CORRECTIONS,
    FUSIONS,
    bert_config,
    bert_inputs,
    max_real_token_diff,
    pad_more,
    stock_config,
    vit_config,
    vit_inputs,
)
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    ViTForImageClassification,
    ViTModel,
)

import hf_centered
from hf_centered import (
    CenteredBertConfig,
    CenteredBertForMaskedLM,
    CenteredBertForSequenceClassification,
    CenteredBertForTokenClassification,
    CenteredBertModel,
    CenteredViTForImageClassification,
    CenteredViTModel,
)
from hf_centered.corrections import CORRECTIONS as REGISTRY

METHOD_SETS = [[name] for name in CORRECTIONS] + [ALL_CORRECTIONS]
BERT_PAIRS = [
    (BertModel, CenteredBertModel),
    (BertForSequenceClassification, CenteredBertForSequenceClassification),
    (BertForMaskedLM, CenteredBertForMaskedLM),
    (BertForTokenClassification, CenteredBertForTokenClassification),
]
VIT_PAIRS = [(ViTModel, CenteredViTModel), (ViTForImageClassification, CenteredViTForImageClassification)]


def _main_output(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _assert_stock_equivalent(stock_class, centered_class, config, inputs, tol=1e-6):
    model = centered_class(config).eval()
    stock = stock_class(stock_config(config)).eval()
    missing, unexpected = stock.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all("corrections" in name for name in unexpected)
    with torch.no_grad():
        expected, actual = _main_output(stock(**inputs)), _main_output(model(**inputs))
    if "attention_mask" in inputs and actual.dim() == 3:  # per-token outputs: padded positions are garbage
        assert max_real_token_diff(actual, expected, inputs["attention_mask"]) <= tol
    else:
        assert (actual - expected).abs().max() <= tol


@pytest.mark.parametrize(("stock_class", "centered_class"), BERT_PAIRS, ids=lambda c: c.__name__)
def test_bert_none_equals_stock(stock_class, centered_class):
    _assert_stock_equivalent(stock_class, centered_class, bert_config(correction="none"), bert_inputs())


@pytest.mark.parametrize(("stock_class", "centered_class"), VIT_PAIRS, ids=lambda c: c.__name__)
def test_vit_none_equals_stock(stock_class, centered_class):
    _assert_stock_equivalent(stock_class, centered_class, vit_config(correction="none"), vit_inputs())


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
    assert type(AutoModel.from_config(vit)) is CenteredViTModel
    assert type(AutoModelForImageClassification.from_config(vit)) is CenteredViTForImageClassification
    assert hf_centered.available_corrections()[0] == "none"
    assert set(hf_centered.available_fusions()) == {"none", "concat", "max", "gate"}


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
