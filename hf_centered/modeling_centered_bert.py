"""BERT with anti-over-smoothing corrections: the stock classes with the corrections' sites added.

Stock weight names are unchanged, so any BERT checkpoint loads; only the corrections' and fusion's parameters are
new. The seams: the self-attention (per-head corrections on the backend's output), the post-attention output
(corrections before its LayerNorm), the layer (corrections on its output; layer 0 also projects NeuTRENO's V⁰), and
the encoder loop (padding mask, fusion).
"""

import torch
from torch import nn
from transformers import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions, MaskedLMOutput
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertEncoder,
    BertLayer,
    BertSelfAttention,
    BertSelfOutput,
    eager_attention_forward,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_centered import CenteredBertConfig
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

IGNORED_LABEL = -100  # the label of the positions a loss skips (CrossEntropyLoss's ignore_index)


class CenteredBertSelfAttention(BertSelfAttention):
    def __init__(self, config: CenteredBertConfig, layer_idx: int):
        super().__init__(config, layer_idx=layer_idx)
        self.corrections = build_corrections(config, layer_idx, ATTENTION_SITE)

    def project_values(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-head values `(B, H, n, d_h)`."""
        hidden_shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        return self.value(hidden_states).view(hidden_shape).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        correction_state: CorrectionState | None = None,
        output_projection: nn.Linear | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the merged context `(B, n, d)`, or `output_projection` applied to it (which a correction may then
        compute itself, see `Correction.project`), and the backend's attention weights.

        `past_key_values` holds keys and values that precede the tokens' (prefix tuning's virtual ones: the corrected
        models are encoders, the config rejects `is_decoder`); as in stock BERT, this layer's are appended to it.
        """
        state = correction_state or CorrectionState()
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        query = self.query(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
        # Layer 0 projected its values for NeuTRENO already (V⁰); reuse them instead of projecting twice.
        if self.layer_idx == 0 and state.first_values is not None:
            value = state.first_values
        else:
            value = self.project_values(hidden_states)
        if past_key_values is not None:
            if isinstance(past_key_values, EncoderDecoderCache):
                past_key_values = past_key_values.self_attention_cache
            key, value = past_key_values.update(key, value, self.layer_idx)
        context, weights = corrected_attention(
            self,
            query,
            key,
            value,
            attention_mask,
            state,
            eager_attention_forward,
            output_projection=output_projection,
            dropout=self.dropout.p if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        if output_projection is not None:
            return context, weights
        return context.reshape(*input_shape, -1).contiguous(), weights


class CenteredBertSelfOutput(BertSelfOutput):
    """`LayerNorm(corrections(dropout(dense(context)) + residual))`: ContraNorm's position 7 in the reference code."""

    def __init__(self, config: CenteredBertConfig, layer_idx: int):
        super().__init__(config)
        self.corrections = build_corrections(config, layer_idx, BEFORE_NORM_SITE)

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_tensor: torch.Tensor,
        correction_state: CorrectionState | None = None,
        is_projected: bool = False,
    ) -> torch.Tensor:
        """`is_projected`: `hidden_states` is `dense(context)` already (the self-attention applied it)."""
        if not is_projected:
            hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states) + input_tensor
        hidden_states = apply_corrections(self.corrections, hidden_states, correction_state or CorrectionState())
        return self.LayerNorm(hidden_states)


class CenteredBertAttention(BertAttention):
    def __init__(self, config: CenteredBertConfig, layer_idx: int):
        super().__init__(config, layer_idx=layer_idx)
        self.self = CenteredBertSelfAttention(config, layer_idx=layer_idx)
        self.output = CenteredBertSelfOutput(config, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        correction_state: CorrectionState | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The output projection is handed to the self-attention so that a correction can compute it (NeuTRENO).
        projected, weights = self.self(
            hidden_states,
            attention_mask=attention_mask,
            correction_state=correction_state,
            output_projection=self.output.dense,
            **kwargs,
        )
        return self.output(projected, hidden_states, correction_state, is_projected=True), weights


class CenteredBertLayer(BertLayer):
    def __init__(self, config: CenteredBertConfig, layer_idx: int):
        super().__init__(config, layer_idx=layer_idx)
        self.attention = CenteredBertAttention(config, layer_idx)
        self.corrections = build_corrections(config, layer_idx, LAYER_OUTPUT_SITE)
        self.provides_first_values = provides_first_values(config, layer_idx)

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
        if self.provides_first_values:
            first_values = self.attention.self.project_values(hidden_states)
        state = CorrectionState(padding_mask=padding_mask, first_values=first_values, key_padding_mask=key_padding_mask)
        layer_output = super().forward(hidden_states, attention_mask, correction_state=state, **kwargs)
        layer_output = apply_corrections(self.corrections, layer_output, state)
        return (layer_output, first_values) if self.provides_first_values else layer_output


class CenteredBertEncoder(BertEncoder):
    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.layer = nn.ModuleList([CenteredBertLayer(config, i) for i in range(config.num_hidden_layers)])
        self.fusion = build_fusion(config)
        self.built_structure = config.structure()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        self.config.check_structure(self.built_structure)
        padding_mask = padding_mask_from_attention_mask(attention_mask, *hidden_states.shape[:2])
        key_padding_mask = key_padding_mask_from_attention_mask(attention_mask, hidden_states.shape[0])
        layer_outputs = run_layers(self.layer, hidden_states, attention_mask, padding_mask, key_padding_mask, **kwargs)
        hidden_states = self.fusion(layer_outputs) if self.fusion is not None else last_output(layer_outputs)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states)


class CenteredBertPreTrainedModel(CenteredPreTrainedMixin, BertPreTrainedModel):
    config_class = CenteredBertConfig
    # Trainer must not rescale the loss: every head's loss is a plain mean (cross-entropy; question answering averages
    # its start and end losses, pre-training adds its masked-LM and next-sentence ones), see huggingface.md §4.
    accepts_loss_kwargs = False
    _no_split_modules = ["BertEmbeddings", "CenteredBertLayer"]

    @classmethod
    def auto_model_classes(cls) -> dict[str, type["CenteredBertPreTrainedModel"]]:
        return AUTO_MODEL_CLASSES


class CenteredBertModel(CenteredBertPreTrainedModel, BertModel):
    def __init__(self, config: CenteredBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        config.validate_corrections()
        self.encoder = CenteredBertEncoder(config)
        self.post_init()


class CenteredBertForSequenceClassification(CenteredBertPreTrainedModel, BertForSequenceClassification):
    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config)
        self.post_init()


class CenteredBertForMaskedLM(CenteredBertPreTrainedModel, BertForMaskedLM):
    """Stock BERT's masked-LM head; with `config.sparse_prediction` and labels, only the labelled positions are
    scored (the same loss; logits `(labelled positions, vocab_size)`)."""

    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config, add_pooling_layer=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
        )
        if not (self.config.sparse_prediction and labels is not None):
            return super().forward(**inputs, labels=labels, **kwargs)
        outputs = self.bert(**inputs, return_dict=True, **kwargs)
        labelled = labels != IGNORED_LABEL
        logits = self.cls(outputs.last_hidden_state[labelled])
        return MaskedLMOutput(
            loss=nn.functional.cross_entropy(logits, labels[labelled]),
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class CenteredBertForTokenClassification(CenteredBertPreTrainedModel, BertForTokenClassification):
    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config, add_pooling_layer=False)
        self.post_init()


