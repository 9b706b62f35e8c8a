r"""Centered self-attention.

Ali, Galanti & Wolf, "Centered Self-Attention Layers", arXiv 2306.01610 (2023). Repeated averaging by row-stochastic
attention drives every token towards the same vector (the consensus direction 1). Subtracting the uniform attention
over the real keys makes each row of the operator sum to 0, so that direction is removed in every layer:

.. math::
    \tilde A = A - \gamma C,\qquad C_{ij} = \frac{m_j}{n_r},\qquad
    \tilde A V = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_h}} + M\Big) V - \gamma\,\mathbf 1\,\bar v^\top,\qquad
    \bar v = \frac{1}{n_r}\sum_j m_j v_j

per head, where :math:`m` is the padding mask and :math:`n_r` the number of real tokens (ViT: all tokens, [CLS]
included). Under prefix tuning (PEFT) the attention also runs over virtual keys that precede the tokens; they count
as real keys here: :math:`\bar v` is the mean of the values over every key a query may attend to, so that :math:`C`
is the uniform attention over the same keys as :math:`A`, i.e. the paper's layer on the extended key set (a virtual
key is a key like any other to :math:`A`). Only :math:`AV` is needed, so the correction runs on top of whatever
backend computed it (eager, SDPA, flash) and costs O(n·d) per layer; the attention matrix is never materialised.

Arguments ↔ symbols: `config.centered_scale` = γ (1.0 = the paper's centering; 0 = stock attention); with
`config.correction_strength="learned"`, γ_h = γ·g_h per head h, the gates g_h starting at 0.
The correction is applied after attention dropout. Without attention dropout (inference, or
`attention_probs_dropout_prob=0`) it is computed as :math:`A(V - \gamma\mathbf 1\bar v^\top)`, equal because each
row of A sums to 1, so that the fused kernel's output is already the corrected context and backward keeps no extra
tensor. `output_attentions` returns the backend's softmax weights A, not Ã (which has negative entries).
"""

from __future__ import annotations

import torch

from .correction_base import ATTENTION_SITE, Correction, CorrectionState, attended_key_mean

CITATION = """@article{ali2023centered,
  title   = {Centered Self-Attention Layers},
  author  = {Ali, Ameen and Galanti, Tomer and Wolf, Lior},
  journal = {arXiv preprint arXiv:2306.01610},
  year    = {2023}
}"""


class CenteredAttention(Correction):
    name = "centered"
    citation = CITATION
    strength_field = "centered_scale"
    hyperparameters = ("centered_scale",)
    site = ATTENTION_SITE
    saved_activations = 0

    def value_shift(self, value: torch.Tensor, state: CorrectionState) -> torch.Tensor | None:
        """γ_h·v̄ per head, `(B, H, 1, d_h)`, v̄ over the keys a query may attend to (virtual keys included); None
        when those keys differ between queries (causal or local attention), as v̄ then does."""
        if state.per_query:
            return None
        return self.head_strength() * attended_key_mean(value, state, 1)

    def forward(self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        value_mean = attended_key_mean(value, state, context.shape[1])
        return context - (self.head_strength() * value_mean).transpose(1, 2)
