"""What every correction shares: the per-forward state, the base class with its three insertion sites, masks."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init

ATTENTION_SITE = "attention"
"""Per head, on the attention backend's output `(B, n, H, d_h)` before the heads are merged (BERT B1, ViT V2). The
site also sees the values of every key, `(B, H, k, d_h)`: k = n, except under prefix tuning (PEFT), whose k − n
virtual keys come first, followed by the n tokens."""
BEFORE_NORM_SITE = "before_norm"
"""On the tokens `(B, n, d)` that enter a LayerNorm (BERT B2: the post-attention LN; ViT V1, V4, V5: every norm)."""
LAYER_OUTPUT_SITE = "layer_output"
"""On the output `(B, n, d)` of a whole encoder layer, which is also what `hidden_states` records."""

FIXED_STRENGTH = "fixed"
LEARNED_STRENGTH = "learned"
STRENGTH_MODES = (FIXED_STRENGTH, LEARNED_STRENGTH)
"""Values of `config.correction_strength`."""


@dataclass(frozen=True)
class CorrectionState:
    """What a correction may read besides its input; built once per forward and never written to.

    Being immutable, it is safe under gradient checkpointing: a recomputed layer sees exactly what it saw first.

    Args:
        padding_mask: `(B, n)` bool, True at real tokens; `None` when no token is padding. Prefix tuning's virtual
            keys are not tokens (they have no hidden state), so the corrections of the token sites see none of them.
        first_values: `(B, H, n, d_h)` values of layer 0's attention (NeuTRENO's V⁰); `None` when unused.
        key_padding_mask: `(B, k)` bool, True at the keys a query may attend to: prefix tuning's virtual keys, then
            the tokens; `None` when every key may be attended to, or when the keys are the tokens (then
            `padding_mask` says which).
        query_key_mask: the attention mask, `(B or 1, 1 or H, q, k)` (boolean, True = may attend, or additive),
            when the keys a query may attend to differ between queries and form no band (`key_bounds`); `None`
            otherwise.
        key_bounds: `(first, last)`, each `(B, q)`: query i may attend to the keys `first[:, i]..last[:, i]` of
            `key_mask` (a causal mask, a sliding or local window, a KV cache's filled slots), when the keys differ
            between queries; `None` when they do not, or when `causal` or `query_key_mask` says which.
        causal: no mask, and query i may attend to keys 0..i (SDPA's causal mode, which aligns the queries with
            the first keys).
        tokens_start: where the tokens' own keys start among the k keys: `None` for the last n (prefix tuning's
            virtual keys, or a dynamic KV cache, come first); a static KV cache holds them at the cache position.
    """

    padding_mask: torch.Tensor | None = None
    first_values: torch.Tensor | None = None
    key_padding_mask: torch.Tensor | None = None
    query_key_mask: torch.Tensor | None = None
    key_bounds: tuple[torch.Tensor, torch.Tensor] | None = None
    causal: bool = False
    tokens_start: int | None = None

    @property
    def key_mask(self) -> torch.Tensor | None:
        """`(B, k)` bool mask of the keys a query may attend to, or `None` when it may attend to all of them."""
        return self.padding_mask if self.key_padding_mask is None else self.key_padding_mask

    @property
    def per_query(self) -> bool:
        """Whether the keys a query may attend to differ between queries."""
        return self.causal or self.query_key_mask is not None or self.key_bounds is not None

    def token_values(self, value: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The tokens' own values `(B, H, n, d_h)` among every key's `(B, H, k, d_h)` (see `tokens_start`)."""
        if self.tokens_start is None:
            return value[:, :, value.shape[2] - num_tokens :]
        return value[:, :, self.tokens_start : self.tokens_start + num_tokens]


