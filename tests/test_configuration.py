"""Configuration fields: defaults, validation at construction, JSON round trip, stock configs becoming ours."""

from __future__ import annotations

import json

import pytest
from conftest import BERT_SIZES, VIT_SIZES
from transformers import AutoConfig, BertConfig, ViTConfig

from hf_centered import CenteredBertConfig, CenteredViTConfig
from hf_centered.corrections import CORRECTIONS

CONFIG_CLASSES = [CenteredBertConfig, CenteredViTConfig]
API_DEFAULTS = {
    "correction": "centered",
    "correction_layers": None,
    "centered_scale": 1.0,
    "neutreno_lambda": 0.6,
    "contranorm_scale": 0.1,
    "contranorm_tau": 1.0,
    "dgn_groups": 10,
    "dgn_lambda": 0.01,
    "fusion": "none",
    "correction_strength": "fixed",
    "strength_gate_scale": 100.0,
}
INVALID = [
    ("correction", "centred"),
    ("correction", []),
    ("correction", ["centered", "centered"]),
    ("correction", ["none", "dgn"]),
    ("correction", 3),
    ("correction_layers", [3]),
    ("correction_layers", [-1]),
    ("correction_layers", [0, 0]),
    ("correction_layers", ["1"]),
    ("correction_layers", 2),
    ("correction_layers", "0,1"),
    ("correction_layers", [True]),
    ("centered_scale", -0.1),
    ("centered_scale", "1"),
    ("centered_scale", float("inf")),
    ("centered_scale", float("nan")),
    ("neutreno_lambda", -1),
    ("neutreno_lambda", float("inf")),
    ("contranorm_scale", -0.5),
    ("contranorm_tau", 0),
    ("contranorm_tau", -1.0),
    ("contranorm_tau", float("inf")),
    ("dgn_groups", 0),
    ("dgn_groups", 2.5),
    ("dgn_lambda", -0.01),
    ("dgn_momentum", 1.5),
    ("fusion", "sum"),
    ("correction_strength", "auto"),
    ("correction_strength", None),
    ("strength_gate_scale", 0),
    ("strength_gate_scale", -1.0),
    ("strength_gate_scale", float("inf")),
    ("dgn_groups", 10**8),
    ("num_hidden_layers", 0),
    ("num_hidden_layers", -2),
]
# Values that used to pass `from_pretrained(path, **fields)` and `AutoConfig` unchecked, then crash (or allocate
# gigabytes) when the model was built.
LATE_INVALID = [
    ("centered_scale", -1),
    ("correction_layers", [7]),
    ("correction_layers", [0, 0]),
    ("correction", ["none", "centered"]),
    ("fusion", "mean"),
    ("dgn_groups", 10**8),
    ("num_hidden_layers", 0),
]


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_api_defaults(config_class):
    config = config_class()
    for field, value in API_DEFAULTS.items():
        assert getattr(config, field) == value, field


@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_invalid_value_raises_value_error_naming_the_field(config_class, field, value):
    with pytest.raises(ValueError, match=field) as error:
        config_class(**{"num_hidden_layers": 3, field: value})
    assert "allowed" in str(error.value) or "twice" in str(error.value) or "combines" in str(error.value)


@pytest.mark.parametrize("name", ["centered", "neutreno", "contranorm", "dgn"])
def test_learned_strength_refuses_a_zero_strength_it_could_never_move(name):
    field = CORRECTIONS[name].strength_field
    with pytest.raises(ValueError, match=f"{field}=0 is not valid with correction_strength='learned'"):
        CenteredBertConfig(correction=[name], correction_strength="learned", **{field: 0.0})
    CenteredBertConfig(correction=[name], **{field: 0.0})  # fixed: 0 is the stock model
    other = "dgn" if name != "dgn" else "centered"
    CenteredBertConfig(correction=[other], correction_strength="learned", **{field: 0.0})  # unused field


@pytest.mark.parametrize(("field", "value"), LATE_INVALID, ids=[f"{f}={v!r}" for f, v in LATE_INVALID])
@pytest.mark.parametrize("path", ["from_pretrained", "AutoConfig", "from_dict", "stock folder"])
@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_every_path_that_builds_a_config_validates_it(tmp_path, config_class, path, field, value):
    config_class(num_hidden_layers=3).save_pretrained(tmp_path / "ours")
    stock_class = BertConfig if config_class is CenteredBertConfig else ViTConfig
    stock_class(num_hidden_layers=3).save_pretrained(tmp_path / "stock")
    builders = {
        "from_pretrained": lambda: config_class.from_pretrained(tmp_path / "ours", **{field: value}),
        "AutoConfig": lambda: AutoConfig.from_pretrained(tmp_path / "ours", **{field: value}),
        "from_dict": lambda: config_class.from_dict({**config_class(num_hidden_layers=3).to_dict(), field: value}),
        "stock folder": lambda: config_class.from_pretrained(tmp_path / "stock", **{field: value}),
    }
    with pytest.raises(ValueError, match=field):
        builders[path]()


def test_bert_must_stay_an_encoder():
    with pytest.raises(ValueError, match="is_decoder"):
        CenteredBertConfig(is_decoder=True)


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_every_field_round_trips_through_config_json(tmp_path, config_class):
    fields = dict(
        correction=["neutreno", "dgn"],
        correction_layers=[0, 2],
        centered_scale=0.5,
        neutreno_lambda=0.4,
        contranorm_scale=0.05,
        contranorm_tau=0.3,
        dgn_groups=4,
        dgn_lambda=0.02,
        dgn_momentum=0.2,
        fusion="gate",
        correction_strength="learned",
        strength_gate_scale=30.0,
    )
    config = config_class(num_hidden_layers=3, **fields)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == config_class.model_type
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_class
    for field, value in fields.items():
        assert saved[field] == value and getattr(loaded, field) == value, field


@pytest.mark.parametrize(
    ("stock_class", "config_class", "sizes"),
    [(BertConfig, CenteredBertConfig, BERT_SIZES), (ViTConfig, CenteredViTConfig, VIT_SIZES)],
)
def test_stock_config_becomes_ours(tmp_path, stock_class, config_class, sizes, caplog):
    stock_class(**sizes).save_pretrained(tmp_path)
    config = config_class.from_pretrained(tmp_path, correction="contranorm")
    assert config.model_type == config_class.model_type
    assert config.correction == "contranorm" and config.hidden_size == sizes["hidden_size"]
    assert "to instantiate a model of type" not in caplog.text


def test_corrections_property_is_canonical():
    assert CenteredBertConfig(correction=["dgn", "centered"]).corrections == ["centered", "dgn"]
    assert CenteredBertConfig(correction="none").corrections == []
