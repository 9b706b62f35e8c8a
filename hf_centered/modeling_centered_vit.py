"""ViT with anti-over-smoothing corrections: the stock classes with the corrections' sites added.

Stock weight names are unchanged and checkpoints are read and written in the legacy layout
(`encoder.layer.N.attention.attention.query`), so `google/vit-*`-style checkpoints load. The seams: the attention
(per-head corrections on the backend's output), the layer (corrections before both norms and on its output; layer 0
also projects NeuTRENO's V⁰), and the model loop (padding mask, corrected final norm, fusion).
"""

from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ViTForImageClassification, ViTForMaskedImageModeling, ViTModel, ViTPreTrainedModel
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, SemanticSegmenterOutput
from transformers.models.vit.modeling_vit import ViTAttention, ViTLayer, eager_attention_forward
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_centered import CenteredViTConfig
from .correction_base import ATTENTION_SITE, BEFORE_NORM_SITE, LAYER_OUTPUT_SITE, CorrectionState
from .corrections import build_corrections
from .fusion import build_fusion
from .modeling_common import (
    CenteredPreTrainedMixin,
    apply_corrections,
    corrected_attention,
    key_padding_mask_from_attention_mask,
    last_output,
    padding_mask_from_attention_mask,
    provides_first_values,
    run_layers,
)

# Custom-code classes skip transformers' built-in renaming of legacy ViT checkpoints; register it for our
# model_type here, in the modeling file, so that remote code (trust_remote_code) registers it too.
register_checkpoint_conversion_mapping(
    CenteredViTConfig.model_type, get_checkpoint_conversion_mapping("ViTModel"), overwrite=True
)


