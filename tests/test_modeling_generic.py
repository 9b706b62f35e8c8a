"""The generic path: `correct()` on tiny configurations of every supported family, against the stock models, the
dedicated BERT/ViT classes and explicit formulas."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import STRONG
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

import hf_centered
from hf_centered.correction_base import CorrectionState, attended_key_mean
from hf_centered.corrections import CORRECTIONS
from hf_centered.modeling_generic import (
    CORRECTED_PREFIX,
    GENERIC_CORRECTIONS,
    ForwardContext,
    correct,
    corrected_backend,
)

# Tiny odd-sized configurations of every family the generic path supports (GQA where the family has it).
FAMILIES = {
    "bert": (transformers.BertConfig, dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3)),
    "roberta": (transformers.RobertaConfig, dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3)),
    "distilbert": (transformers.DistilBertConfig, dict(dim=24, n_layers=3, n_heads=3, hidden_dim=37)),
    "electra": (
        transformers.ElectraConfig,
        dict(embedding_size=16, hidden_size=24, num_hidden_layers=3, num_attention_heads=3),
    ),
    "modernbert": (
        transformers.ModernBertConfig,
        dict(
            hidden_size=24, num_hidden_layers=3, num_attention_heads=3, local_attention=4, global_attn_every_n_layers=2
        ),
    ),
    "llama": (
        transformers.LlamaConfig,
        dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    ),
    "qwen2": (
        transformers.Qwen2Config,
        dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    ),
    "gpt2": (transformers.GPT2Config, dict(n_embd=24, n_layer=3, n_head=3)),
    "vit": (transformers.ViTConfig, dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3)),
    "deit": (transformers.DeiTConfig, dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3)),
    "dinov2": (
        transformers.Dinov2Config,
        dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3, mlp_ratio=2),
    ),
}
TEXT_SIZES = dict(vocab_size=99, max_position_embeddings=64)
IMAGE_SIZES = dict(image_size=12, patch_size=4)
IMAGE_FAMILIES = ("vit", "deit", "dinov2")
DECODERS = ("llama", "qwen2", "gpt2")
ENCODERS = tuple(name for name in FAMILIES if name not in IMAGE_FAMILIES + DECODERS)
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
CORRECTION_SETS = [[name] for name in GENERIC_CORRECTIONS] + [list(GENERIC_CORRECTIONS)]
FUSIONS = [name for name in hf_centered.available_fusions() if name != "none"]
ZERO_STRENGTH = {cls.strength_field: 0.0 for cls in CORRECTIONS.values()}


def family_config(family: str, **fields):
    config_class, sizes = FAMILIES[family]
    extra = IMAGE_SIZES if family in IMAGE_FAMILIES else {**TEXT_SIZES, **TOKEN_IDS}
    return config_class(**sizes, **extra, intermediate_size=37, **fields)


def stock_model(family: str, head: type | None = None, **fields) -> nn.Module:
    torch.manual_seed(0)
    head = head or (transformers.AutoModelForCausalLM if family in DECODERS else transformers.AutoModel)
    return head.from_config(family_config(family, **fields)).eval()


def padded_inputs(family: str, side: str = "right") -> dict[str, torch.Tensor]:
    """Two sequences of 7 tokens, the second with 2 padding tokens (images: two images)."""
    if family in IMAGE_FAMILIES:
        return {"pixel_values": torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))}
    input_ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    if side == "left":
        attention_mask = attention_mask.flip(-1)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family == "gpt2":  # absolute positions: counted over the real tokens, as `generate` does
        inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return inputs


def output_of(model: nn.Module, inputs: dict) -> torch.Tensor:
    output = model(**inputs)
    return output.logits if hasattr(output, "logits") and output.logits is not None else output.last_hidden_state


def real_rows(tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    return tensor if mask is None else tensor[mask.bool()]


def corrected(model: nn.Module, names: list[str], **fields) -> nn.Module:
    torch.manual_seed(6)  # DGN's group assignment is initialised at random
    return correct(copy.deepcopy(model), correction=names, **{**STRONG, **fields})


@pytest.mark.parametrize("names", CORRECTION_SETS, ids="+".join)
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_strength_equals_stock_and_a_strength_changes_the_outputs(family, names):
    stock = stock_model(family)
    inputs = padded_inputs(family)
    expected = output_of(stock, inputs)
    with torch.no_grad():
        zero = output_of(corrected(stock, names, **ZERO_STRENGTH), inputs)
        strong = output_of(corrected(stock, names), inputs)
    assert torch.equal(real_rows(zero, inputs), real_rows(expected, inputs))
    assert (real_rows(strong, inputs) - real_rows(expected, inputs)).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_are_recorded_as_by_the_stock_model(family):
    stock = stock_model(family)
    inputs = padded_inputs(family)
    model = corrected(stock, list(GENERIC_CORRECTIONS), **ZERO_STRENGTH)
    with torch.no_grad():
        expected = stock(**inputs, output_hidden_states=True).hidden_states
        actual = model(**inputs, output_hidden_states=True).hidden_states
    assert len(actual) == len(expected) == stock.config.num_hidden_layers + 1
    for layer, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert torch.equal(real_rows(mine, inputs), real_rows(theirs, inputs)), layer


@pytest.mark.parametrize("fusion", ["none", *FUSIONS])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("family", FAMILIES)
def test_learned_strengths_start_as_the_stock_model(family, training, fusion):
    stock = stock_model(family, attention_probs_dropout_prob=0.0) if family in ("bert", "roberta", "electra") else None
    stock = stock or stock_model(family)
    model = corrected(stock, list(GENERIC_CORRECTIONS), correction_strength="learned", fusion=fusion)
    inputs = padded_inputs(family)
    stock.train(training), model.train(training)
    torch.manual_seed(2)
    expected = output_of(stock, inputs)
    torch.manual_seed(2)
    actual = output_of(model, inputs)
    assert torch.allclose(real_rows(actual, inputs), real_rows(expected, inputs), atol=1e-6)


@pytest.mark.parametrize(
    ("names", "fusion"), [(names, "none") for names in CORRECTION_SETS] + [(["dgn"], name) for name in FUSIONS]
)
@pytest.mark.parametrize("family", [name for name in FAMILIES if name not in IMAGE_FAMILIES])
def test_padding_does_not_change_the_real_tokens(family, names, fusion):
    model = corrected(stock_model(family), names, fusion=fusion)
    sides = ["left", "right"] if family in DECODERS or family == "modernbert" else ["right"]
    for side in sides:
        inputs = padded_inputs(family, side)
        real = inputs["attention_mask"][1].bool()
        alone = {name: value[1:, real] for name, value in inputs.items()}
        if family == "gpt2":
            alone["position_ids"] = torch.arange(int(real.sum()))[None]
        with torch.no_grad():
            padded = output_of(model, inputs)[1, real]
            unpadded = output_of(model, alone)[0]
        assert torch.allclose(padded, unpadded, atol=1e-5), side


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_equals_sdpa(family):
    model = corrected(stock_model(family), list(GENERIC_CORRECTIONS))
    inputs = padded_inputs(family, "left" if family in DECODERS else "right")
    with torch.no_grad():
        sdpa = output_of(model, inputs)
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == CORRECTED_PREFIX + "eager"
        eager = output_of(model, inputs)
    assert torch.allclose(real_rows(eager, inputs), real_rows(sdpa, inputs), atol=1e-5)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize(
    ("names", "fusion"), [(names, "none") for names in CORRECTION_SETS] + [(["centered"], name) for name in FUSIONS]
)
@pytest.mark.parametrize("family", DECODERS)
def test_decoding_with_a_cache_equals_a_full_forward(family, names, fusion, cache):
    model = corrected(stock_model(family), names, fusion=fusion)
    inputs = padded_inputs(family, "left")
    inputs.pop("position_ids", None)
    options = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True, pad_token_id=0)
    if "contranorm" in names:  # it compares every token with the earlier ones, which a cache does not keep
        assert model.generation_config.use_cache is False
        with pytest.raises(ValueError, match="use_cache=False"):
            model.generate(**inputs, **options, use_cache=True, cache_implementation=cache)
    else:
        options["cache_implementation"] = cache
    generated = model.generate(**inputs, **options)
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)], dim=1)
    full = {"input_ids": generated.sequences, "attention_mask": attention_mask}
    if family == "gpt2":
        full["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = model(**full).logits
    assert torch.allclose(torch.stack(generated.scores, dim=1), logits[:, 6:10], atol=1e-5)


# --- the attention site against explicit formulas ---------------------------------------------------------------


def explicit_centered_attention(query, key, value, allowed, scale, gamma):
    """softmax(QKᵀ·s + M)·V − γ·(mean over each query's allowed keys of V), per head; `(B, q, H, d)`."""
    scores = (query @ key.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    context = scores.softmax(dim=-1) @ value
    weights = allowed.float() / allowed.float().sum(dim=-1, keepdim=True)
    return (context - gamma * (weights @ value)).transpose(1, 2)


class FakeAttention(nn.Module):
    """What the backends read of an attention module, with a centered correction attached."""

    def __init__(self, is_causal: bool, gamma: float):
        super().__init__()
        self.is_causal = is_causal
        self.num_key_value_groups = 1
        config = hf_centered.CenteredBertConfig(hidden_size=12, num_attention_heads=3, centered_scale=gamma)
        self.corrections = nn.ModuleDict({"centered": CORRECTIONS["centered"](config, 1)})


MASKS = ["causal", "causal-padded", "window", "padding", "packed", "custom"]


def allowed_keys_of(mask: str) -> torch.Tensor:
    """(2, 1, 6, 6): which keys each query may attend to, for each kind of mask."""
    positions = torch.arange(6)
    causal = positions[None, :] <= positions[:, None]
    allowed = {
        "causal": causal,
        "causal-padded": causal,
        "window": (positions[None, :] - positions[:, None]).abs() <= 1,
        "padding": torch.ones(6, 6, dtype=torch.bool),
        # two sequences packed into one row: each token sees the earlier tokens of its own sequence only
        "packed": causal & ((positions[None, :] < 2) == (positions[:, None] < 2)),
        # no window of keys: each token skips the one before it
        "custom": causal & (positions[None, :] != positions[:, None] - 1),
    }[mask]
    allowed = allowed.expand(2, 1, 6, 6).clone()
    if mask in ("padding", "causal-padded"):
        allowed[1, :, :, 4:] = False
    return allowed


@pytest.mark.parametrize("mask", MASKS)
def test_centered_attention_subtracts_the_mean_over_each_querys_keys(mask):
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 3, 6, 4, generator=generator) for _ in range(3))
    allowed = allowed_keys_of(mask)
    module = FakeAttention(is_causal=mask in ("causal", "causal-padded", "packed", "custom"), gamma=0.7).eval()
    if mask == "window":
        module.sliding_window = 1
    context = ForwardContext()
    attention_mask = None if mask == "causal" else allowed
    output, _ = corrected_backend("sdpa")(
        module, query, key, value, attention_mask, scaling=0.5, dropout=0.0, **{"hf_centered_context": context}
    )
    expected = explicit_centered_attention(query, key, value, allowed, 0.5, 0.7)
    real_queries = slice(0, 4) if mask in ("padding", "causal-padded") else slice(None)
    assert torch.allclose(output[:, real_queries], expected[:, real_queries], atol=1e-6)
    if mask in ("causal-padded", "window", "packed", "custom"):
        # A window of keys per query is read without keeping the mask for backward; any other mask as it is.
        assert (context.mask_bounds[id(attention_mask)] is None) == (mask == "custom")


