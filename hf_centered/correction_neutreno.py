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
is 0 there). The term is token-wise, so padding needs no special care, and any attention backend works.

Arguments ↔ symbols: `config.neutreno_lambda` = λ (0.6 in the DeiT and Segmenter reference code, 0.4 for the
WikiText-103 language model; 0 = stock attention). λ is fixed, shared by all layers and heads.
"""

from __future__ import annotations

import torch

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
    saved_activations = 1  # the corrected context, which the output projection keeps next to the kernel's output
    needs_first_values = True

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.lamda = float(config.neutreno_lambda)

    @classmethod
    def acts_in_layer(cls, config, layer_idx: int) -> bool:
        return layer_idx >= 1

    def forward(self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        if state.first_values is None:
            raise RuntimeError("NeuTRENO needs the first layer's values; the encoder did not provide them.")
        return context + self.lamda * (state.first_values - value).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"lambda={self.lamda}"
