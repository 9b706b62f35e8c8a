"""Glue shared by the corrected BERT and ViT: backend dispatch with corrections, padding masks, correction loops."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .correction_base import Correction, CorrectionState, allowed_keys, deepcopy_attributes
from .corrections import needs_first_values
from .fusion import LayerFusion


def apply_corrections(corrections: nn.ModuleDict, tensor: torch.Tensor, *inputs) -> torch.Tensor:
    """Applies each correction of a site in turn: `tensor = correction(tensor, *inputs)`."""
    for correction in corrections.values():
        tensor = correction(tensor, *inputs)
    return tensor


def run_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    attention_mask,
    padding_mask,
    key_padding_mask,
    **kwargs,
) -> Iterator[torch.Tensor]:
    """Yields each encoder layer's output only when it is asked for, so that a fusion consumes them one at a time.

    A layer that provides NeuTRENO's V⁰ (layer 0, see `provides_first_values`) returns `(output, first_values)`;
    the later layers get `first_values` positionally, so that reentrant gradient checkpointing propagates its gradient.
    """
    first_values = None
    for layer in layers:
        output = layer(
            hidden_states,
            attention_mask,
            first_values,
            padding_mask=padding_mask,
            key_padding_mask=key_padding_mask,
            **kwargs,
        )
        hidden_states, first_values = output if isinstance(output, tuple) else (output, first_values)
        yield hidden_states


def provides_first_values(config, layer_idx: int) -> bool:
    """Whether layer `layer_idx` projects V⁰ for the later layers: layer 0, when some corrected layer reads it.

    Layer 0 projects it in its own forward, where its weights are at hand: FSDP sharding every layer gathers a layer's
    weights only while that layer runs.
    """
    return layer_idx == 0 and needs_first_values(config)


def last_output(layer_outputs: Iterator[torch.Tensor]) -> torch.Tensor:
    """Runs every layer of `run_layers` and returns the last one's output, holding no earlier output."""
    for hidden_states in layer_outputs:  # noqa: B007 (only the last one is kept)
        pass
    return hidden_states


def complete_auto_map(config_class: type, auto_model_classes: dict[str, type]) -> dict[str, str]:
    """`auto_map` naming AutoConfig and the model class of every Auto class in `auto_model_classes`, each as
    `module.Class` with the module's base name (the modelling files are copied flat into a saved folder)."""
    classes = {"AutoConfig": config_class, **auto_model_classes}
    return {auto: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for auto, cls in classes.items()}


class CenteredPreTrainedMixin:
    """What the corrected BERT and ViT `PreTrainedModel`s add to the stock ones, for every head.

    - `save_pretrained` names AutoConfig, AutoModel and every head in `auto_map`: transformers names only the saved
      class (and AutoConfig), so a folder written by `save_pretrained` or `Trainer.save_model` would otherwise load
      through that one Auto class only where the package is absent. A family's classes are `auto_model_classes()`.
    - An old-style `"gradient_checkpointing": true` in `config.json` is honoured as the stock models honour it.
      transformers consumes that flag (it enables checkpointing on the layers present, then deletes it) in the
      `post_init` that every stock `__init__` calls, which runs before our classes replace the layers, and in a head
      before the head replaces its stock backbone. So it is held back from the stock constructors and handed back for
      the `post_init` our classes call last, once their own layers are in place.
    - `_init_weights` also initialises the corrections' and the fusion's new parameters.
    - `copy.deepcopy(model)` copies the configuration before the modules, so that the copied corrections read the
      copy's configuration (a correction copied on its own keeps reading the model's, see `Correction.__deepcopy__`).
    - `correction_strengths()` reports the strength of every correction where it acts.
    - `save_pretrained` refuses a configuration changed in a field that decides the modules (`structure()`) or made
      invalid since the model was built; every forward checks the structure too.
    """

    def __init__(self, config, *args, **kwargs):
        gradient_checkpointing = getattr(config, "gradient_checkpointing", False)
        if gradient_checkpointing:
            delattr(config, "gradient_checkpointing")
        super().__init__(config, *args, **kwargs)
        if gradient_checkpointing:
            config.gradient_checkpointing = gradient_checkpointing
        self.built_structure = config.structure()

    @classmethod
    def auto_model_classes(cls) -> dict[str, type]:
        raise NotImplementedError

    def save_pretrained(self, save_directory, *args, **kwargs):
        # What is saved must be what this model computes: its configuration's structure unchanged, every field valid.
        self.config.check_structure(self.built_structure)
        self.config.validate_corrections()
        if self.is_remote_code():  # only then is the modelling code copied alongside
            self.config.auto_map = complete_auto_map(type(self.config), self.auto_model_classes())
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (Correction, LayerFusion)):
            module.reset_parameters()

    def __deepcopy__(self, memo: dict):
        copy.deepcopy(self.config, memo)
        return deepcopy_attributes(self, memo)

    def correction_strengths(self) -> dict[str, dict[str, list[float]]]:
        """The effective strength of every correction where it acts, as plain floats: `{correction: {place: values}}`.

        Places are `"layer i"` (0-based) and, for the ViT's ContraNorm before the final norm, `"final norm"`; values
        hold one float per head at the attention site (centered, NeuTRENO) when the strengths are learned, else one
        float. With `correction_strength="learned"` a value is the configured strength times its gate (0 before
        training, negative where training asked for the opposite correction); with `"fixed"` it is the configured
        strength. A gated fusion (`max`, `gate`) appears as `"<name> fusion"` with its mixing weight at `"output"`.
        """
        strengths: dict[str, dict[str, list[float]]] = {}
        for path, module in self.named_modules():
            if isinstance(module, Correction):
                place = "final norm" if "final_norm" in path else f"layer {module.layer_idx}"
                entries = strengths.setdefault(module.name, {})
            elif isinstance(module, LayerFusion) and module.strength_gate is not None:
                place, entries = "output", strengths.setdefault(f"{module.name} fusion", {})
            else:
                continue
            strength = module.strength()
            entries[place] = strength.detach().float().tolist() if isinstance(strength, torch.Tensor) else [strength]
        order = [*self.config.corrections, *(name for name in strengths if name.endswith(" fusion"))]
        return {name: strengths[name] for name in order if name in strengths}