def allowed_keys(attention_mask: torch.Tensor) -> torch.Tensor:
    """The boolean form (True = may attend) of a boolean or additive attention mask."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


class _MaskedKeyMean(torch.autograd.Function):
    """`(M / Σ_j M) · V`: each query's mean value over the keys its row of the mask allows, `(B, H, q, d_h)`.

    Backward keeps the mask the model built anyway and V, never a new `(q, k)` tensor: the weights are rebuilt.
    """

    @staticmethod
    def forward(ctx, attention_mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(attention_mask)
        return _mean_weights(attention_mask, value.dtype) @ value

    @staticmethod
    def backward(ctx, grad_output):
        (attention_mask,) = ctx.saved_tensors
        return None, _mean_weights(attention_mask, grad_output.dtype).transpose(-1, -2) @ grad_output


def _mean_weights(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    weights = allowed_keys(attention_mask).to(dtype)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1)


def _band_mean(
    value: torch.Tensor, key_mask: torch.Tensor | None, first: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """Each query's mean value over the keys `first..last` of `key_mask`, from prefix sums: O(k·d_h), and nothing
    (q × k) is built or kept for backward."""
    values = value.float()
    weights = None if key_mask is None else key_mask[:, None, :, None].to(values.dtype)
    if weights is not None:
        values = values * weights
    zero = values.new_zeros((*values.shape[:2], 1, values.shape[-1]))
    sums = torch.cat([zero, values.cumsum(dim=2)], dim=2)  # sums[j] = Σ_{t<j}
    index = torch.stack([first, last + 1], dim=1)  # (B, 2, q): both ends gathered at once
    batch, heads, dim = values.shape[0], values.shape[1], values.shape[-1]
    ends = sums.gather(2, index.reshape(batch, 1, -1, 1).expand(batch, heads, -1, dim))
    total = ends[:, :, first.shape[-1] :] - ends[:, :, : first.shape[-1]]
    if weights is None:
        counts = (last - first + 1).to(values.dtype)[:, None, :, None]
    else:
        counted = torch.cat([weights.new_zeros(weights.shape[0], 1, 1, 1), weights.cumsum(dim=2)], dim=2)
        count_ends = counted.gather(2, index.reshape(index.shape[0], 1, -1, 1))
        counts = count_ends[:, :, first.shape[-1] :] - count_ends[:, :, : first.shape[-1]]
    return (total / counts.clamp_min(1)).to(value.dtype)


def attended_key_mean(value: torch.Tensor, state: CorrectionState, num_queries: int) -> torch.Tensor:
    """Each query's mean value over the keys it may attend to: `(B, H, q, d_h)`, or `(B, H, 1, d_h)` when the same
    for every query (`state.per_query` is False). `value` holds every key's values, `(B, H, k, d_h)`."""
    if state.query_key_mask is not None:
        return _MaskedKeyMean.apply(state.query_key_mask, value)
    if state.key_bounds is not None:
        return _band_mean(value, state.key_mask, *state.key_bounds)
    if state.causal:
        prefix = value[:, :, :num_queries].float().cumsum(dim=2)
        counts = torch.arange(1, num_queries + 1, device=value.device, dtype=prefix.dtype)[:, None]
        return (prefix / counts).to(value.dtype)
    if state.key_mask is None:
        return value.mean(dim=2, keepdim=True)
    weights = state.key_mask.to(value.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1)
    return weights[:, None, None, :] @ value


def deepcopy_attributes(module: nn.Module, memo: dict) -> nn.Module:
    """What `copy.deepcopy` does by default for a module, for `__deepcopy__` methods that prepare the memo first."""
    copied = type(module).__new__(type(module))
    memo[id(module)] = copied
    copied.__dict__.update({name: copy.deepcopy(value, memo) for name, value in module.__dict__.items()})
    return copied


