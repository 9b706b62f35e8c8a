"""The corrections for any Hugging Face model whose attention goes through transformers' `AttentionInterface`.

`correct(model, correction=..., **fields)` turns a loaded model (RoBERTa, DistilBERT, ELECTRA, ModernBERT, DeiT,
DINOv2, ViT, BERT, Llama, Qwen2, GPT-2, …) into a corrected one in place; `from_pretrained(AutoModelForX, name,
correction=..., **fields)` loads a stock or a corrected checkpoint. The corrections are the same modules, with the
same equations, as in the dedicated `CenteredBert*` / `CenteredViT*` classes; only how they are reached differs:

- **Attention site** (centered attention, NeuTRENO): the model's attention implementation becomes
  `hf_centered_<backend>` (`hf_centered_sdpa`, `hf_centered_eager`), registered with `AttentionInterface` and, with
  the stock mask builder, with `AttentionMaskInterface` (without it the mask would arrive as None and padding would be
  ignored). It runs the stock backend, then the corrections that `correct` attached to the attention module
  (`<attention module>.corrections`). The centered mean is over the keys each query may attend to: a prefix mean
  under a causal mask, the window under local attention, the cache's filled slots while decoding; a mask whose rows
  are such windows is read as each query's first and last key, so no (queries × keys) tensor is kept for backward.
- **Layer-output site** (DGN): each layer of the stack (the one `nn.ModuleList` of `num_hidden_layers`
  checkpointable layers) becomes a same-named subclass that applies `<layer>.output_corrections` to its output,
  inside the region that gradient checkpointing recomputes.
- **Before-norm site** (ContraNorm): forward pre-hooks on the norms, as the reference code places it: in a pre-LN
  model (one whose base model ends with a norm of its own) every norm of a layer, with `<layer>.norm_corrections`,
  and the final norm, with `final_norm_corrections`; in a post-LN model the post-attention norm. On a causal model
  each token is compared with the earlier ones only (and a KV cache cannot be used).
- **Fusion**: the layers' outputs are kept per forward and fused by `<module running the layers>.fusion`, outside
  the checkpointed layers: at the final norm's output in a pre-LN model (each layer through the final norm), at the
  layer stack's output in a post-LN one, before any pooler or head reads it.
- **Per forward**: a forward pre-hook on the base model passes a `ForwardContext` down as a keyword argument (every
  supported family hands its forward's keyword arguments to its layers and attention functions). Layer 0 writes the
  tokens' values into it (NeuTRENO's V⁰); the later layers read them. Being an argument, it is seen again by a layer
  that non-reentrant gradient checkpointing recomputes (a context variable would be gone by then).

The configuration becomes a same-named subclass of the stock one with the correction fields of
`CorrectionConfigMixin` (validated the same way) and `model_type` `corrected_<stock model_type>`; the model becomes a
same-named subclass of its stock class, registered with the same Auto class for that configuration. A saved
corrected model therefore loads as the corrected model wherever this package is imported, and never as the stock one.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import sys

import torch
import transformers
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import eager_mask, sdpa_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

from .configuration_centered import CorrectionConfigMixin
from .correction_base import (
    ATTENTION_SITE,
    BEFORE_NORM_SITE,
    LAYER_OUTPUT_SITE,
    Correction,
    CorrectionState,
    allowed_keys,
)
from .corrections import CORRECTIONS, build_corrections, needs_first_values
from .fusion import LayerFusion, build_fusion
from .modeling_common import (
    CenteredPreTrainedMixin,
    apply_corrections,
    key_padding_mask_from_attention_mask,
    run_corrected_attention,
)

CORRECTED_PREFIX = "hf_centered_"
STOCK_BACKENDS = {"sdpa": sdpa_mask, "eager": eager_mask}
"""The stock attention implementations that a corrected model can run on, with their mask builders."""
CONTEXT_KWARG = "hf_centered_context"
GENERIC_FAMILIES = (
    "bert", "roberta", "distilbert", "electra", "modernbert", "vit", "deit", "dinov2", "llama", "qwen2", "gpt2"
)  # fmt: skip
"""The families tested on the generic path; their corrected checkpoints load in any process that imports the
package. `correct` accepts any other model that has what the sites need (and registers it in that process)."""
AUTO_MODEL_CLASSES = tuple(
    getattr(transformers, name)
    for name in (
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
        "AutoModelForQuestionAnswering",
        "AutoModelForMultipleChoice",
        "AutoModelForImageClassification",
        "AutoModelForMaskedImageModeling",
        "AutoModelForSemanticSegmentation",
        "AutoModelForPreTraining",
        "AutoModelForNextSentencePrediction",
    )
)
SUPPORTED_SITES = (ATTENTION_SITE, BEFORE_NORM_SITE, LAYER_OUTPUT_SITE)
GENERIC_CORRECTIONS = tuple(name for name, cls in CORRECTIONS.items() if cls.site in SUPPORTED_SITES)
"""The corrections available on the generic path."""
CORRECTION_FIELDS = tuple(field.name for field in dataclasses.fields(CorrectionConfigMixin))


@dataclasses.dataclass
class ForwardContext:
    """What the layers of one forward share. Built by the base model's pre-hook; layer 0 sets `first_values`.

    Args:
        past_length: tokens already in the KV cache before this forward (0 without one): the tokens' own keys start
            there, unless the cache returned fewer keys (a sliding window), then they are the last n.
        attention_mask: the mask the base model was called with: `(B, past + n)` padding, a prepared 4-D mask (a
            static cache's spans its every slot), a dict of them per attention type, or None.
        first_values: layer 0's values of this forward's tokens, `(B, H_kv, n, d_h)` (NeuTRENO's V⁰).
        layer_outputs: under a fusion, each layer's output in order, for the fusion after the last layer.
        key_padding_masks, mask_bounds: what `key_padding_mask` and `key_bounds` found for each attention mask (by
            id).
    """

    past_length: int = 0
    attention_mask: torch.Tensor | None = None
    first_values: torch.Tensor | None = None
    layer_outputs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    key_padding_masks: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    mask_bounds: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = dataclasses.field(default_factory=dict)

    def padding_mask(self, num_tokens: int) -> torch.Tensor | None:
        """`(B, n)` bool, True at this forward's real tokens, or None (no mask). A prepared 4-D mask (or a dict of
        them per attention type, as `generate` passes) says which keys some query may attend to: the real ones."""
        mask = self.attention_mask
        if isinstance(mask, dict):
            mask = next((value for value in mask.values() if isinstance(value, torch.Tensor)), None)
        if not isinstance(mask, torch.Tensor):
            return None
        key_mask = self.key_padding_mask(mask)
        start = self.tokens_start(num_tokens, key_mask.shape[-1])
        return key_mask[:, start : start + num_tokens]

    def key_padding_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(B, k)` bool, the keys some query may attend to (the real ones), from a 2-D or 4-D mask; computed once
        per mask and forward, not once per layer."""
        key = id(attention_mask)
        if key not in self.key_padding_masks:
            self.key_padding_masks[key] = key_padding_mask_from_attention_mask(attention_mask, attention_mask.shape[0])
        return self.key_padding_masks[key]

    def key_bounds(
        self, attention_mask: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(first, last)` `(B, q)` when every real query's row of `attention_mask` allows exactly the real keys of
        one window `first..last` (causal, sliding-window and local masks, a KV cache's slots), else None; computed
        once per mask and forward."""
        key = id(attention_mask)
        if key not in self.mask_bounds:
            allowed = allowed_keys(attention_mask)[:, 0].expand(key_mask.shape[0], -1, -1)  # the heads share it
            num_keys = allowed.shape[-1]
            first = allowed.int().argmax(dim=-1)
            last = num_keys - 1 - allowed.flip(-1).int().argmax(dim=-1)
            positions = torch.arange(num_keys, device=allowed.device)
            window = (positions >= first[..., None]) & (positions <= last[..., None]) & key_mask[:, None, :]
            real_queries = allowed.any(dim=-1, keepdim=True)
            is_window = bool(((allowed == window) | ~real_queries).all())
            self.mask_bounds[key] = (first, last) if is_window else None
        return self.mask_bounds[key]

    def tokens_start(self, num_tokens: int, num_keys: int) -> int:
        return self.past_length if self.past_length + num_tokens <= num_keys else num_keys - num_tokens


# --- attention site ---------------------------------------------------------------------------------------------


def stock_backend(name: str, module: nn.Module):
    """The attention function the stock model would call for implementation `name`: its own file's
    `eager_attention_forward` for "eager", else the registered one."""
    if name != "eager":
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(
            f"{type(module).__name__} has no module-level `eager_attention_forward`: the 'eager' implementation "
            "cannot be corrected for it; allowed: attn_implementation='sdpa'."
        )
    return eager


def attention_state(
    module: nn.Module,
    backend: str,
    attention_mask,
    num_queries: int,
    first_values,
    tokens_start: int,
    context: ForwardContext,
    kwargs: dict,
) -> CorrectionState:
    """Which keys each query may attend to, in the form the corrections read (see `CorrectionState`)."""
    if attention_mask is None:
        # What SDPA does without a mask (eager then attends to every key).
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        causal = backend == "sdpa" and num_queries > 1 and bool(is_causal)
        return CorrectionState(first_values=first_values, causal=causal, tokens_start=tokens_start)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
        raise ValueError(
            f"The corrections need a 4-D attention mask, got {type(attention_mask).__name__}; allowed attention "
            f"implementations are {', '.join(repr(name) for name in STOCK_BACKENDS)}."
        )
    local = getattr(module, "sliding_window", None) is not None or kwargs.get("sliding_window") is not None
    key_padding_mask = context.key_padding_mask(attention_mask)
    state = CorrectionState(first_values=first_values, key_padding_mask=key_padding_mask, tokens_start=tokens_start)
    if not (getattr(module, "is_causal", False) or local):
        return state
    bounds = context.key_bounds(attention_mask, key_padding_mask)
    if bounds is not None:
        return dataclasses.replace(state, key_bounds=bounds)
    # A mask whose rows are no window of real keys (packed sequences, a custom mask): read it as it is.
    return dataclasses.replace(state, query_key_mask=attention_mask)


def repeat_heads(tensor: torch.Tensor | None, num_heads: int) -> torch.Tensor | None:
    """`(B, H_kv, k, d_h)` → `(B, H, k, d_h)`: each key/value head repeated for the query heads that share it."""
    if tensor is None or tensor.shape[1] == num_heads:
        return tensor
    return tensor.repeat_interleave(num_heads // tensor.shape[1], dim=1)


def corrected_backend(name: str):
    """The attention function registered as `hf_centered_<name>`: the stock backend `name`, then the module's
    attention-site corrections; a module without corrections gets exactly the stock backend."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        context = kwargs.pop(CONTEXT_KWARG, None)
        backend = stock_backend(name, module)
        corrections = getattr(module, "corrections", None)
        provides_first_values = getattr(module, "provides_first_values", False)
        if not (corrections or provides_first_values):
            return backend(module, query, key, value, attention_mask, **kwargs)
        if context is None:
            raise RuntimeError(
                f"{type(module).__name__} was called without the corrected model's forward context: its model does "
                "not pass its forward's keyword arguments down to the attention, so it cannot be corrected."
            )
        num_queries = query.shape[2]
        start = context.tokens_start(num_queries, key.shape[2])
        if provides_first_values:
            context.first_values = value[:, :, start : start + num_queries]
        if not corrections:
            return backend(module, query, key, value, attention_mask, **kwargs)
        first_values = context.first_values
        if first_values is not None and value.requires_grad and not first_values.requires_grad:
            raise RuntimeError(
                "NeuTRENO's V⁰ was computed without gradient: reentrant gradient checkpointing recomputes a layer "
                "after the forward, so V⁰ would be detached; allowed: gradient_checkpointing_enable("
                "gradient_checkpointing_kwargs={'use_reentrant': False})."
            )
        num_heads = query.shape[1]
        state = attention_state(
            module, name, attention_mask, num_queries, repeat_heads(first_values, num_heads), start, context, kwargs
        )
        return run_corrected_attention(
            corrections,
            backend,
            module,
            query,
            key,
            value,
            attention_mask,
            state,
            head_values=repeat_heads(value, num_heads) if value.shape[1] != num_heads else None,
            **kwargs,
        )

    attention.__name__ = attention.__qualname__ = f"{CORRECTED_PREFIX}{name}_attention"
    return attention


def register_corrected_backends() -> None:
    """Registers `hf_centered_sdpa` and `hf_centered_eager` with their stock mask builders; idempotent."""
    for name, mask_builder in STOCK_BACKENDS.items():
        AttentionInterface.register(CORRECTED_PREFIX + name, corrected_backend(name))
        AttentionMaskInterface.register(CORRECTED_PREFIX + name, mask_builder)


def corrected_implementation(implementation: str | None) -> str:
    """`hf_centered_<backend>` for a stock implementation name (or a corrected one, unchanged)."""
    implementation = implementation or "sdpa"
    if implementation.startswith(CORRECTED_PREFIX) and implementation[len(CORRECTED_PREFIX) :] in STOCK_BACKENDS:
        return implementation
    if implementation not in STOCK_BACKENDS:
        raise ValueError(
            f"attn_implementation={implementation!r} cannot be corrected: allowed values are "
            f"{', '.join(repr(name) for name in STOCK_BACKENDS)}."
        )
    return CORRECTED_PREFIX + implementation


# --- finding the sites --------------------------------------------------------------------------------------------


@functools.cache
def _calls_attention_interface(module_class: type) -> bool:
    try:
        source = inspect.getsource(module_class.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The model's stack of layers: its one `nn.ModuleList` of `num_hidden_layers` checkpointable layers."""
    num_layers = model.config.num_hidden_layers
    stacks = [
        module
        for module in model.modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == num_layers
        and all(isinstance(layer, GradientCheckpointingLayer) for layer in module)
    ]
    if len(stacks) != 1:
        raise ValueError(
            f"{type(model).__name__} cannot be corrected: the corrections need exactly one nn.ModuleList of "
            f"num_hidden_layers={num_layers} GradientCheckpointingLayer layers, found {len(stacks)}."
        )
    return stacks[0]


def attention_module(layer: nn.Module) -> nn.Module:
    """The one module of `layer` that calls its attention through `ALL_ATTENTION_FUNCTIONS`."""
    found = [module for module in layer.modules() if _calls_attention_interface(type(module))]
    if len(found) != 1:
        raise ValueError(
            f"{type(layer).__name__} cannot be corrected: the corrections need exactly one attention module that "
            f"calls ALL_ATTENTION_FUNCTIONS in each layer, found {len(found)} "
            f"({', '.join(type(module).__name__ for module in found) or 'none'})."
        )
    return found[0]


# --- layer-output site --------------------------------------------------------------------------------------------


class CorrectedLayerMixin:
    """A layer with `output_corrections` applied to its output (the first element where it returns a tuple), and
    `norm_corrections` applied to the input of its hooked norms (see `correct_norm_input`).

    The forward context is held in `active_context` while the layer runs, for the norms' hooks: it is set again when
    gradient checkpointing recomputes the layer, which calls this `forward` with the same arguments.
    """

    active_context: ForwardContext | None = None
    keeps_output = False  # under a fusion, with `layer_index`
    layer_index = 0

    def forward(self, *args, **kwargs):
        context: ForwardContext | None = kwargs.get(CONTEXT_KWARG)
        if context is None and (self.output_corrections or self.norm_corrections or self.keeps_output):
            raise RuntimeError(f"{type(self).__name__} was called without the corrected model's forward context.")
        self.active_context = context
        try:
            output = super().forward(*args, **kwargs)
        finally:
            self.active_context = None
        hidden_states = output[0] if isinstance(output, tuple) else output
        if self.output_corrections:
            state = CorrectionState(padding_mask=context.padding_mask(hidden_states.shape[1]))
            hidden_states = apply_corrections(self.output_corrections, hidden_states, state)
            output = (hidden_states, *output[1:]) if isinstance(output, tuple) else hidden_states
        # Under a fusion each output is kept for it, once: a recomputation by gradient checkpointing calls this forward
        # again and must not append it a second time (the fusion itself runs outside the checkpointed layers).
        if self.keeps_output and len(context.layer_outputs) == self.layer_index:
            context.layer_outputs.append(hidden_states)
        return output


# --- before-norm site ---------------------------------------------------------------------------------------


def is_norm(module: nn.Module, hidden_size: int) -> bool:
    """A LayerNorm or RMSNorm over the hidden features (by class name: each family defines its own RMSNorm)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("Norm")
        and isinstance(weight, torch.Tensor)
        and tuple(weight.shape) == (hidden_size,)
    )


def final_norm(base_model: nn.Module) -> nn.Module | None:
    """The norm the base model applies after its layers (a direct child), which makes it a pre-LN model; None for a
    post-LN model (BERT and its kin), whose layers end with their own norm."""
    hidden_size = base_model.config.hidden_size
    norms = [module for module in base_model.children() if is_norm(module, hidden_size)]
    return norms[-1] if norms else None


def hooked_norms(layer: nn.Module, hidden_size: int, pre_norm: bool) -> list[nn.Module]:
    """The norms before which ContraNorm acts in `layer`, as in the reference code: in a pre-LN model every norm of
    the layer (DeiT's ViT), in a post-LN model the post-attention norm, the layer's first (BERT's ``--pos 7``)."""
    norms = [module for module in layer.modules() if is_norm(module, hidden_size)]
    return norms if pre_norm else norms[:1]


def norm_state(hidden: torch.Tensor, context: ForwardContext, causal: bool) -> CorrectionState:
    return CorrectionState(padding_mask=context.padding_mask(hidden.shape[1]), causal=causal)


def correct_norm_input(norm: nn.Module, args: tuple, layer: nn.Module):
    """Forward pre-hook of a norm inside `layer`: its input through the layer's `norm_corrections`."""
    hidden = args[0]
    state = norm_state(hidden, layer.active_context, layer.causal_attention)
    return (apply_corrections(layer.norm_corrections, hidden, state), *args[1:])


def correct_final_norm_input(norm: nn.Module, args: tuple, base_model: nn.Module):
    """Forward pre-hook of the final norm: its input through `final_norm_corrections`. The final norm runs in the
    base model's forward outside the checkpointed layers, so the context its pre-hook stored is this forward's."""
    hidden = args[0]
    state = norm_state(hidden, base_model.active_context, base_model.causal_attention)
    return (apply_corrections(base_model.final_norm_corrections, hidden, state), *args[1:])


# --- fusion -----------------------------------------------------------------------------------------------


def fuse_at_final_norm(
    norm: nn.Module, args: tuple, output: torch.Tensor, base_model: nn.Module, fusion: LayerFusion
) -> torch.Tensor:
    """Forward hook of a pre-LN model's final norm: the fusion of every layer's output, each through the final norm
    (and its corrections), as in the corrected ViT; the last one is this call's own output."""
    state = norm_state(output, base_model.active_context, base_model.causal_attention)
    earlier = (
        type(norm).forward(norm, apply_corrections(base_model.final_norm_corrections, hidden, state))
        for hidden in base_model.active_context.layer_outputs[:-1]
    )
    return fusion(itertools.chain(earlier, [output]))


def fuse_at_stack_output(
    stack_owner: nn.Module, args: tuple, kwargs: dict, output, base_model: nn.Module, fusion: LayerFusion
):
    """Forward hook of the module that runs a post-LN model's layers: its `last_hidden_state` (or first element)
    becomes the fusion of every layer's output, before a pooler or head reads it."""
    fused = fusion(base_model.active_context.layer_outputs)
    if isinstance(output, tuple):
        return (fused, *output[1:])
    output["last_hidden_state"] = fused  # a ModelOutput keeps its fields as attributes and items alike
    return output


# --- classes --------------------------------------------------------------------------------------------------


def _subclass(mixin: type, stock_class: type, namespace: dict | None = None) -> type:
    """A subclass of `stock_class` with the same name, defined in this module (where pickle, and the `auto_map` of a
    saved folder, find it by that name)."""
    name = stock_class.__name__
    cls = type(name, (mixin, stock_class), {"__module__": __name__, "__qualname__": name, **(namespace or {})})
    globals()[name] = cls
    return cls


def __getattr__(name: str) -> type:
    """`modeling_generic.<stock class name>`: the corrected configuration or model class of that stock class, built on
    first use. This is how the `auto_map` of a saved corrected model names its classes, so that the folder loads with
    `trust_remote_code=True` where this package is absent (this file and its siblings are copied into it)."""
    stock_class = None if name.startswith("_") else getattr(transformers, name, None)
    if isinstance(stock_class, type) and issubclass(stock_class, PretrainedConfig):
        return corrected_config_class(stock_class)
    if isinstance(stock_class, type) and issubclass(stock_class, PreTrainedModel) and stock_class.config_class:
        return corrected_model_class(stock_class)
    stock_class = None if name.startswith("_") else loaded_stock_module_class(name)
    if stock_class is not None and issubclass(stock_class, PreTrainedModel) and stock_class.config_class:
        return corrected_model_class(stock_class)
    if stock_class is not None and issubclass(stock_class, GradientCheckpointingLayer):
        return corrected_layer_class(stock_class)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def loaded_stock_module_class(name: str) -> type | None:
    """The module class `name` defined in an imported transformers modeling module, or None: what pickle asks for
    when it unpickles a corrected layer or inner model (e.g. DINOv2's encoder), classes transformers does not export
    at its top level. The pickled model's own class comes first in a pickle; resolving it imports its family's
    module, which defines the others."""
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("transformers.models."):
            continue
        candidate = vars(module).get(name)
        if isinstance(candidate, type) and candidate.__module__ == module_name and issubclass(candidate, nn.Module):
            return candidate
    return None


class CorrectedConfigMixin(CorrectionConfigMixin):
    """A corrected configuration registers its family's corrected models with the Auto classes when first built, so
    that `AutoModelFor*.from_pretrained(<corrected checkpoint>)` finds them."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        register_corrected_models(type(self))

    @property
    def tie_last_hidden_states(self) -> bool | None:
        """Under a fusion `hidden_states[-1]` stays the raw last layer (the fused output is `last_hidden_state`);
        otherwise as the stock model records it (None: the family's own choice)."""
        return False if self.has_fusion else None


@functools.cache
def corrected_config_class(stock_config_class: type) -> type:
    """The stock configuration class plus the correction fields, `model_type` `corrected_<stock model_type>`,
    registered with `AutoConfig`."""
    from huggingface_hub.dataclasses import strict

    namespace = {
        "model_type": f"corrected_{stock_config_class.model_type}",
        "stock_model_type": stock_config_class.model_type,
        "stock_config_class": stock_config_class,
        "__doc__": f"[`{stock_config_class.__name__}`] plus the correction fields of [`CorrectionConfigMixin`].",
    }
    config_class = strict(_subclass(CorrectedConfigMixin, stock_config_class, namespace))
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    return config_class


@functools.cache
def register_corrected_models(config_class: type) -> None:
    """Registers, for every Auto model class that maps the stock configuration to a model, the corrected subclass of
    that model for `config_class`."""
    config_class.register_for_auto_class()
    for auto_name, heads in stock_heads(config_class.stock_config_class).items():
        model_classes = tuple(corrected_model_class(head) for head in heads)
        # Several heads: the Auto class picks the one the configuration's `architectures` names, as for stock ones.
        registered = model_classes[0] if len(model_classes) == 1 else model_classes
        getattr(transformers, auto_name).register(config_class, registered, exist_ok=True)
        # Saved folders then carry this file and its siblings, with every head in `auto_map` (see
        # `CenteredPreTrainedMixin.save_pretrained`): they load with `trust_remote_code=True` without the package.
        for model_class in model_classes:
            model_class.register_for_auto_class(auto_name)


def stock_heads(stock_config_class: type) -> dict[str, tuple[type, ...]]:
    """`{Auto class name: stock model classes}` of every Auto class that maps `stock_config_class` to a model: one
    class, or several where the family has several such heads (DeiT's image classifiers without and with the
    distillation head), the Auto class's default first."""
    heads = {}
    for auto_class in AUTO_MODEL_CLASSES:
        model_classes = auto_class._model_mapping.get(stock_config_class, None)
        if isinstance(model_classes, type):
            model_classes = (model_classes,)
        if model_classes:
            heads[auto_class.__name__] = tuple(model_classes)
    return heads


@functools.cache
def corrected_layer_class(stock_layer_class: type) -> type:
    return _subclass(CorrectedLayerMixin, stock_layer_class)


def register_generic_families() -> None:
    """Registers `corrected_<family>` with `AutoConfig` for every family of `GENERIC_FAMILIES`; idempotent."""
    for family in GENERIC_FAMILIES:
        corrected_config_class(CONFIG_MAPPING[family])


class CorrectedModelMixin(CenteredPreTrainedMixin):
    """What a corrected model adds to its stock class: the corrections installed from its configuration."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        install_corrections(self)
        self.post_init()

    @classmethod
    def auto_model_classes(cls) -> dict[str, type]:
        """Where an Auto class has several heads for the family, this class if it is one of them, else the default."""
        stock_config_class = cls.config_class.stock_config_class
        return {
            name: corrected_model_class(next((head for head in heads if issubclass(cls, head)), heads[0]))
            for name, heads in stock_heads(stock_config_class).items()
        }

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """A stock implementation name selects its corrected counterpart (the corrections would be skipped)."""
        if isinstance(attn_implementation, str):
            attn_implementation = corrected_implementation(attn_implementation)
        return super().set_attn_implementation(attn_implementation, *args, **kwargs)


@functools.cache
def corrected_model_class(stock_model_class: type) -> type:
    config_class = corrected_config_class(stock_model_class.config_class)
    return _subclass(CorrectedModelMixin, stock_model_class, {"config_class": config_class})


# --- installing -----------------------------------------------------------------------------------------------


def become_corrected(model: PreTrainedModel) -> None:
    """Turns a stock model instance into one of its corrected class, as if built by it."""
    model.__class__ = corrected_model_class(type(model))
    model.built_structure = model.config.structure()
    # What PreTrainedModel.__init__ does per class: without it, output_hidden_states would return nothing.
    _CAN_RECORD_REGISTRY[model] = model._can_record_outputs


def install_corrections(model: nn.Module) -> None:
    """Builds the corrections `model.config` asks for into the stock modules of `model` (new parameters on the
    model's device and dtype, not initialised), points the model at the corrected attention implementation and adds
    the forward pre-hook of the base model."""
    config = model.config
    if model.base_model is not model and getattr(model.base_model, "has_correction_context_hook", False):
        return  # a head that builds its base model through the Auto classes (Llama's) got a corrected one already
    register_corrected_backends()
    layers = layer_stack(model)
    reference = next(model.parameters(), None)
    placement = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}

    def placed(corrections: nn.ModuleDict, owner: nn.Module) -> nn.ModuleDict:
        return corrections.to(**placement).train(owner.training)

    base_model = model.base_model
    last_norm = final_norm(base_model)
    causal = False
    for layer_idx, layer in enumerate(layers):
        attention = attention_module(layer)
        causal = bool(getattr(attention, "is_causal", False))
        attention.corrections = placed(build_corrections(config, layer_idx, ATTENTION_SITE), attention)
        attention.provides_first_values = layer_idx == 0 and needs_first_values(config)
        layer.__class__ = corrected_layer_class(type(layer))
        layer.output_corrections = placed(build_corrections(config, layer_idx, LAYER_OUTPUT_SITE), layer)
        layer.norm_corrections = placed(build_corrections(config, layer_idx, BEFORE_NORM_SITE), layer)
        layer.causal_attention = causal
        if layer.norm_corrections:
            for norm in hooked_norms(layer, config.hidden_size, pre_norm=last_norm is not None):
                norm.register_forward_pre_hook(functools.partial(correct_norm_input, layer=layer))
    base_model.causal_attention = causal
    if causal and needs_every_token(config):
        # ContraNorm cannot continue from a KV cache: generation recomputes the whole sequence at each step instead.
        config.use_cache = False
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.use_cache = False
    # As in the corrected ViT: the final norm is corrected when the last layer is, with its own strength.
    final_corrections = build_corrections(config, config.num_hidden_layers - 1, BEFORE_NORM_SITE)
    base_model.final_norm_corrections = placed(final_corrections if last_norm else nn.ModuleDict(), base_model)
    if base_model.final_norm_corrections:
        last_norm.register_forward_pre_hook(functools.partial(correct_final_norm_input, base_model=base_model))
    # The fusion belongs to the module that runs the layers, as in the corrected BERT (its encoder) and ViT (the model).
    owner = next(module for module in base_model.modules() if any(child is layers for child in module.children()))
    owner.fusion = build_fusion(config)
    if owner.fusion is not None:
        owner.fusion.to(**placement).train(owner.training)
        for layer_index, layer in enumerate(layers):
            layer.keeps_output, layer.layer_index = True, layer_index
        if last_norm is not None:
            hook = functools.partial(fuse_at_final_norm, base_model=base_model, fusion=owner.fusion)
            last_norm.register_forward_hook(hook)
        else:
            hook = functools.partial(fuse_at_stack_output, base_model=base_model, fusion=owner.fusion)
            owner.register_forward_hook(hook, with_kwargs=True)
    model.config._attn_implementation_internal = corrected_implementation(config._attn_implementation)
    # transformers initialises (missing) weights with the `_init_weights` of the innermost model that holds them:
    # the inner stock models become their corrected counterparts, whose `_init_weights` knows the corrections.
    for submodule in model.modules():
        if isinstance(submodule, PreTrainedModel) and not isinstance(submodule, CorrectedModelMixin):
            become_corrected(submodule)
    if not getattr(base_model, "has_correction_context_hook", False):
        base_model.register_forward_pre_hook(functools.partial(inject_context, model=model), with_kwargs=True)
        base_model.has_correction_context_hook = True


@functools.cache
def forward_signature(model_class: type) -> inspect.Signature:
    """The signature of `model_class.forward` (read once per class: the pre-hook binds it at every forward)."""
    return inspect.signature(model_class.forward)


def inject_context(base_model: nn.Module, args: tuple, kwargs: dict, model: nn.Module):
    """Forward pre-hook of the base model: checks the configuration and passes a fresh `ForwardContext` down."""
    config = model.config
    config.check_structure(model.built_structure)
    if not config._attn_implementation.startswith(CORRECTED_PREFIX):
        raise ValueError(
            f"config._attn_implementation={config._attn_implementation!r} would skip the corrections; allowed: "
            f"model.set_attn_implementation({', '.join(repr(name) for name in STOCK_BACKENDS)})."
        )
    if model.training and needs_first_values(config):
        check_not_reentrant(model)
    bound = forward_signature(type(base_model)).bind_partial(base_model, *args, **kwargs).arguments
    cache = bound.get("past_key_values")
    # A static cache counts in a tensor that its update advances in place: the count before this forward is copied.
    past_length = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
    if past_length and base_model.causal_attention and needs_every_token(config):
        raise ValueError(
            "ContraNorm compares each token with every earlier one in every layer, which a KV cache does not keep; "
            "allowed: generate(..., use_cache=False), or a model without ContraNorm."
        )
    context = ForwardContext(past_length=past_length, attention_mask=bound.get("attention_mask"))
    base_model.active_context = context
    return args, {**kwargs, CONTEXT_KWARG: context}


def needs_every_token(config) -> bool:
    """Whether a correction of `config` reads the hidden states of every token of the sequence (ContraNorm)."""
    return any(CORRECTIONS[name].site == BEFORE_NORM_SITE for name in config.corrections)


def check_not_reentrant(model: nn.Module) -> None:
    for module in model.modules():
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and checkpoint is not None:
            if getattr(checkpoint, "keywords", {}).get("use_reentrant", False):
                raise ValueError(
                    "gradient checkpointing with use_reentrant=True would detach NeuTRENO's V⁰ (a reentrant "
                    "recomputation runs after the forward); allowed: gradient_checkpointing_enable("
                    "gradient_checkpointing_kwargs={'use_reentrant': False})."
                )
            return


def check_fields(fields: dict) -> None:
    unknown = sorted(set(fields) - set(CORRECTION_FIELDS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not correction fields; allowed: {', '.join(CORRECTION_FIELDS)}.")


def corrected_candidate(stock_config, fields: dict):
    """A copy of `stock_config` as its corrected class with `fields` (the others at their defaults), validated; the
    stock configuration is left as it is."""
    check_fields(fields)
    config_class = corrected_config_class(type(stock_config))
    candidate = config_class.__new__(config_class)
    candidate.__dict__.update(stock_config.__dict__)
    defaults = {field.name: field.default for field in dataclasses.fields(CorrectionConfigMixin)}
    candidate.__dict__.update({**defaults, **fields})
    candidate.validate_corrections()
    return candidate


def correct(model: nn.Module, correction: str | list[str] = "centered", **fields) -> nn.Module:
    """Corrects a loaded model of any supported family in place and returns it.

    Args:
        model: a stock `PreTrainedModel` (any head) whose attention goes through `AttentionInterface`.
        correction: one of `available_corrections()` or a list of several (as `CorrectionConfigMixin.correction`).
        fields: the other correction fields of `CorrectionConfigMixin` (`centered_scale`, `neutreno_lambda`,
            `correction_layers`, `correction_strength`, …), validated as in the dedicated configurations.

    The new parameters (learned gates, DGN) are initialised; every stock weight is kept, so that with
    `correction_strength="learned"` the corrected model equals the stock one until training moves the gates.
    Invalid fields raise `ValueError` before anything changes.
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(
            f"correct() takes a transformers PreTrainedModel (a model or a head), got {type(model).__name__}."
        )
    if isinstance(model.config, CorrectionConfigMixin):
        raise ValueError(
            f"{type(model).__name__} is corrected already ({model.config.model_type}); allowed: a stock model, or "
            "from_pretrained(..., **fields) to load a corrected one with other fields."
        )
    candidate = corrected_candidate(model.config, {"correction": correction, **fields})
    # Everything a correction needs is checked before the model changes: a refused model stays the stock one.
    corrected_implementation(model.config._attn_implementation)
    for layer in layer_stack(model):
        attention_module(layer)
    register_corrected_models(type(candidate))
    config = model.config
    config.__class__ = type(candidate)
    config.__dict__.update(candidate.__dict__)
    become_corrected(model)
    install_corrections(model)
    for module in model.modules():
        if isinstance(module, (Correction, LayerFusion)):
            module.reset_parameters()
    return model


HUB_ARGUMENTS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "token",
    "revision",
    "subfolder",
    "trust_remote_code",
)
"""The `from_pretrained` arguments that reach the configuration too."""


def from_pretrained(auto_class: type, name_or_path, correction: str | list[str] | None = None, **kwargs) -> nn.Module:
    """Loads a stock or a corrected checkpoint with `auto_class` (e.g. `AutoModelForCausalLM`).

    Args:
        auto_class: the Auto class of the head to load.
        name_or_path: a Hub name or a folder.
        correction: the corrections (as `correct`); None keeps a corrected checkpoint's own, and corrects a stock one
            with the default ("centered").
        kwargs: correction fields (`centered_scale`, `correction_strength`, …) and `from_pretrained` arguments
            (`num_labels`, `torch_dtype`, `attn_implementation`, `revision`, …).
    """
    fields = {name: kwargs.pop(name) for name in list(kwargs) if name in CORRECTION_FIELDS}
    if correction is not None:
        fields["correction"] = correction
    config = AutoConfig.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items() if k in HUB_ARGUMENTS})
    if isinstance(config, CorrectionConfigMixin):
        return auto_class.from_pretrained(name_or_path, **fields, **kwargs)
    corrected_candidate(config, {"correction": "centered", **fields})  # invalid fields: refused before the weights load
    return correct(auto_class.from_pretrained(name_or_path, **kwargs), **fields)