@pytest.mark.parametrize("form", ["causal", "mask"])
def test_attended_key_mean_backward_matches_autograd_of_the_explicit_mean(form):
    value = torch.randn(2, 3, 5, 4, requires_grad=True)
    allowed = (torch.arange(5)[None, :] <= torch.arange(5)[:, None]).expand(2, 1, 5, 5)
    state = CorrectionState(causal=True) if form == "causal" else CorrectionState(query_key_mask=allowed)
    actual = attended_key_mean(value, state, 5)
    weights = allowed.float() / allowed.float().sum(dim=-1, keepdim=True)
    expected = weights @ value
    grad = torch.randn_like(expected)
    (actual_grad,) = torch.autograd.grad(actual, value, grad)
    (expected_grad,) = torch.autograd.grad(expected, value, grad)
    assert torch.allclose(actual, expected, atol=1e-6)
    assert torch.allclose(actual_grad, expected_grad, atol=1e-6)


# --- against the dedicated classes ---------------------------------------------------------------------------

DEDICATED = {"bert": hf_centered.CenteredBertModel, "vit": hf_centered.CenteredViTModel}
# The generic path names each site's corrections after the site, as the dedicated ViT does; the dedicated BERT keeps
# them where its modules apply them.
DEDICATED_NAMES = {
    "bert": {".output_corrections.": ".corrections.", ".norm_corrections.": ".attention.output.corrections."},
    "vit": {},
}