def is_plain_linear(module: nn.Module) -> bool:
    """Whether calling `module` is exactly `F.linear(x, module.weight, module.bias)`: an `nn.Linear` that no PEFT
    adapter, quantisation, accelerate hook or forward hook replaces or observes, so a correction may compute it."""
    return (
        type(module) is nn.Linear
        and "forward" not in vars(module)
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
    )


def corrected_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    state: CorrectionState,
    eager_attention_forward: Callable,
    output_projection: nn.Module | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`run_corrected_attention` with the module's corrections and the backend that `config._attn_implementation`
    names."""
    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        module.config._attn_implementation, eager_attention_forward
    )
    return run_corrected_attention(
        module.corrections,
        attention_interface,
        module,
        query,
        key,
        value,
        attention_mask,
        state,
        output_projection=output_projection,
        **kwargs,
    )


def run_corrected_attention(
    corrections: nn.ModuleDict,
    attention_interface: Callable,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    state: CorrectionState,
    output_projection: nn.Module | None = None,
    head_values: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Runs the attention backend, then the attention-site `corrections`: the one implementation of that site, for
    the corrected BERT and ViT and for any model through `modeling_generic`.

    `query` is `(B, H, n, d_h)`, `key/value` are `(B, H_kv, k, d_h)` (k > n under prefix tuning, whose virtual keys
    come first, or with a KV cache); `head_values` are the values per query head, `(B, H, k, d_h)`, where grouped-
    query attention shares a key/value head between several query heads (H_kv < H; None: `value` itself). Returns the
    context `(B, n, H, d_h)`, or with `output_projection` the projected attention output `(B, n, d)`, and the
    backend's weights (None for fused backends). The corrections only need the context and V, so SDPA and flash keep
    working. Without attention dropout and with a value head per query head, the leading corrections that have a
    `value_shift` are folded into V instead (see `Correction.value_shift`); the last one computes the projection
    itself when it can (see `Correction.project`).
    """
    corrections = list(corrections.values())
    backend_value = value
    if head_values is None:
        head_values = value
    # Only a leading run is folded: a correction applied after a non-shift one need not commute with it.
    while corrections and not kwargs.get("dropout") and head_values is value:
        shift = corrections[0].value_shift(value, state)
        if shift is None:
            break
        backend_value = backend_value - shift
        corrections.pop(0)
    context, weights = attention_interface(module, query, key, backend_value, attention_mask, **kwargs)
    projecting_correction = None
    # A saved `torch.jit.trace` cannot hold the autograd Function that a projecting correction runs.
    can_project = output_projection is not None and is_plain_linear(output_projection) and not torch.jit.is_tracing()
    if corrections and can_project:
        projecting_correction = corrections.pop()
    for correction in corrections:
        context = correction(context, head_values, state)
    if output_projection is None:
        return context, weights
    if projecting_correction is not None:
        projected = projecting_correction.project(context, head_values, state, output_projection)
        if projected is not None:
            return projected, weights
        context = projecting_correction(context, head_values, state)
    return output_projection(context.reshape(*context.shape[:2], -1).contiguous()), weights


def padding_mask_from_attention_mask(attention_mask, batch_size: int, seq_len: int) -> torch.Tensor | None:
    """`(B, n)` bool real-token mask from the mask the attention backend was given, or None (no padding): the mask of
    the last n keys, since prefix tuning's virtual keys come first."""
    key_padding_mask = key_padding_mask_from_attention_mask(attention_mask, batch_size)
    return None if key_padding_mask is None else key_padding_mask[:, -seq_len:]


def key_padding_mask_from_attention_mask(attention_mask, batch_size: int) -> torch.Tensor | None:
    """`(B, k)` bool mask of the keys a query may attend to, from the mask the attention backend was given, or None
    (every key may be attended to).

    Handles the 2-D mask of flash attention, the boolean 4-D mask of SDPA and the additive 4-D mask of eager; a key
    is real when some query may attend to it, which for an encoder's padding mask is exactly its mask value. The keys
    are the n tokens, preceded under prefix tuning by its virtual keys.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"The corrections need a padding mask, got an attention mask of type {type(attention_mask).__name__} "
            "(flex attention's BlockMask is not supported); allowed attention implementations are 'eager', 'sdpa' "
            "and 'flash_attention_*'."
        )
    if attention_mask.dim() == 2:
        return attention_mask.bool()
    if attention_mask.dim() != 4:
        raise ValueError(f"Expected a 2-D or 4-D attention mask, got shape {tuple(attention_mask.shape)}.")
    return allowed_keys(attention_mask).any(dim=(1, 2)).expand(batch_size, -1)
