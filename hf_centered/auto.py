"""Registration of the configurations, models and image processor with the Auto classes and PEFT, and the `auto_map`
of exported folders."""

from __future__ import annotations

import transformers
from torch import nn
from transformers import AutoConfig, AutoImageProcessor

from . import modeling_centered_bert, modeling_centered_vit
from .configuration_centered import CenteredBertConfig, CenteredViTConfig
from .correction_base import Correction
from .fusion import LayerFusion
from .image_processing_centered_vit import CenteredViTImageProcessor
from .modeling_common import CenteredPreTrainedMixin, complete_auto_map
from .modeling_generic import GENERIC_FAMILIES

AUTO_CLASSES = {
    config_class: {getattr(transformers, auto): model for auto, model in modeling.AUTO_MODEL_CLASSES.items()}
    for config_class, modeling in (
        (CenteredBertConfig, modeling_centered_bert),
        (CenteredViTConfig, modeling_centered_vit),
    )
}
"""`{config class: {Auto class: model class}}`, from each modelling file's `AUTO_MODEL_CLASSES`."""


def register_auto_classes() -> None:
    """Registers every configuration, model and image processor; idempotent."""
    for config_class, models in AUTO_CLASSES.items():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        for auto_class, model_class in models.items():
            auto_class.register(config_class, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_class.__name__)
    AutoImageProcessor.register(
        CenteredViTConfig, image_processor_classes={"pil": CenteredViTImageProcessor}, exist_ok=True
    )
    CenteredViTImageProcessor.register_for_auto_class("AutoImageProcessor")


# PEFT 0.21 has no default targets for the 5.x ViT (its few "vit" entries name the pre-5.x `query`/`value`): a
# ViT's default targets are BERT's under their ViT names. BERT's `output.dense` suffix matches both the attention's
# and the feed-forward's output projection.
BERT_TO_VIT_MODULE_NAMES = {
    "query": ["q_proj"],
    "key": ["k_proj"],
    "value": ["v_proj"],
    "output.dense": ["o_proj", "fc2"],
}


def register_peft_target_modules() -> None:
    """Gives `centered_bert` and `centered_vit` every PEFT default target-module mapping that `bert` has, and each
    `corrected_<family>` of the generic path its family's, so that LoRA, IA3 and the other tuners work without
    `target_modules`; idempotent, and a no-op without PEFT.

    PEFT keys its defaults by `model_type` in module-level dicts, which its tuners read when an adapter is created.
    """
    try:
        from peft.utils import constants
    except ImportError:
        return
    for name, mapping in vars(constants).items():
        if not (name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(mapping, dict)):
            continue
        for family in GENERIC_FAMILIES:  # the generic path's corrected families keep their stock family's targets
            if family in mapping:
                mapping.setdefault(f"corrected_{family}", mapping[family])
        if "bert" not in mapping:
            continue
        bert_targets = mapping["bert"]
        mapping.setdefault(CenteredBertConfig.model_type, bert_targets)
        if isinstance(bert_targets, list) and all(target in BERT_TO_VIT_MODULE_NAMES for target in bert_targets):
            vit_targets = [vit_name for target in bert_targets for vit_name in BERT_TO_VIT_MODULE_NAMES[target]]
            mapping.setdefault(CenteredViTConfig.model_type, vit_targets)


def peft_modules_to_save(model: nn.Module) -> list[str]:
    """Names for a PEFT config's `modules_to_save` (PEFT matches them as suffixes of module names) that cover every
    hf_centered module with state of its own: DGN (its parameters and running statistics), the fusions and every
    module holding a learned `strength_gate`. An adapter then trains them and saves them with itself, so that the
    reloaded adapter reproduces the trained model."""
    return sorted(
        {
            path.rsplit(".", 1)[-1]
            for path, module in model.named_modules()
            if isinstance(module, (Correction, LayerFusion)) and any(module.state_dict(keep_vars=True))
        }
    )


def is_hf_centered_model(model) -> bool:
    """Whether `model` is one of the corrected models: a `CenteredBert*`/`CenteredViT*` or one that `correct` made."""
    return isinstance(model, CenteredPreTrainedMixin)


def full_auto_map(model) -> dict[str, str]:
    """`auto_map` naming AutoConfig, AutoModel and every head of `model`'s family, so each Auto class loads an
    exported folder."""
    return complete_auto_map(type(model.config), type(model).auto_model_classes())


def auto_class_name(model) -> str:
    """Name of the Auto class that loads `model`'s class (e.g. `AutoModelForSequenceClassification`)."""
    if is_hf_centered_model(model):
        for auto_name, model_class in type(model).auto_model_classes().items():
            if type(model) is model_class:
                return auto_name
    raise ValueError(f"{type(model).__name__} is not one of the hf_centered models.")