class Correction(nn.Module):
    """Base class of the corrections. A subclass acts at one `site` and is registered in `corrections.CORRECTIONS`.

    Its `forward` takes the site's tensor and the `CorrectionState` and returns a tensor of the same shape:
    - `ATTENTION_SITE`: `forward(context (B, n, H, d_h), value (B, H, k, d_h), state)`, `value` holding the values
      of every key (the last n are the tokens', see `ATTENTION_SITE`);
    - `BEFORE_NORM_SITE` and `LAYER_OUTPUT_SITE`: `forward(hidden (B, n, d), state)`.

    Its strength is read through `strength()`: the configured value (`strength_field`) as a float, or with
    `config.correction_strength="learned"` that value times learnable gates `strength_gate_scale · θ`, θ starting at
    0, one per head at the attention site (shape `(H,)`) and one per instance elsewhere (shape `(1,)`). The
    configuration is read at every call, so a strength changed on `model.config` takes effect.
    """

    name: ClassVar[str]
    citation: ClassVar[str]
    strength_field: ClassVar[str]
    """The config field whose value 0 turns the correction into the identity."""
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    """The config fields this correction reads (for model cards and docs)."""
    site: ClassVar[str]
    needs_first_values: ClassVar[bool] = False
    saved_activations: ClassVar[int]
    """Its memory cost in training: how many more `(B, n, d)` tensors backward keeps per corrected layer than the stock
    layer does, without attention dropout (the tests count them)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        if config.correction_strength == LEARNED_STRENGTH:
            num_gates = config.num_attention_heads if self.site == ATTENTION_SITE else 1
            self.strength_gate = nn.Parameter(torch.zeros(num_gates))
        else:
            self.register_parameter("strength_gate", None)

    @classmethod
    def acts_in_layer(cls, config, layer_idx: int) -> bool:
        """Whether an instance is built for this layer (beyond `config.correction_layers`)."""
        return True

    def __deepcopy__(self, memo: dict) -> Correction:
        """A copy that reads the same configuration, unless the copy is part of copying the whole model (whose
        `__deepcopy__` copies the configuration first, so the memo maps it to the new one). PEFT's `modules_to_save`
        copies single modules: a field changed on `model.config` must still reach them."""
        memo.setdefault(id(self.config), self.config)
        return deepcopy_attributes(self, memo)

    def reset_parameters(self) -> None:
        """Initialises new parameters with `transformers.initialization` (which skips loaded tensors); subclasses with
        parameters of their own extend it."""
        if self.strength_gate is not None:
            init.zeros_(self.strength_gate)

    def strength(self) -> float | torch.Tensor:
        """The effective strength: a float (`"fixed"`), or the configured value times the gates (`"learned"`)."""
        configured = float(getattr(self.config, self.strength_field))
        if self.strength_gate is None:
            return configured
        return (configured * float(self.config.strength_gate_scale)) * self.strength_gate

    def head_strength(self) -> float | torch.Tensor:
        """`ATTENTION_SITE`: the strength shaped `(H, 1, 1)` to broadcast over `(B, H, n, d_h)` (a float if fixed)."""
        strength = self.strength()
        return strength[:, None, None] if isinstance(strength, torch.Tensor) else strength

    def extra_repr(self) -> str:
        fields = [f"{name}={getattr(self.config, name)}" for name in self.hyperparameters]
        if self.strength_gate is not None:
            fields.append(f"learned gates={self.strength_gate.numel()}")
        return ", ".join(fields)

    def value_shift(self, value: torch.Tensor, state: CorrectionState) -> torch.Tensor | None:
        """`ATTENTION_SITE` only: a `T` `(B, H, 1, d_h)`, the same for every key, such that this correction maps the
        context to `context − T`; None (the default) when it has no such form.

        Each softmax row sums to 1 over the keys, so `A·V − T = A·(V − T)`: without attention dropout the encoder
        then hands the backend `V − T` and skips `forward`. The fused kernel's saved output is then the corrected
        context itself, instead of a second `(B, n, d)` tensor kept for backward next to it.
        """
        return None

    def project(
        self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState, projection: nn.Linear
    ) -> torch.Tensor | None:
        """`ATTENTION_SITE` only, for the site's last correction: `projection` applied to this correction's result
        with the heads merged, `(B, n, d)`, computed so that backward keeps no more than the kernel already keeps;
        None (the default) when it has no such form.

        The output projection keeps its input for its weight gradient. A correction whose result is a cheap function
        of tensors that backward keeps anyway (the kernel's output, V) can recompute it there instead. The encoder
        only asks when `projection` is a plain `nn.Linear` (see `modeling_common.is_plain_linear`).
        """
        return None