class CenteredBertForQuestionAnswering(CenteredBertPreTrainedModel, BertForQuestionAnswering):
    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config, add_pooling_layer=False)
        self.post_init()


class CenteredBertForMultipleChoice(CenteredBertPreTrainedModel, BertForMultipleChoice):
    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config)
        self.post_init()


class CenteredBertForNextSentencePrediction(CenteredBertPreTrainedModel, BertForNextSentencePrediction):
    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config)
        self.post_init()


class CenteredBertForPreTraining(CenteredBertPreTrainedModel, BertForPreTraining):
    """The masked-LM and next-sentence heads; as in stock BERT, the decoder is tied to the word embeddings (the stock
    `_tied_weights_keys`, tied again by `post_init` once our backbone is in place)."""

    def __init__(self, config: CenteredBertConfig):
        super().__init__(config)
        self.bert = CenteredBertModel(config)
        self.post_init()


AUTO_MODEL_CLASSES = {
    "AutoModel": CenteredBertModel,
    "AutoModelForSequenceClassification": CenteredBertForSequenceClassification,
    "AutoModelForMaskedLM": CenteredBertForMaskedLM,
    "AutoModelForTokenClassification": CenteredBertForTokenClassification,
    "AutoModelForQuestionAnswering": CenteredBertForQuestionAnswering,
    "AutoModelForMultipleChoice": CenteredBertForMultipleChoice,
    "AutoModelForNextSentencePrediction": CenteredBertForNextSentencePrediction,
    "AutoModelForPreTraining": CenteredBertForPreTraining,
}
"""The model class each Auto class loads for `centered_bert`."""

__all__ = [
    "AUTO_MODEL_CLASSES",
    "CenteredBertForMaskedLM",
    "CenteredBertForMultipleChoice",
    "CenteredBertForNextSentencePrediction",
    "CenteredBertForPreTraining",
    "CenteredBertForQuestionAnswering",
    "CenteredBertForSequenceClassification",
    "CenteredBertForTokenClassification",
    "CenteredBertModel",
    "CenteredBertPreTrainedModel",
]
