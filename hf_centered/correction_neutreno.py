r"""NeuTRENO: a fidelity term that pulls each layer's values back towards the first layer's.

Nguyen, Nguyen & Baraniuk, "Mitigating Over-smoothing in Transformers via Regularized Nonlocal Functionals",
NeurIPS 2023, arXiv 2312.00751; reference code `tamnguyen9520/NeuTRENO_NeurIPS2024`. Self-attention is one gradient
step on a nonlocal smoothness functional whose minimiser is constant; adding a fidelity term to the initial tokens
gives, for every layer :math:`\ell \ge 1` and head :math:`h`:

.. math::
    O_h^{\ell} = \mathrm{Drop}(A_h^{\ell})\,V_h^{\ell} + \lambda\,(V_h^{0} - V_h^{\ell})

before the heads are merged and projected by :math:`W_O`. :math:`V^0` is the per-head value tensor of layer 0,
computed from layer 0's attention input (BERT: the embedding output; ViT: its first LayerNorm's output), not
detached, so every layer's gradient reaches layer 0's value projection. Layer 0 itself is not corrected (the term
is 0 there). The term is token-wise, so padding needs no special care, and any attention backend works. Under prefix
tuning (PEFT) :math:`V^\ell` are the tokens' own values: the virtual keys' values enter through :math:`A` only,
having no counterpart in :math:`V^0`.

Arguments ↔ symbols: `config.neutreno_lambda` = λ (0.6 in the DeiT and Segmenter reference code, 0.4 for the
WikiText-103 language model; 0 = stock attention). λ is shared by all layers and heads; with
`config.correction_strength="learned"`, λ_h = λ·g_h per layer and head, the gates g_h starting at 0.

The corrected context is computed together with the output projection :math:`W_O` when that is a plain
`nn.Linear`: backward then keeps only :math:`AV`, :math:`V^0` and :math:`V`, which the attention kernel keeps anyway,
and recomputes the sum for :math:`W_O`'s gradient, instead of keeping a second `(B, n, d)` tensor per layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .correction_base import ATTENTION_SITE, Correction, CorrectionState

CITATION = """@inproceedings{nguyen2023neutreno,
  title     = {Mitigating Over-smoothing in Transformers via Regularized Nonlocal Functionals},
  author    = {Nguyen, Tam and Nguyen, Tan M. and Baraniuk, Richard G.},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {36},
  year      = {2023}
}"""


class NeuTRENO(Correction):
    name = "neutreno"
    citation = CITATION
    strength_field = "neutreno_lambda"
    hyperparameters = ("neutreno_lambda",)
    site = ATTENTION_SITE
    # With a wrapped or hooked output projection (PEFT, quantisation), 1: the corrected context that it keeps.
    saved_activations = 0
    needs_first_values = True

    @classmethod
    def acts_in_layer(cls, config, layer_idx: int) -> bool:
        return layer_idx >= 1

    def forward(self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        strength = self.head_strength()
        if isinstance(strength, torch.Tensor):
            strength = strength.squeeze(-1)  # (H, 1) against the (B, n, H, d_h) layout
        token_values = state.token_values(value, context.shape[1]).transpose(1, 2)
        return _with_fidelity(context, _first_values(state).transpose(1, 2), token_values, strength)

    def project(
        self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState, projection: nn.Linear
    ) -> torch.Tensor:
        strength = self.strength()
        if isinstance(strength, torch.Tensor):  # per head → per channel of the merged heads
            strength = strength.repeat_interleave(value.shape[-1])
        return _ProjectedFidelity.apply(
            _merge_heads(context),
            _merge_heads(_first_values(state).transpose(1, 2)),
            _merge_heads(state.token_values(value, context.shape[1]).transpose(1, 2)),
            strength,
            projection.weight,
            projection.bias,
        )


def _first_values(state: CorrectionState) -> torch.Tensor:
    if state.first_values is None:
        raise RuntimeError("NeuTRENO needs the first layer's values (V⁰); layer 0 did not provide them.")
    return state.first_values


def _with_fidelity(
    context: torch.Tensor, first_values: torch.Tensor, value: torch.Tensor, lamda: float | torch.Tensor
) -> torch.Tensor:
    """O + λ(V⁰ − V), in whatever common layout the three come in (a tensor λ broadcasts over the last dims)."""
    return context + lamda * (first_values - value)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """`(B, n, H, d_h)` → `(B, n, H·d_h)`, a view for the layouts the projections and kernels produce."""
    return tensor.reshape(*tensor.shape[:2], -1)


class _ProjectedFidelity(torch.autograd.Function):
    """`F.linear(O + λ(V⁰ − V), W, b)` on merged heads, keeping O, V⁰ and V for backward instead of the sum.

    λ is a float, or a per-channel `(d,)` tensor (learned strengths) that receives the gradient Σ ∂L/∂Ô ⊙ (V⁰ − V).
    Under autocast the projection runs in the autocast dtype, as `nn.Linear` would; backward computes in the
    gradient's dtype and returns each gradient in its input's dtype.
    """

    @staticmethod
    def forward(ctx, context, first_values, value, lamda: float | torch.Tensor, weight, bias):
        learned = isinstance(lamda, torch.Tensor)
        ctx.save_for_backward(context, first_values, value, weight, lamda if learned else None)
        ctx.fixed_lamda = None if learned else lamda
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(_with_fidelity(context, first_values, value, lamda), weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        context, first_values, value, weight, learned_lamda = ctx.saved_tensors
        lamda = ctx.fixed_lamda if learned_lamda is None else learned_lamda
        need_context, need_first_values, need_value, need_lamda, need_weight, need_bias = ctx.needs_input_grad
        dtype = grad_output.dtype
        grad_context = grad_first_values = grad_value = grad_lamda = grad_weight = grad_bias = None
        if need_context or need_first_values or need_value or need_lamda:
            grad_corrected = grad_output @ weight.to(dtype)
            if need_context:
                grad_context = grad_corrected.to(context.dtype)
            if need_first_values or need_value:
                grad_difference = lamda * grad_corrected
                if need_first_values:
                    grad_first_values = grad_difference.to(first_values.dtype)
                if need_value:
                    grad_value = (-grad_difference).to(value.dtype)
            if need_lamda:
                difference = (first_values - value).to(dtype)
                grad_lamda = (grad_corrected * difference).reshape(-1, difference.shape[-1]).sum(dim=0)
                grad_lamda = grad_lamda.to(learned_lamda.dtype)
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
        if need_weight:
            corrected = _with_fidelity(context, first_values, value, lamda)
            grad_weight = (flat_grad.T @ corrected.reshape(-1, corrected.shape[-1]).to(dtype)).to(weight.dtype)
        if need_bias:
            grad_bias = flat_grad.sum(dim=0).to(ctx.bias_dtype)
        return grad_context, grad_first_values, grad_value, grad_lamda, grad_weight, grad_bias
