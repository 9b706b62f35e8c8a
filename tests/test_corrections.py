"""Each correction, alone and combined, equals the explicit materialised implementation of tests/reference.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ALL_CORRECTIONS, CORRECTIONS, FUSIONS, bert_config, bert_inputs, vit_config, vit_inputs
from reference import bert_forward, vit_forward

from hf_centered import CenteredBertModel, CenteredViTModel
from hf_centered.correction_base import ATTENTION_SITE, CorrectionState
from hf_centered.corrections import CORRECTIONS as REGISTRY

METHOD_SETS = [[name] for name in CORRECTIONS] + [ALL_CORRECTIONS]
IMPLEMENTATIONS = ["eager", "sdpa"]
# Learned gates of g = 2θ with θ drawn around 0 below: strengths of both signs, of the order of the configured ones.
STRENGTHS = {"fixed": {}, "learned": {"correction_strength": "learned", "strength_gate_scale": 2.0}}


def _randomise_new_parameters(model: torch.nn.Module) -> None:
    """Moves DGN's affine/running statistics, the fusions and the learned gates off their initial values, so they are
    really tested."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if ("corrections" in name or "fusion" in name) and tensor.is_floating_point():
                noise = 0.2 * torch.randn(tensor.shape, generator=generator)
                tensor.copy_(tensor.abs() + noise.abs() if "running_var" in name else tensor + noise)


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bert_matches_explicit_formula(methods, implementation, training, strength):
    config = bert_config(
        correction=methods, correction_layers=[1, 2], attn_implementation=implementation, **STRENGTHS[strength]
    )
    model = CenteredBertModel(config)
    _randomise_new_parameters(model)
    model.train(training)
    inputs = bert_inputs()
    with torch.no_grad():
        expected = bert_forward(model, inputs["input_ids"], inputs["attention_mask"])
        actual = model(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert (actual[real] - expected[real]).abs().max() < 2e-5


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_vit_matches_explicit_formula(methods, implementation, training, strength):
    config = vit_config(correction=methods, attn_implementation=implementation, **STRENGTHS[strength])
    model = CenteredViTModel(config, add_pooling_layer=False)
    _randomise_new_parameters(model)
    model.train(training)
    inputs = vit_inputs()
    with torch.no_grad():
        expected = vit_forward(model, inputs["pixel_values"])
        actual = model(**inputs).last_hidden_state
    assert (actual - expected).abs().max() < 2e-5


def _gradients(output: torch.Tensor, weights: torch.Tensor, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    parameters = dict(model.named_parameters())
    grads = torch.autograd.grad((output * weights).sum(), list(parameters.values()), allow_unused=True)
    return {name: grad for name, grad in zip(parameters, grads, strict=True) if grad is not None}


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("architecture", ["bert", "vit"])
@pytest.mark.parametrize("methods", METHOD_SETS, ids="+".join)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradients_match_explicit_formula(methods, architecture, training, strength):
    """Every layer corrected (layer 0 too); V⁰ must not be detached, DGN's batch statistics are differentiated; the
    learned gates get the gradient of the explicit formula. In float64: a gate's gradient sums over every token and
    feature, where float32 rounding would hide an error of a few percent."""
    fields = {"correction": methods, "fusion": "max", **STRENGTHS[strength]}
    if architecture == "bert":
        model, inputs = CenteredBertModel(bert_config(**fields)), bert_inputs()
        real = inputs["attention_mask"].bool()

        def reference():
            return bert_forward(model, inputs["input_ids"], inputs["attention_mask"])
    else:
        model, inputs = CenteredViTModel(vit_config(**fields), add_pooling_layer=False), vit_inputs()
        real = None

        def reference():
            return vit_forward(model, inputs["pixel_values"])

    _randomise_new_parameters(model)
    model.train(training).double()
    inputs = {name: tensor.double() if tensor.is_floating_point() else tensor for name, tensor in inputs.items()}
    expected_output = reference()
    weights = torch.randn(expected_output.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if real is not None:  # padded positions carry no loss
        weights = weights * real[..., None]
    expected = _gradients(expected_output, weights, model)
    actual = _gradients(model(**inputs).last_hidden_state, weights, model)
    assert actual.keys() == expected.keys()
    if strength == "learned":
        gated_places = sum(len(places) for places in model.correction_strengths().values())
        assert sum("strength_gate" in name for name in actual) == gated_places > 0
    if "neutreno" in methods:  # V⁰ feeds every later layer, so its projection gets NeuTRENO's gradient too
        first_value = (
            "encoder.layer.0.attention.self.value.weight"
            if architecture == "bert"
            else "layers.0.attention.v_proj.weight"
        )
        assert first_value in actual
    for name in expected:  # rounding noise scales with the tensor (key biases have an exact gradient of 0)
        deviation = (actual[name] - expected[name]).abs().max()
        assert deviation <= 1e-10 * expected[name].abs().max() + 1e-12, (name, float(deviation))


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("fusion", [name for name in FUSIONS if name != "none"])
@pytest.mark.parametrize("family", ["bert", "vit"])
def test_fusion_matches_explicit_formula(fusion, family, strength):
    if family == "bert":
        model = CenteredBertModel(bert_config(correction="centered", fusion=fusion, **STRENGTHS[strength]))
        _randomise_new_parameters(model)
        inputs = bert_inputs()
        with torch.no_grad():
            expected = bert_forward(model.eval(), inputs["input_ids"], inputs["attention_mask"])
            actual = model(**inputs).last_hidden_state
        real = inputs["attention_mask"].bool()
        actual, expected = actual[real], expected[real]
    else:
        model = CenteredViTModel(
            vit_config(correction="contranorm", fusion=fusion, **STRENGTHS[strength]), add_pooling_layer=False
        )
        _randomise_new_parameters(model)
        with torch.no_grad():
            expected = vit_forward(model.eval(), vit_inputs()["pixel_values"])
            actual = model(**vit_inputs()).last_hidden_state
    assert (actual - expected).abs().max() < 2e-5


@pytest.mark.parametrize("name", CORRECTIONS)
def test_registry_entry_is_documented(name):
    correction = REGISTRY[name]
    doc = correction.__module__ and __import__(correction.__module__, fromlist=["_"]).__doc__
    assert "arXiv" in doc and ".. math::" in doc and "Arguments ↔ symbols" in doc
    assert correction.strength_field in correction.hyperparameters
    assert correction.citation.startswith("@") and "title" in correction.citation


def test_dgn_running_statistics_follow_batchnorm_update():
    """Train mode updates the running statistics like BatchNorm1d over the real tokens (unbiased variance)."""
    model = CenteredBertModel(bert_config(correction="dgn", dgn_momentum=0.3)).train()
    dgn = model.encoder.layer[0].corrections.dgn
    inputs = bert_inputs()
    captured = {}
    dgn.register_forward_hook(lambda module, args, output: captured.setdefault("input", args[0].detach()))
    running_mean, running_var = dgn.running_mean.clone(), dgn.running_var.clone()
    with torch.no_grad():
        model(**inputs)
    tokens = captured["input"][inputs["attention_mask"].bool()]
    assignment = torch.softmax(dgn.assign(tokens), dim=-1)
    grouped = (assignment[:, :, None] * tokens[:, None, :]).reshape(tokens.shape[0], -1)
    expected_mean, expected_var = running_mean.flatten().clone(), running_var.flatten().clone()
    torch.nn.functional.batch_norm(grouped, expected_mean, expected_var, training=True, momentum=0.3)
    assert torch.allclose(dgn.running_mean.flatten(), expected_mean, atol=1e-6)
    assert torch.allclose(dgn.running_var.flatten(), expected_var, atol=1e-5)


def test_readme_documents_every_method():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in [*CORRECTIONS, *(fusion for fusion in FUSIONS if fusion != "none")]:
        assert f"`{name}`" in readme, name
    for correction in REGISTRY.values():
        assert correction.citation in readme, correction.name


@pytest.mark.parametrize("mask_form", ["flash_2d", "sdpa_bool", "eager_additive"])
def test_padding_mask_recovered_from_every_backend_mask(mask_form):
    from hf_centered.modeling_common import padding_mask_from_attention_mask

    padding = bert_inputs()["attention_mask"].bool()
    if mask_form == "flash_2d":
        mask = padding.long()
    elif mask_form == "sdpa_bool":
        mask = padding[:, None, None, :].expand(-1, 1, padding.shape[1], -1)
    else:
        mask = torch.zeros(padding.shape[0], 1, padding.shape[1], padding.shape[1])
        mask = mask.masked_fill(~padding[:, None, None, :], torch.finfo(torch.float32).min)
    assert torch.equal(padding_mask_from_attention_mask(mask, *padding.shape), padding)
    assert padding_mask_from_attention_mask(None, *padding.shape) is None
    with pytest.raises(ValueError, match="BlockMask"):
        padding_mask_from_attention_mask(object(), *padding.shape)


@pytest.mark.parametrize("name", [name for name in CORRECTIONS if REGISTRY[name].site == ATTENTION_SITE])
def test_value_shift_folds_exactly_into_the_attention(name):
    """A correction with a `value_shift` T gives A·(V − T) = its own result on A·V, for any row-stochastic A."""
    correction = REGISTRY[name](bert_config(correction=name), layer_idx=1)
    generator = torch.Generator().manual_seed(0)
    batch, heads, seq_len, head_size = 3, 4, 7, 9
    value, first_values = torch.randn(2, batch, heads, seq_len, head_size, generator=generator)
    real = bert_inputs()["attention_mask"].bool()
    scores = torch.randn(batch, heads, seq_len, seq_len, generator=generator)
    weights = torch.softmax(scores.masked_fill(~real[:, None, None, :], float("-inf")), dim=-1)
    state = CorrectionState(padding_mask=real, first_values=first_values)
    expected = correction((weights @ value).transpose(1, 2), value, state)
    shift = correction.value_shift(value, state)
    if shift is None:  # a token-wise term (NeuTRENO) has no such form
        assert not torch.allclose(expected, (weights @ value).transpose(1, 2))
    else:
        assert shift.shape == (batch, heads, 1, head_size)
        torch.testing.assert_close((weights @ (value - shift)).transpose(1, 2), expected)


def test_centered_attention_with_dropout_subtracts_after_the_dropout():
    """With attention dropout the rows of Drop(A) no longer sum to 1: the mean is subtracted after the backend."""
    config = bert_config(correction="centered", attention_probs_dropout_prob=0.5, attn_implementation="eager")
    attention = CenteredBertModel(config).encoder.layer[1].attention.self.train()
    hidden = torch.randn(3, 7, config.hidden_size, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    with torch.no_grad():
        actual, _ = attention(hidden)
        heads = [
            projection(hidden).view(3, 7, config.num_attention_heads, -1).transpose(1, 2)
            for projection in (attention.query, attention.key, attention.value)
        ]
        query, key, value = heads
        weights = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
        torch.manual_seed(5)
        weights = torch.nn.functional.dropout(weights, p=0.5, training=True)
        context = weights @ value - config.centered_scale * value.mean(dim=2, keepdim=True)
    torch.testing.assert_close(actual, context.transpose(1, 2).reshape(3, 7, -1))


def _output_projections(model: torch.nn.Module) -> list[torch.nn.Linear]:
    if isinstance(model, CenteredBertModel):
        return [layer.attention.output.dense for layer in model.encoder.layer]
    return [layer.attention.o_proj for layer in model.layers]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("architecture", ["bert", "vit"])
@pytest.mark.parametrize("name", [name for name in CORRECTIONS if REGISTRY[name].site == ATTENTION_SITE])
def test_projection_computed_by_a_correction_equals_calling_the_projection(name, architecture, autocast):
    """`Correction.project` gives the outputs and every gradient that the output projection applied to the
    correction's result gives. A forward hook on the projection turns it off (the hook must see the call), as a PEFT
    adapter does; under autocast the gradients keep their parameters' dtype."""
    if architecture == "bert":
        model, inputs = CenteredBertModel(bert_config(correction=name)).train(), bert_inputs()
    else:
        model, inputs = CenteredViTModel(vit_config(correction=name), add_pooling_layer=False).train(), vit_inputs()
    _randomise_new_parameters(model)

    def output_and_gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = model(**inputs).last_hidden_state
        weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(3))
        return output.float(), _gradients(output.float(), weights, model)

    output, gradients = output_and_gradients()
    calls = []
    handles = [
        projection.register_forward_hook(lambda module, args, result: calls.append(module))
        for projection in _output_projections(model)
    ]
    expected_output, expected = output_and_gradients()
    for handle in handles:
        handle.remove()
    assert len(calls) == len(handles)
    assert gradients.keys() == expected.keys()
    tolerance = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(output, expected_output, rtol=tolerance, atol=tolerance)
    for parameter_name, parameter in model.named_parameters():
        if parameter_name in expected:
            assert gradients[parameter_name].dtype == parameter.dtype
            deviation = (gradients[parameter_name] - expected[parameter_name]).abs().max()
            assert deviation <= tolerance * expected[parameter_name].abs().max() + 1e-6, parameter_name


def test_only_a_plain_unobserved_linear_is_computed_by_a_correction():
    from peft import LoraConfig, get_peft_model

    from hf_centered.modeling_common import is_plain_linear

    assert is_plain_linear(torch.nn.Linear(3, 4))
    assert not is_plain_linear(type("SubclassedLinear", (torch.nn.Linear,), {})(3, 4))
    hooked = torch.nn.Linear(3, 4)
    hooked.register_forward_pre_hook(lambda module, args: None)
    assert not is_plain_linear(hooked)
    replaced = torch.nn.Linear(3, 4)
    replaced.forward = lambda tensor: tensor  # what accelerate's device hooks do
    assert not is_plain_linear(replaced)
    model = CenteredBertModel(bert_config(correction="neutreno"))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["dense"]))
    assert not is_plain_linear(peft_model.base_model.model.encoder.layer[1].attention.output.dense)


@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_causal_contranorm_compares_each_token_with_the_earlier_real_ones(padding):
    """A decoder's ContraNorm (`CorrectionState.causal`) against the explicit masked softmax, per sequence."""
    config = bert_config(correction="contranorm")
    contranorm = REGISTRY["contranorm"](config, 0)
    hidden = torch.randn(3, 6, config.hidden_size, generator=torch.Generator().manual_seed(2), requires_grad=True)
    real = torch.ones(3, 6, dtype=torch.bool)
    if padding == "left":
        real[1, :2] = False
    elif padding == "right":
        real[2, 4:] = False
    state = CorrectionState(padding_mask=None if padding == "none" else real, causal=True)
    actual = contranorm(hidden, state)
    expected = hidden.clone()
    for b in range(3):
        directions = hidden[b] / hidden[b].norm(dim=-1, keepdim=True)
        scores = directions @ directions.T / config.contranorm_tau
        allowed = (torch.ones(6, 6, dtype=torch.bool).tril() & real[b][None, :])[real[b]]  # the real queries' rows
        similar = scores[real[b]].masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ hidden[b]
        expected[b][real[b]] = hidden[b][real[b]] - config.contranorm_scale * similar
    assert torch.allclose(actual[real], expected[real], atol=1e-6)
    grad = torch.randn_like(actual)
    (actual_grad,) = torch.autograd.grad(actual[real], hidden, grad[real])
    (expected_grad,) = torch.autograd.grad(expected[real], hidden, grad[real])
    assert torch.allclose(actual_grad, expected_grad, atol=1e-6)
