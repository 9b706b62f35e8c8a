r"""Hierarchical fusion of all layers' outputs before the task head.

Shi, Gao, Xu, Liang, Li, Kong, Lee & Kwok, "Revisiting Over-smoothing in BERT from the Perspective of Graph", ICLR 2022,
arXiv 2202.08625. LayerNorm drives BERT's token representations towards a rank-one subspace layer after layer;
reusing the lower layers at the output counters it. With :math:`H^{(1)},\dots,H^{(L)}` the layer outputs (ViT: each
passed through the final LayerNorm first, else the deep un-normalised layers would dominate), the fused
:math:`\hat H` replaces `last_hidden_state` for the pooler/head; `hidden_states` still returns the raw layers.

- `concat`: :math:`\hat H = [H^{(1)}\Vert\cdots\Vert H^{(L)}]\,W_c + b_c` (:math:`Ld^2 + d` parameters).
  Initialised to select the last layer (identity block in the last slot), so a pretrained model is unchanged.
- `max`: :math:`\hat H_{ic} = \max_l H^{(l)}_{ic}`; no parameters, and it cannot reproduce the last layer.
- `gate` (the paper's proposal, token-wise): :math:`\alpha_i^{(l)} = \mathrm{softmax}_l(w^\top h_i^{(l)} + b_l)`,
  :math:`\hat h_i = \sum_l \alpha_i^{(l)} h_i^{(l)}` (:math:`d + L` parameters: the paper's single shared bias
  cancels in the softmax, so the bias is per layer). A softmax cannot put all weight on one layer, so it is
  initialised with :math:`w = 0` and :math:`b` giving the last layer :math:`\alpha = 0.99`: the output starts within
  1% of the pretrained one, and Adam-type optimisers move the saturated logits at their usual rate.

With `config.correction_strength="learned"`, a fusion that does not start as the last layer (`max`, `gate`) is mixed
in through one learnable gate starting at 0, :math:`H^{(L)} + g\,(\hat H - H^{(L)})` with
:math:`g = \texttt{strength\_gate\_scale}\cdot\theta`, so the converted model starts as the pretrained one
exactly; `concat` already does and gets no gate (a gate on a zero difference would never receive a gradient).

Under `torch.jit.trace` the fusions record their out-of-place (autograd) steps, since the trace is checked by
recording it again without autograd, and plain operations instead of their autograd Functions, which a saved trace
could not hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from transformers import initialization as init

from .correction_base import LEARNED_STRENGTH

NO_FUSION = "none"

CITATION = """@inproceedings{shi2022revisiting,
  title     = {Revisiting Over-smoothing in BERT from the Perspective of Graph},
  author    = {Shi, Han and Gao, Jiahui and Xu, Hang and Liang, Xiaodan and Li, Zhenguo and Kong, Lingpeng and
               Lee, Stephen M. S. and Kwok, James T.},
  booktitle = {International Conference on Learning Representations},
  year      = {2022}
}"""


def needs_graph(*tensors: torch.Tensor) -> bool:
    """Whether autograd records a computation on these tensors, or `torch.jit.trace` records one (then no in-place
    running state may be used)."""
    return torch.jit.is_tracing() or (torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors))


class LayerFusion(nn.Module):
    """Base class: maps the L layer outputs `(B, n, d)` to one `(B, n, d)`.

    `forward(layer_outputs)` takes any iterable, and the encoders pass a generator that runs each layer only when the
    fusion asks for its output: `partial = self.accumulate(partial, index, hidden)` folds it in (from `partial =
    None`), and `self.finish(partial)` gives the result. Without autograd a fusion therefore keeps a running summary
    instead of all L outputs, so inference holds about one layer's activations more than the unfused model. With
    autograd, what each layer's step records is recorded right after that layer, so backward hands the layer its
    share of the gradient when it reaches the layer, not all L layer-sized gradients at once at its start (the peak of
    training memory); and no stacked L-fold copy is made. Going through `forward` keeps the fusion an ordinary module
    for hooks and PEFT's `modules_to_save`.
    """

    name: ClassVar[str]
    citation: ClassVar[str] = CITATION
    saved_activations: ClassVar[int] = 1
    """How many more `(B, n, d)` tensors backward keeps than the unfused model, in all (the tests count them): the last
    layer's output, which the unfused model returns without keeping it. A learned gate costs one more (counted by the
    tests too): the difference it multiplies, or, with `keeps_last_and_fused`, its own output, which replaces the
    fused output as the tensor the head keeps while the normalisation still keeps the fused one."""
    keeps_last_and_fused: ClassVar[bool] = False
    """Whether backward keeps the last layer's output and the fused output anyway (a learned gate then keeps those)."""
    starts_as_last_layer: ClassVar[bool] = False
    """Whether the initialised fusion outputs the last layer exactly (then a learned strength needs no gate)."""

    def __init__(self, num_layers: int, hidden_size: int, learned_strength_scale: float | None = None):
        """`learned_strength_scale`: with a learned strength, the factor c of the gate g = c·θ; None for no gate."""
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        if learned_strength_scale is not None and not self.starts_as_last_layer:
            self.strength_gate = nn.Parameter(torch.zeros(1))
            self.gate_scale = float(learned_strength_scale)
        else:
            self.register_parameter("strength_gate", None)

    def reset_parameters(self) -> None:
        """Initialises the parameters with `transformers.initialization` (which skips loaded tensors); subclasses with
        parameters of their own extend it."""
        if self.strength_gate is not None:
            init.zeros_(self.strength_gate)

    def strength(self) -> float | torch.Tensor:
        """The weight of the fused output against the last layer's: 1, or the learned gate `(1,)`."""
        return 1.0 if self.strength_gate is None else self.gate_scale * self.strength_gate

    def accumulate(self, partial: Any, layer_index: int, hidden: torch.Tensor) -> Any:
        """Folds layer `layer_index`'s output into `partial` (None before the first layer) and returns the result."""
        raise NotImplementedError

    def finish(self, partial: Any) -> torch.Tensor:
        """The fused `(B, n, d)` from the partial result after the last layer."""
        raise NotImplementedError

    def forward(self, layer_outputs: Iterable[torch.Tensor]) -> torch.Tensor:
        partial, count, hidden = None, 0, None
        for layer_index, hidden in enumerate(layer_outputs):
            if layer_index >= self.num_layers:
                raise ValueError(f"{type(self).__name__} fuses {self.num_layers} layers, got more.")
            partial, count = self.accumulate(partial, layer_index, hidden), layer_index + 1
        if count != self.num_layers:
            raise ValueError(f"{type(self).__name__} fuses {self.num_layers} layers, got {count}.")
        fused = self.finish(partial)
        if self.strength_gate is None:
            return fused
        if torch.jit.is_tracing():  # see the module docstring
            return hidden + self.strength().to(hidden.dtype) * (fused - hidden)
        return _GatedMix.apply(hidden, fused, self.strength(), self.keeps_last_and_fused)


