"""hf_centered: anti-over-smoothing corrections for Hugging Face models, registered with the Auto classes.

Importing the package registers `centered_bert` and `centered_vit` with `AutoConfig`, the `AutoModel*` classes and
`AutoImageProcessor`, and with PEFT's default target modules; the corrected attention implementations
(`hf_centered_sdpa`, `hf_centered_eager`); and `corrected_<family>` with `AutoConfig` for the families of the generic
path (`correct`, `from_pretrained`). No network access.
"""

from .auto import AUTO_CLASSES, peft_modules_to_save, register_auto_classes, register_peft_target_modules
from .configuration_centered import CenteredBertConfig, CenteredViTConfig
from .corrections import available_corrections
from .fusion import available_fusions
from .hub import export_for_hub, push_to_hub
from .image_processing_centered_vit import CenteredViTImageProcessor
from .modeling_centered_bert import (
    CenteredBertForMaskedLM,
    CenteredBertForMultipleChoice,
    CenteredBertForNextSentencePrediction,
    CenteredBertForPreTraining,
    CenteredBertForQuestionAnswering,
    CenteredBertForSequenceClassification,
    CenteredBertForTokenClassification,
    CenteredBertModel,
    CenteredBertPreTrainedModel,
)
from .modeling_centered_vit import (
    CenteredViTForImageClassification,
    CenteredViTForMaskedImageModeling,
    CenteredViTForSemanticSegmentation,
    CenteredViTModel,
    CenteredViTPreTrainedModel,
)
from .modeling_generic import correct, from_pretrained, register_corrected_backends, register_generic_families

__version__ = "0.1.0"

register_auto_classes()
register_peft_target_modules()
register_corrected_backends()
register_generic_families()

__all__ = [
    "AUTO_CLASSES",
    "CenteredBertConfig",
    "CenteredBertForMaskedLM",
    "CenteredBertForMultipleChoice",
    "CenteredBertForNextSentencePrediction",
    "CenteredBertForPreTraining",
    "CenteredBertForQuestionAnswering",
    "CenteredBertForSequenceClassification",
    "CenteredBertForTokenClassification",
    "CenteredBertModel",
    "CenteredBertPreTrainedModel",
    "CenteredViTConfig",
    "CenteredViTForImageClassification",
    "CenteredViTForMaskedImageModeling",
    "CenteredViTForSemanticSegmentation",
    "CenteredViTImageProcessor",
    "CenteredViTModel",
    "CenteredViTPreTrainedModel",
    "available_corrections",
    "available_fusions",
    "correct",
    "export_for_hub",
    "from_pretrained",
    "peft_modules_to_save",
    "push_to_hub",
]
