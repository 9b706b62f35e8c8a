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
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init

NO_FUSION = "none"

CITATION = """@inproceedings{shi2022revisiting,
  title     = {Revisiting Over-smoothing in BERT from the Perspective of Graph},
  author    = {Shi, Han and Gao, Jiahui and Xu, Hang and Liang, Xiaodan and Li, Zhenguo and Kong, Lingpeng and
               Lee, Stephen M. S. and Kwok, James T.},
  booktitle = {International Conference on Learning Representations},
  year      = {2022}
}"""


class LayerFusion(nn.Module):
    """Base class: `forward(layer_outputs)` maps L tensors `(B, n, d)` to one `(B, n, d)`."""

    name: ClassVar[str]
    citation: ClassVar[str] = CITATION

    def __init__(self, num_layers: int, hidden_size: int):
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size

    def reset_parameters(self) -> None:
        """Initialises the parameters with `transformers.initialization` (which skips loaded tensors)."""


class ConcatFusion(LayerFusion):
    name = "concat"

    def __init__(self, num_layers: int, hidden_size: int):
        super().__init__(num_layers, hidden_size)
        self.weight = nn.Parameter(torch.empty(hidden_size, num_layers * hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def reset_parameters(self) -> None:
        select_last = torch.zeros(self.hidden_size, self.num_layers * self.hidden_size)
        select_last[:, -self.hidden_size :] = torch.eye(self.hidden_size)
        init.copy_(self.weight, select_last)
        init.zeros_(self.bias)

    def forward(self, layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.linear(torch.cat(layer_outputs, dim=-1), self.weight, self.bias)


class MaxFusion(LayerFusion):
    name = "max"

    def forward(self, layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(layer_outputs).amax(dim=0)


class GateFusion(LayerFusion):
    name = "gate"
    initial_last_layer_weight = 0.99

    def __init__(self, num_layers: int, hidden_size: int):
        super().__init__(num_layers, hidden_size)
        self.weight = nn.Parameter(torch.zeros(hidden_size))
        self.layer_bias = nn.Parameter(torch.zeros(num_layers))

    def reset_parameters(self) -> None:
        init.zeros_(self.weight)
        layer_bias = torch.zeros(self.num_layers)
        if self.num_layers > 1:
            weight = self.initial_last_layer_weight
            layer_bias[-1] = math.log(weight * (self.num_layers - 1) / (1 - weight))
        init.copy_(self.layer_bias, layer_bias)

    def layer_weights(self, stacked_layers: torch.Tensor) -> torch.Tensor:
        """α: `(L, B, n, 1)` softmax weights over the layers, per token, for stacked outputs `(L, B, n, d)`."""
        logits = stacked_layers @ self.weight + self.layer_bias[:, None, None]
        return torch.softmax(logits.float(), dim=0).to(stacked_layers.dtype)[..., None]

    def forward(self, layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        stacked_layers = torch.stack(layer_outputs)
        return (self.layer_weights(stacked_layers) * stacked_layers).sum(dim=0)


FUSIONS: dict[str, type[LayerFusion]] = {cls.name: cls for cls in (ConcatFusion, MaxFusion, GateFusion)}


def available_fusions() -> list[str]:
    """Names accepted by `config.fusion`: `"none"` and every registered fusion."""
    return [NO_FUSION, *FUSIONS]


def build_fusion(config) -> LayerFusion | None:
    if config.fusion == NO_FUSION:
        return None
    return FUSIONS[config.fusion](config.num_hidden_layers, config.hidden_size)