@pytest.mark.parametrize("strength", ["fixed", "learned"])
@pytest.mark.parametrize(
    ("names", "fusion"),
    [(names, "none") for names in CORRECTION_SETS] + [(list(GENERIC_CORRECTIONS), name) for name in FUSIONS],
)
@pytest.mark.parametrize("family", DEDICATED)
def test_the_generic_path_computes_what_the_dedicated_class_does(family, names, fusion, strength):
    stock = stock_model(family)
    generic = corrected(stock, names, correction_strength=strength, fusion=fusion)
    with torch.no_grad():
        for name, parameter in generic.named_parameters():
            if "strength_gate" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.01)
    state_dict = {}
    for name, value in generic.state_dict().items():
        for generic_name, dedicated_name in DEDICATED_NAMES[family].items():
            name = name.replace(generic_name, dedicated_name)
        state_dict[name] = value
    config = DEDICATED[family].config_class(
        **{**stock.config.to_dict(), **STRONG, "correction": names, "correction_strength": strength, "fusion": fusion}
    )
    dedicated = DEDICATED[family](config)
    dedicated.load_state_dict(state_dict, strict=True)
    inputs = padded_inputs(family)
    for training in (False, True):
        generic.train(training), dedicated.train(training)
        torch.manual_seed(4)
        expected = dedicated(**inputs).last_hidden_state
        torch.manual_seed(4)
        actual = generic(**inputs).last_hidden_state
        assert torch.allclose(real_rows(actual, inputs), real_rows(expected, inputs), atol=1e-6), training


