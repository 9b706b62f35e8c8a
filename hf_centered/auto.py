"""Registration of the configurations and models with the Auto classes, and the `auto_map` of exported folders."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_centered import CenteredBertConfig, CenteredViTConfig
from .modeling_centered_bert import (
    CenteredBertForMaskedLM,
    CenteredBertForSequenceClassification,
    CenteredBertForTokenClassification,
    CenteredBertModel,
)
from .modeling_centered_vit import CenteredViTForImageClassification, CenteredViTModel

AUTO_CLASSES = {
    CenteredBertConfig: {
        AutoModel: CenteredBertModel,
        AutoModelForSequenceClassification: CenteredBertForSequenceClassification,
        AutoModelForMaskedLM: CenteredBertForMaskedLM,
        AutoModelForTokenClassification: CenteredBertForTokenClassification,
    },
    CenteredViTConfig: {
        AutoModel: CenteredViTModel,
        AutoModelForImageClassification: CenteredViTForImageClassification,
    },
}
CONFIG_CLASSES = {config_class.model_type: config_class for config_class in AUTO_CLASSES}


def register_auto_classes() -> None:
    """Registers every configuration and model; idempotent."""
    for config_class, models in AUTO_CLASSES.items():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        for auto_class, model_class in models.items():
            auto_class.register(config_class, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_class.__name__)


def _reference(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def full_auto_map(model_type: str) -> dict[str, str]:
    """`auto_map` naming AutoConfig, AutoModel and every head, so each Auto class loads an exported folder."""
    config_class = CONFIG_CLASSES[model_type]
    auto_map = {"AutoConfig": _reference(config_class)}
    auto_map.update({auto.__name__: _reference(model) for auto, model in AUTO_CLASSES[config_class].items()})
    return auto_map


def auto_class_name(model) -> str:
    """Name of the Auto class that loads `model`'s class (e.g. `AutoModelForSequenceClassification`)."""
    for auto_class, model_class in AUTO_CLASSES[CONFIG_CLASSES[model.config.model_type]].items():
        if type(model) is model_class:
            return auto_class.__name__
    raise ValueError(f"{type(model).__name__} is not one of the registered hf_centered models.")
