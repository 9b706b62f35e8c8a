"""Glue shared by the corrected BERT and ViT: backend dispatch with corrections, padding masks, correction loops."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .correction_base import CorrectionState


def apply_corrections(corrections: nn.ModuleDict, tensor: torch.Tensor, *inputs) -> torch.Tensor:
    """Applies each correction of a site in turn: `tensor = correction(tensor, *inputs)`."""
    for correction in corrections.values():
        tensor = correction(tensor, *inputs)
    return tensor


def run_layers(
    layers: nn.ModuleList, hidden_states: torch.Tensor, attention_mask, first_values, padding_mask, **kwargs
) -> Iterator[torch.Tensor]:
    """Yields each encoder layer's output only when it is asked for, so that a fusion consumes them one at a time.

    `first_values` goes positionally so that reentrant gradient checkpointing propagates its gradient.
    """
    for layer in layers:
        hidden_states = layer(hidden_states, attention_mask, first_values, padding_mask=padding_mask, **kwargs)
        yield hidden_states


def last_output(layer_outputs: Iterator[torch.Tensor]) -> torch.Tensor:
    """Runs every layer of `run_layers` and returns the last one's output, holding no earlier output."""
    for hidden_states in layer_outputs:  # noqa: B007 (only the last one is kept)
        pass
    return hidden_states


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
    """Runs the backend that `config._attn_implementation` names, then the module's attention-site corrections.

    `query/key/value` are `(B, H, n, d_h)`; returns the context `(B, n, H, d_h)`, or with `output_projection` the
    projected attention output `(B, n, d)`, and the backend's weights (None for fused backends). The corrections only
    need the context and V, so SDPA and flash keep working. Without attention dropout, the leading corrections that
    have a `value_shift` are folded into V instead (see `Correction.value_shift`); the last one computes the
    projection itself when it can (see `Correction.project`).
    """
    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        module.config._attn_implementation, eager_attention_forward
    )
    corrections = list(module.corrections.values())
    backend_value = value
    # Only a leading run is folded: a correction applied after a non-shift one need not commute with it.
    while corrections and not kwargs.get("dropout"):
        shift = corrections[0].value_shift(value, state)
        if shift is None:
            break
        backend_value = backend_value - shift
        corrections.pop(0)
    context, weights = attention_interface(module, query, key, backend_value, attention_mask, **kwargs)
    projecting_correction = None
    if output_projection is not None and corrections and is_plain_linear(output_projection):
        projecting_correction = corrections.pop()
    for correction in corrections:
        context = correction(context, value, state)
    if output_projection is None:
        return context, weights
    if projecting_correction is not None:
        projected = projecting_correction.project(context, value, state, output_projection)
        if projected is not None:
            return projected, weights
        context = projecting_correction(context, value, state)
    return output_projection(context.reshape(*context.shape[:2], -1).contiguous()), weights


def padding_mask_from_attention_mask(attention_mask, batch_size: int, seq_len: int) -> torch.Tensor | None:
    """`(B, n)` bool real-token mask from the mask the attention backend was given, or None (no padding).

    Handles the 2-D mask of flash attention, the boolean 4-D mask of SDPA and the additive 4-D mask of eager; a key
    is real when some query may attend to it, which for an encoder's padding mask is exactly its mask value.
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
    if attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return allowed.any(dim=(1, 2)).expand(batch_size, seq_len)