# --- training ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["roberta", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(family):
    stock = stock_model(family)
    inputs = padded_inputs(family, "left" if family in DECODERS else "right")
    gradients = []
    for checkpointing in (False, True):
        model = corrected(stock, list(GENERIC_CORRECTIONS), correction_strength="learned").train()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "strength_gate" in name:
                    parameter.fill_(0.003)
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(5)
        output_of(model, inputs).square().mean().backward()
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        assert torch.allclose(gradient, gradients[1][name], atol=1e-6), name


def test_reentrant_checkpointing_is_refused_when_neutreno_needs_the_first_values():
    model = corrected(stock_model("llama"), ["neutreno"]).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant"):
        model(**padded_inputs("llama"))


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"correction": "centred"}, "correction="),
        ({"centered_scale": -1.0}, "centered_scale="),
        ({"correction_layers": [7]}, "correction_layers="),
        ({"attention_scale": 1.0}, "attention_scale: not correction fields"),
        ({"fusion": "sum"}, "fusion="),
    ],
)
def test_invalid_fields_are_refused_before_the_model_changes(fields, message):
    model = stock_model("llama")
    before = output_of(model, padded_inputs("llama"))
    with pytest.raises(ValueError, match=message):
        correct(model, **fields)
    assert type(model) is transformers.LlamaForCausalLM
    assert type(model.config) is transformers.LlamaConfig
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(output_of(model, padded_inputs("llama")), before)


