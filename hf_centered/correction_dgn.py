r"""Differentiable Group Normalization (DGN) on each layer's output.

Zhou, Huang, Li, Zha, Chen & Hu, "Towards Deeper Graph Neural Networks with Differentiable Group
Normalization", NeurIPS 2020, arXiv 2006.06972; reference code `Kaixiong-Zhou/DGN` and PyG's `DiffGroupNorm`.
Tokens are softly assigned to G groups and each group is batch-normalised on its own, which keeps groups apart:

.. math::
    S = \mathrm{softmax}_\text{row}(H U + b) \in \mathbb R^{N\times G},\qquad
    H' = H + \lambda \sum_{g=1}^{G} \mathrm{BN}_g\big(S_{:,g} \odot H\big)

where :math:`\mathrm{BN}_g` normalises every feature over the N real tokens of the batch (padding excluded) with
its own affine :math:`\gamma_g, \beta_g`, and uses running statistics in eval mode. Since
:math:`\mathrm{BN}_g(S_{:,g}\odot H)_{ic} = S_{ig}H_{ic}\,\Gamma_{gc} + \beta_{gc} - \mu_{gc}\Gamma_{gc}`,
the sum over groups is :math:`H \odot (S\,\Gamma) + \mathbf 1\,c^\top` with :math:`\Gamma_{gc}=\gamma_{gc}/\sigma_{gc}`;
the statistics are :math:`\mu = S^\top H / N` and :math:`E[x^2] = (S\odot S)^\top (H\odot H)/N`. So the N×G×d tensor
of the reference code is never built: the cost is O(N·d·G) in matmuls and the memory O(N·d).

Placement (a transformer adaptation; the paper is about GNNs): after every corrected layer's output, i.e. after the
post-FFN LayerNorm in BERT and after the MLP residual in ViT, so `hidden_states` records the corrected output.
Batch statistics couple the sequences of a batch in training. Under gradient checkpointing the running statistics
are updated by the first forward only, not again by the recomputation during backward. A frozen DGN (none of its
parameters requires a gradient, e.g. under a PEFT adapter that does not train it) still normalises with the batch
statistics in training, but leaves its running statistics alone: they are the state of the frozen model, which an
adapter neither trains nor saves.

Arguments ↔ symbols: `config.dgn_groups` = G, `config.dgn_lambda` = λ (0 = identity; reference 0.005, PyG 0.01;
with `config.correction_strength="learned"`, λ·g with one gate g per layer, starting at 0, folded into
:math:`\Gamma` and :math:`c` so that backward keeps no extra `(B, n, d)` tensor for it),
`config.dgn_momentum` = BN momentum of the running statistics (PyG 0.1). :math:`U, b` = `assign`;
:math:`\gamma, \beta` = `weight`, `bias` of shape (G, d); ε = 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from .correction_base import LAYER_OUTPUT_SITE, Correction, CorrectionState


def _inside_backward() -> bool:
    """True while autograd runs a backward pass, e.g. when gradient checkpointing recomputes a layer."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


CITATION = """@inproceedings{zhou2020dgn,
  title     = {Towards Deeper Graph Neural Networks with Differentiable Group Normalization},
  author    = {Zhou, Kaixiong and Huang, Xiao and Li, Yuening and Zha, Daochen and Chen, Rui and Hu, Xia},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {33},
  year      = {2020}
}"""


class DifferentiableGroupNorm(Correction):
    name = "dgn"
    citation = CITATION
    strength_field = "dgn_lambda"
    hyperparameters = ("dgn_groups", "dgn_lambda", "dgn_momentum")
    site = LAYER_OUTPUT_SITE
    saved_activations = 3
    eps = 1e-5

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        groups, hidden_size = config.dgn_groups, config.hidden_size
        self.assign = nn.Linear(hidden_size, groups)
        self.weight = nn.Parameter(torch.ones(groups, hidden_size))
        self.bias = nn.Parameter(torch.zeros(groups, hidden_size))
        self.register_buffer("running_mean", torch.zeros(groups, hidden_size))
        self.register_buffer("running_var", torch.ones(groups, hidden_size))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init.ones_(self.weight)
        init.zeros_(self.bias)
        init.zeros_(self.running_mean)
        init.ones_(self.running_var)

    def is_trained(self) -> bool:
        """Whether some parameter requires a gradient (only then do the running statistics follow the batches)."""
        return any(parameter.requires_grad for parameter in self.parameters())

    def forward(self, hidden: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # batch statistics in at least float32
        tokens = hidden.to(dtype)
        assignment = torch.softmax(self.assign(hidden).to(dtype), dim=-1)  # (B, n, G)
        if self.training:
            real = assignment if state.padding_mask is None else assignment * state.padding_mask[..., None]
            count = (
                torch.tensor(float(hidden.shape[0] * hidden.shape[1]), device=hidden.device, dtype=dtype)
                if state.padding_mask is None
                else state.padding_mask.sum().to(dtype)
            ).clamp_min(1)
            mean = torch.einsum("bng,bnd->gd", real, tokens) / count
            mean_square = torch.einsum("bng,bnd->gd", real * assignment, tokens * tokens) / count
            var = (mean_square - mean * mean).clamp_min(0)
            if self.is_trained() and not _inside_backward():
                with torch.no_grad():
                    unbiased = var * (count / (count - 1).clamp_min(1))
                    momentum = float(self.config.dgn_momentum)
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        else:
            mean, var = self.running_mean.to(dtype), self.running_var.to(dtype)
        # λΓ and λc: the strength multiplies (G, d) tensors, never the (B, n, d) sum.
        strength = self.strength()
        if isinstance(strength, torch.Tensor):
            strength = strength.to(dtype)
        group_scale = strength * self.weight.to(dtype) * torch.rsqrt(var + self.eps)  # (G, d)
        group_shift = strength * self.bias.to(dtype) - mean * group_scale
        return hidden + (tokens * (assignment @ group_scale) + group_shift.sum(dim=0)).to(hidden.dtype)