class _GatedMix(torch.autograd.Function):
    """`last + w·(fused − last)` for a gate `w` of shape (1,): ∂/∂last = g·(1 − w), ∂/∂fused = g·w and
    ∂/∂w = Σ g ⊙ (fused − last). Backward keeps `last` and `fused` when the fusion keeps them anyway
    (`LayerFusion.keeps_last_and_fused`), else their difference: one `(B, n, d)` tensor at most."""

    @staticmethod
    def forward(ctx, last: torch.Tensor, fused: torch.Tensor, weight: torch.Tensor, keep_inputs: bool):
        difference = fused - last
        ctx.keep_inputs = keep_inputs
        ctx.save_for_backward(*((last, fused) if keep_inputs else (difference,)), weight)
        return last + weight.to(last.dtype) * difference

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        *kept, weight = ctx.saved_tensors
        difference = kept[1] - kept[0] if ctx.keep_inputs else kept[0]
        grad_fused = grad * weight.to(grad.dtype)
        dtype = torch.promote_types(grad.dtype, torch.float32)  # a sum over every element: at least float32
        grad_weight = (grad.to(dtype) * difference.to(dtype)).sum().reshape(1).to(weight.dtype)
        return grad - grad_fused, grad_fused, grad_weight, None


class ConcatFusion(LayerFusion):
    r"""Computed as :math:`\sum_l H^{(l)} W_l + b_c` with :math:`W_l` the l-th column block of :math:`W_c`: the same
    arithmetic as the concatenation, without materialising the `(B, n, L·d)` copy."""

    name = "concat"
    starts_as_last_layer = True

    def __init__(self, num_layers: int, hidden_size: int, learned_strength_scale: float | None = None):
        super().__init__(num_layers, hidden_size, learned_strength_scale)
        self.weight = nn.Parameter(torch.empty(hidden_size, num_layers * hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        select_last = torch.zeros(self.hidden_size, self.num_layers * self.hidden_size)
        select_last[:, -self.hidden_size :] = torch.eye(self.hidden_size)
        init.copy_(self.weight, select_last)
        init.zeros_(self.bias)

    def accumulate(self, partial, layer_index: int, hidden: torch.Tensor):
        if partial is None:
            # One split for all layers: its backward assembles the weight's gradient once, where slicing per layer
            # would allocate a zero-filled (d, L·d) gradient for every layer.
            partial = (self.weight.split(self.hidden_size, dim=1), None)
        blocks, running_sum = partial
        projected = nn.functional.linear(hidden, blocks[layer_index])
        return blocks, projected if running_sum is None else running_sum + projected

    def finish(self, partial) -> torch.Tensor:
        return partial[1] + self.bias


class MaxFusion(LayerFusion):
    """A running element-wise maximum. With autograd, each layer's step `torch.where(h > m, h, m)` saves only its
    boolean mask (a quarter of a float32 tensor per layer) and, being recorded right after its layer, hands each
    layer its gradient when backward reaches that layer rather than all L at once. Ties keep the first layer (like
    `torch.max(dim)`); NaN propagates (like `torch.maximum`)."""

    name = "max"
    saved_activations = 0  # one boolean mask per layer, a quarter of a float32 tensor each

    def accumulate(self, partial, layer_index: int, hidden: torch.Tensor):
        if partial is None:
            return hidden if needs_graph(hidden) else hidden.clone()  # `hidden` may still be returned as is
        if needs_graph(partial, hidden):
            return torch.where((hidden > partial) | hidden.isnan(), hidden, partial)
        return torch.maximum(partial, hidden, out=partial)

    def finish(self, partial) -> torch.Tensor:
        return partial


class _OnlineSoftmax(NamedTuple):
    """The gate's running state: Σ_l e^{z_l − m} h_l and Σ_l e^{z_l − m} in float32, for the running maximum logit m
    (without gradient: the fused output does not depend on m)."""

    max_logits: torch.Tensor
    normaliser: torch.Tensor
    weighted_sum: torch.Tensor
    dtype: torch.dtype


class _Normalise(torch.autograd.Function):
    """`(weighted_sum / normaliser).to(dtype)` that saves its output rather than the float32 weighted sum:
    ∂/∂S = g / Z and ∂/∂Z = −⟨g, y⟩ / Z."""

    @staticmethod
    def forward(ctx, weighted_sum: torch.Tensor, normaliser: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        fused = (weighted_sum / normaliser[..., None]).to(dtype)
        ctx.save_for_backward(fused, normaliser)
        return fused

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        fused, normaliser = ctx.saved_tensors
        grad_sum = grad.float() / normaliser[..., None]
        grad_normaliser = -(grad_sum * fused).sum(dim=-1)
        return grad_sum, grad_normaliser, None


class GateFusion(LayerFusion):
    """The softmax over layers is accumulated online, layer by layer (rescaled weighted sum and normaliser, in float32),
    so no stacked copy is made and nothing is kept without autograd. With autograd, each layer's step saves only that
    layer's output and its (B, n) weight, and gives the layer its gradient when backward reaches it."""

    name = "gate"
    initial_last_layer_weight = 0.99
    keeps_last_and_fused = True  # the last layer's weighted step and `_Normalise` keep them

    def __init__(self, num_layers: int, hidden_size: int, learned_strength_scale: float | None = None):
        super().__init__(num_layers, hidden_size, learned_strength_scale)
        self.weight = nn.Parameter(torch.zeros(hidden_size))
        self.layer_bias = nn.Parameter(torch.zeros(num_layers))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init.zeros_(self.weight)
        layer_bias = torch.zeros(self.num_layers)
        if self.num_layers > 1:
            weight = self.initial_last_layer_weight
            layer_bias[-1] = math.log(weight * (self.num_layers - 1) / (1 - weight))
        init.copy_(self.layer_bias, layer_bias)

    def gate_logits(self, layer_index: int, hidden: torch.Tensor) -> torch.Tensor:
        r""":math:`w^\top h_i + b_l`, `(B, n)` in float32."""
        return (hidden @ self.weight + self.layer_bias[layer_index]).float()

    def layer_weights(self, stacked_layers: torch.Tensor) -> torch.Tensor:
        """α: `(L, B, n, 1)` softmax weights over the layers, per token, for stacked outputs `(L, B, n, d)`."""
        logits = torch.stack([self.gate_logits(index, layer) for index, layer in enumerate(stacked_layers)])
        return torch.softmax(logits, dim=0).to(stacked_layers.dtype)[..., None]

    def accumulate(self, partial, layer_index: int, hidden: torch.Tensor):
        logits = self.gate_logits(layer_index, hidden)
        if partial is None:
            max_logits = logits.detach()
            scale = torch.exp(logits - max_logits)  # ones that carry the logits' gradient
            return _OnlineSoftmax(max_logits, scale, hidden * scale[..., None], hidden.dtype)
        new_max = torch.maximum(partial.max_logits, logits.detach())
        old_scale, new_scale = torch.exp(partial.max_logits - new_max), torch.exp(logits - new_max)
        if needs_graph(partial.weighted_sum, hidden, logits):
            weighted_sum = partial.weighted_sum * old_scale[..., None] + hidden * new_scale[..., None]
        else:
            weighted_sum = partial.weighted_sum.mul_(old_scale[..., None]).addcmul_(hidden, new_scale[..., None])
        normaliser = partial.normaliser * old_scale + new_scale
        return _OnlineSoftmax(new_max, normaliser, weighted_sum, partial.dtype)

    def finish(self, partial: _OnlineSoftmax) -> torch.Tensor:
        if torch.jit.is_tracing():  # see the module docstring
            return (partial.weighted_sum / partial.normaliser[..., None]).to(partial.dtype)
        if needs_graph(partial.weighted_sum, partial.normaliser):
            return _Normalise.apply(partial.weighted_sum, partial.normaliser, partial.dtype)
        return partial.weighted_sum.div_(partial.normaliser[..., None]).to(partial.dtype)


FUSIONS: dict[str, type[LayerFusion]] = {cls.name: cls for cls in (ConcatFusion, MaxFusion, GateFusion)}


def available_fusions() -> list[str]:
    """Names accepted by `config.fusion`: `"none"` and every registered fusion."""
    return [NO_FUSION, *FUSIONS]


def build_fusion(config) -> LayerFusion | None:
    if config.fusion == NO_FUSION:
        return None
    learned_strength_scale = config.strength_gate_scale if config.correction_strength == LEARNED_STRENGTH else None
    return FUSIONS[config.fusion](config.num_hidden_layers, config.hidden_size, learned_strength_scale)