class CenteredViTAttention(ViTAttention):
    def __init__(self, config: CenteredViTConfig, layer_idx: int):
        super().__init__(config)
        self.layer_idx = layer_idx
        self.corrections = build_corrections(config, layer_idx, ATTENTION_SITE)

    def project_values(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-head values `(B, H, n, d_h)`."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        return self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        correction_state: CorrectionState | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        state = correction_state or CorrectionState()
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        # Layer 0 projected its values for NeuTRENO already (V⁰); reuse them instead of projecting twice.
        if self.layer_idx == 0 and state.first_values is not None:
            value = state.first_values
        else:
            value = self.project_values(hidden_states)
        return corrected_attention(
            self,
            query,
            key,
            value,
            attention_mask,
            state,
            eager_attention_forward,
            output_projection=self.o_proj,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )


class CenteredViTLayer(ViTLayer):
    """Pre-LN block: `X + Drop(Attn(LN₁(c(X))))`, then `Y + Drop(MLP(LN₂(c(Y))))`, then the output corrections."""

    def __init__(self, config: CenteredViTConfig, layer_idx: int):
        super().__init__(config)
        self.attention = CenteredViTAttention(config, layer_idx)
        self.norm_corrections = build_corrections(config, layer_idx, BEFORE_NORM_SITE)
        self.output_corrections = build_corrections(config, layer_idx, LAYER_OUTPUT_SITE)
        self.provides_first_values = provides_first_values(config, layer_idx)

    def attention_input(self, hidden_states: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        return self.layernorm_before(apply_corrections(self.norm_corrections, hidden_states, state))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        first_values: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The layer's output; with `provides_first_values` (layer 0 under NeuTRENO), also V⁰ for the later layers,
        which get it as `first_values` (positionally, so that reentrant gradient checkpointing propagates its
        gradient)."""
        state = CorrectionState(padding_mask=padding_mask, first_values=first_values, key_padding_mask=key_padding_mask)
        attention_input = self.attention_input(hidden_states, state)
        if self.provides_first_values:
            first_values = self.attention.project_values(attention_input)
            state = replace(state, first_values=first_values)
        attention_output, _ = self.attention(attention_input, attention_mask, correction_state=state, **kwargs)
        hidden_states = self.dropout(attention_output) + hidden_states
        mlp_input = self.layernorm_after(apply_corrections(self.norm_corrections, hidden_states, state))
        hidden_states = self.dropout(self.mlp(mlp_input)) + hidden_states
        hidden_states = apply_corrections(self.output_corrections, hidden_states, state)
        return (hidden_states, first_values) if self.provides_first_values else hidden_states


class CenteredViTPreTrainedModel(CenteredPreTrainedMixin, ViTPreTrainedModel):
    config_class = CenteredViTConfig
    # Trainer must not rescale the loss: every head's loss is a plain mean (cross-entropy over images or pixels, masked
    # image modelling's L1 over the masked pixels), see huggingface.md §4.
    accepts_loss_kwargs = False
    _no_split_modules = ["ViTEmbeddings", "CenteredViTLayer"]

    @classmethod
    def auto_model_classes(cls) -> dict[str, type["CenteredViTPreTrainedModel"]]:
        return AUTO_MODEL_CLASSES


class CenteredViTModel(CenteredViTPreTrainedModel, ViTModel):
    def __init__(self, config: CenteredViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        config.validate_corrections()
        self.layers = nn.ModuleList([CenteredViTLayer(config, i) for i in range(config.num_hidden_layers)])
        # ContraNorm also acts before the final norm when the last layer is corrected.
        self.final_norm_corrections = build_corrections(config, config.num_hidden_layers - 1, BEFORE_NORM_SITE)
        self.fusion = build_fusion(config)
        self.post_init()

    def final_norm(self, hidden_states: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        return self.layernorm(apply_corrections(self.final_norm_corrections, hidden_states, state))

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        self.config.check_structure(self.built_structure)
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)
        hidden_states = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )
        padding_mask = padding_mask_from_attention_mask(attention_mask, *hidden_states.shape[:2])
        key_padding_mask = key_padding_mask_from_attention_mask(attention_mask, hidden_states.shape[0])
        state = CorrectionState(padding_mask=padding_mask, key_padding_mask=key_padding_mask)
        layer_outputs = run_layers(self.layers, hidden_states, attention_mask, padding_mask, key_padding_mask, **kwargs)
        if self.fusion is not None:
            sequence_output = self.fusion(self.final_norm(output, state) for output in layer_outputs)
        else:
            sequence_output = self.final_norm(last_output(layer_outputs), state)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


class CenteredViTForImageClassification(CenteredViTPreTrainedModel, ViTForImageClassification):
    def __init__(self, config: CenteredViTConfig):
        super().__init__(config)
        self.vit = CenteredViTModel(config, add_pooling_layer=False)
        self.post_init()


class CenteredViTForMaskedImageModeling(CenteredViTPreTrainedModel, ViTForMaskedImageModeling):
    """SimMIM masked image modelling: the backbone has a mask token, which replaces the patches of `bool_masked_pos`."""

    def __init__(self, config: CenteredViTConfig):
        super().__init__(config)
        self.vit = CenteredViTModel(config, add_pooling_layer=False, use_mask_token=True)
        self.post_init()


class CenteredViTForSemanticSegmentation(CenteredViTPreTrainedModel):
    r"""ViT with the linear decoder of Segmenter (Strudel, Garcia, Laptev & Schmid, *Segmenter: Transformer for
    Semantic Segmentation*, ICCV 2021), its baseline decoder.

    Stock transformers has no ViT segmentation head. This one follows Segmenter's `DecoderLinear`: the patch tokens of
    the final LayerNorm's output ([CLS] dropped; the fused tokens under a fusion) go through one
    `Linear(hidden_size, num_labels)` (`decode_head`, no norm of its own), which gives a `(num_labels, H/p, W/p)` map
    of logits per image, p the patch size; bilinear upsampling (`align_corners=False`, as Segmenter) brings it to the
    input's size `(H, W)`. The NeuTRENO paper evaluates on Segmenter with its other decoder, the mask transformer,
    whose attention blocks it corrects too; the linear decoder has no attention, so the corrections act in the
    backbone only, where every patch token's over-smoothing reaches the label map directly.

    `logits` are returned at the input's size, as UperNet's are (Segformer, BEiT and DPT return them at their
    decoders' resolution and upsample in the loss only); `CenteredViTImageProcessor.post_process_semantic_segmentation`
    resizes them to the original images' sizes. The loss is the cross-entropy over the pixels of `labels`
    `(B, H, W)`, averaged over those not equal to `config.semantic_loss_ignore_index`.

    Inputs of another size than `config.image_size`, square or not, need `interpolate_pos_encoding=True` (the position
    embeddings are interpolated to the patch grid). As in stock ViT, the patch embedding skips the last `H mod p` rows
    and `W mod p` columns of pixels; their logits come from the upsampling (Segmenter pads the image instead).
    """

    def __init__(self, config: CenteredViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = CenteredViTModel(config, add_pooling_layer=False)
        self.decode_head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            The class of each pixel, in `[0, config.num_labels)`; pixels equal to `config.semantic_loss_ignore_index`
            do not count in the loss.
        """
        if labels is not None and self.num_labels < 2:
            raise ValueError(f"num_labels={self.num_labels} is not valid for a cross-entropy loss: allowed are >= 2.")
        outputs: BaseModelOutputWithPooling = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            **kwargs,
        )
        height, width = pixel_values.shape[-2:]
        patch_height, patch_width = self.vit.embeddings.patch_embeddings.patch_size
        patch_logits = self.decode_head(outputs.last_hidden_state[:, 1:])  # (B, patches, num_labels), [CLS] dropped
        patch_logits = patch_logits.transpose(1, 2).unflatten(2, (height // patch_height, width // patch_width))
        logits = F.interpolate(patch_logits, size=(height, width), mode="bilinear", align_corners=False)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels, ignore_index=self.config.semantic_loss_ignore_index)
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


AUTO_MODEL_CLASSES = {
    "AutoModel": CenteredViTModel,
    "AutoModelForImageClassification": CenteredViTForImageClassification,
    "AutoModelForMaskedImageModeling": CenteredViTForMaskedImageModeling,
    "AutoModelForSemanticSegmentation": CenteredViTForSemanticSegmentation,
}
"""The model class each Auto class loads for `centered_vit`."""

__all__ = [
    "AUTO_MODEL_CLASSES",
    "CenteredViTForImageClassification",
    "CenteredViTForMaskedImageModeling",
    "CenteredViTForSemanticSegmentation",
    "CenteredViTModel",
    "CenteredViTPreTrainedModel",
]