def test_a_corrected_model_is_not_corrected_twice():
    model = correct(stock_model("gpt2"))
    with pytest.raises(ValueError, match="corrected already"):
        correct(model)


def test_an_implementation_that_would_skip_the_corrections_is_refused():
    model = correct(stock_model("llama"))
    with pytest.raises(ValueError, match="allowed values are 'sdpa', 'eager'"):
        model.set_attn_implementation("flex_attention")
    model.config._attn_implementation_internal = "sdpa"  # set behind the model's back
    with pytest.raises(ValueError, match="would skip the corrections"):
        model(**padded_inputs("llama"))


# --- persistence --------------------------------------------------------------------------------------------


def moved_gates(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "strength_gate" in name:
                parameter.fill_(0.01)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_corrected_model_loads_as_itself(tmp_path, family):
    model = moved_gates(corrected(stock_model(family), list(GENERIC_CORRECTIONS), correction_strength="learned"))
    model.save_pretrained(tmp_path)
    auto_class = transformers.AutoModelForCausalLM if family in DECODERS else transformers.AutoModel
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.correction == list(GENERIC_CORRECTIONS)
    assert loaded.config._attn_implementation == CORRECTED_PREFIX + "sdpa"
    inputs = padded_inputs(family)
    with torch.no_grad():
        assert torch.equal(real_rows(output_of(loaded, inputs), inputs), real_rows(output_of(model, inputs), inputs))


def test_from_pretrained_corrects_a_stock_checkpoint_and_reloads_a_corrected_one(tmp_path, monkeypatch):
    stock_model("roberta").save_pretrained(tmp_path / "stock")
    model = hf_centered.from_pretrained(
        transformers.AutoModelForSequenceClassification,
        tmp_path / "stock",
        correction="neutreno",
        neutreno_lambda=0.3,
        num_labels=3,
    )
    assert type(model).__name__ == "RobertaForSequenceClassification"
    assert (model.config.correction, model.config.neutreno_lambda, model.num_labels) == ("neutreno", 0.3, 3)
    model.save_pretrained(tmp_path / "corrected")
    reloaded = hf_centered.from_pretrained(
        transformers.AutoModelForSequenceClassification, tmp_path / "corrected", neutreno_lambda=0.5
    )
    assert (reloaded.config.correction, reloaded.config.neutreno_lambda) == ("neutreno", 0.5)
    # A stock checkpoint with an invalid field is refused before its weights load.
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *args, **kwargs: pytest.fail("loaded"))
    with pytest.raises(ValueError, match="neutreno_lambda="):
        hf_centered.from_pretrained(
            transformers.AutoModel, tmp_path / "stock", correction="neutreno", neutreno_lambda=-2
        )


def test_a_fresh_process_that_imports_the_package_loads_the_corrected_model(tmp_path):
    model = moved_gates(corrected(stock_model("llama"), ["centered", "neutreno"], correction_strength="learned"))
    model.save_pretrained(tmp_path / "model")
    input_ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.save({"input_ids": input_ids, "logits": model(input_ids).logits}, tmp_path / "expected.pt")
    script = f"""
import torch, transformers, hf_centered
model = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r})
expected = torch.load({str(tmp_path / "expected.pt")!r})
assert type(model).__module__ == "hf_centered.modeling_generic", type(model)
with torch.no_grad():
    assert torch.equal(model(expected["input_ids"]).logits, expected["logits"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# --- memory ---------------------------------------------------------------------------------------------------


def saved_for_backward(model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    """The distinct tensors one forward keeps for backward (by storage)."""
    saved: dict[tuple, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)), tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output_of(model, inputs).sum()
    return list(saved.values())


@pytest.mark.parametrize("names", CORRECTION_SETS, ids="+".join)
@pytest.mark.parametrize("family", ["roberta", "modernbert", "llama"])
def test_no_attention_sized_tensor_is_kept_for_backward(family, names):
    """The corrections keep no (queries × keys) tensor of their own for backward: those the corrected model keeps are
    the stock model's (its attention mask, the backend's own)."""
    stock = stock_model(family).train()
    for module in stock.modules():  # dropout off: its masks are not the corrections' cost
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model = corrected(stock, names).train()
    inputs = padded_inputs(family, "left" if family in DECODERS else "right")
    num_tokens = inputs["input_ids"].shape[1]

    def attention_sized(tensors: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if t.dim() >= 2 and t.shape[-2:] == (num_tokens,) * 2)

    assert attention_sized(saved_for_backward(model, inputs)) == attention_sized(saved_for_backward(stock, inputs))


class LayerWithoutAttentionInterface(GradientCheckpointingLayer):
    def __init__(self, config):
        super().__init__()
        self.mix = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, **kwargs):
        return self.mix(hidden_states)


class ModelWithoutAttentionInterface(transformers.PreTrainedModel):
    config_class = transformers.BertConfig

    def __init__(self, config):
        super().__init__(config)
        self.layers = nn.ModuleList([LayerWithoutAttentionInterface(config) for _ in range(config.num_hidden_layers)])
        self.post_init()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ModelWithoutAttentionInterface(family_config("bert")),
            "exactly one attention module that calls ALL_ATTENTION_FUNCTIONS in each layer, found 0",
        ),
        (
            lambda: transformers.BertModel(family_config("bert")).encoder,
            "correct\\(\\) takes a transformers PreTrainedModel \\(a model or a head\\), got BertEncoder",
        ),
    ],
    ids=["no attention interface", "not a model"],
)
def test_a_model_the_generic_path_cannot_handle_is_refused_naming_what_is_missing(build, message):
    model = build()
    with pytest.raises(ValueError, match=message):
        correct(model)


def test_an_implementation_without_a_corrected_counterpart_is_refused_before_anything_changes():
    model = stock_model("llama")
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' cannot be corrected"):
        correct(model)
    assert type(model) is transformers.LlamaForCausalLM and type(model.config) is transformers.LlamaConfig


def test_a_whole_corrected_model_pickled_with_torch_save_loads_in_a_fresh_process(tmp_path):
    """torch.save of the model object (not its weights): pickle finds every corrected class by name in a process that
    never built it, the layer classes included, which transformers does not export at its top level."""
    expected = {}
    for family in FAMILIES:
        model = corrected(stock_model(family), list(GENERIC_CORRECTIONS))
        inputs = padded_inputs(family)
        with torch.no_grad():
            expected[family] = (inputs, output_of(model, inputs))
        torch.save(model, tmp_path / f"{family}.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
import torch
expected = torch.load({str(tmp_path / "expected.pt")!r})
for family, (inputs, output) in expected.items():
    model = torch.load({str(tmp_path)!r} + f"/{{family}}.pt", weights_only=False)
    layers = {{type(module).__name__: type(module).__module__ for module in model.modules()}}
    assert "hf_centered.modeling_generic" in layers.values(), family
    with torch.no_grad():
        result = model(**inputs)
    result = result.logits if getattr(result, "logits", None) is not None else result.last_hidden_state
    assert torch.equal(result, output), family
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
