r"""ContraNorm: one step of a contrastive uniformity loss that pushes tokens apart before a LayerNorm.

Guo, Wang, Du & Wang, "ContraNorm: A Contrastive Learning Perspective on Oversmoothing and Beyond", ICLR 2023,
arXiv 2303.06562; reference code `PKU-ML/ContraNorm`. Per sequence, with :math:`\hat X` the row-normalised tokens:

.. math::
    S = \mathrm{softmax}_\text{row}\!\big(\hat X \hat X^\top / \tau + M\big),\qquad
    \mathrm{CN}(X) = X - s\,S X

followed by the block's own LayerNorm. :math:`M` masks padded keys (the reference BERT code does not; padded tokens
would then act as negatives and break padding invariance). This is the ViT reference form; the BERT reference code's
:math:`(1+s)X - s_\text{ref}SX` equals it under the following LayerNorm with :math:`s = s_\text{ref}/(1+s_\text{ref})`.

Insertion (reference code): BERT, on the attention residual sum just before the post-attention LayerNorm (the
paper's default ``--pos 7``); ViT, in front of each block's two norms and, when the last layer is corrected, of the
final norm, keeping the pretrained norms' weights. :math:`SX` is computed with fused
`scaled_dot_product_attention` as one head of width d, so no n×n tensor is kept for backward.

On a causal model (a decoder, through the generic path of `modeling_generic`) :math:`S` is causal as well: each
token is compared with itself and the earlier tokens only (:math:`M_{ij} = -\infty` for :math:`j > i`), so that no
token reads a later one.

Arguments ↔ symbols: `config.contranorm_scale` = s (0 = identity), `config.contranorm_tau` = τ (> 0); with
`config.correction_strength="learned"`, s·g with one gate g per instance (per layer; the ViT's final norm has its
own), starting at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .correction_base import BEFORE_NORM_SITE, Correction, CorrectionState

CITATION = """@inproceedings{guo2023contranorm,
  title     = {ContraNorm: A Contrastive Learning Perspective on Oversmoothing and Beyond},
  author    = {Guo, Xiaojun and Wang, Yifei and Du, Tianqi and Wang, Yisen},
  booktitle = {International Conference on Learning Representations},
  year      = {2023}
}"""


class ContraNorm(Correction):
    name = "contranorm"
    citation = CITATION
    strength_field = "contranorm_scale"
    hyperparameters = ("contranorm_scale", "contranorm_tau")
    site = BEFORE_NORM_SITE
    saved_activations = 3  # the unit directions (q = k), the kernel's output and the corrected tokens

    def forward(self, hidden: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        tokens = hidden.unsqueeze(1)  # one head of width d: (B, 1, n, d)
        directions = F.normalize(tokens, dim=-1)
        scale = 1 / float(self.config.contranorm_tau)
        if state.causal:
            similar_mean = _causal_similar_mean(directions, tokens, state.padding_mask, scale)
        else:
            key_mask = None
            if state.padding_mask is not None:
                # A row without real tokens would softmax over nothing; let it attend everywhere (its output is unused).
                mask = state.padding_mask | ~state.padding_mask.any(dim=-1, keepdim=True)
                key_mask = mask[:, None, None, :]
            similar_mean = F.scaled_dot_product_attention(
                directions, directions, tokens, attn_mask=key_mask, scale=scale
            )
        return hidden - self.strength() * similar_mean.squeeze(1)


def _causal_similar_mean(
    directions: torch.Tensor, tokens: torch.Tensor, padding_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """S·X with each token compared with itself and the earlier real tokens, by the fused kernel in its causal mode:
    no (n × n) mask is built or kept. Padded keys are left out by carrying the real-token indicator m as one more
    value channel: the kernel returns Σ_j e^{s_ij} m_j x_j / Z_i and Σ_j e^{s_ij} m_j / Z_i, whose ratio is the
    softmax over the real earlier keys (a query with none, a padded one, gets 0)."""
    if padding_mask is None:
        return F.scaled_dot_product_attention(directions, directions, tokens, is_causal=True, scale=scale)
    real = padding_mask[:, None, :, None].to(tokens.dtype)
    # The fused kernels need queries, keys and values of one width: the directions get zeros (the scores are
    # unchanged), 8 more channels in all so that a width divisible by 8 stays so.
    extra = tokens.new_zeros((*tokens.shape[:-1], 7))
    directions = torch.cat([directions, extra, torch.zeros_like(real)], dim=-1)
    both = F.scaled_dot_product_attention(
        directions, directions, torch.cat([tokens * real, extra, real], dim=-1), is_causal=True, scale=scale
    )
    return both[..., : tokens.shape[-1]] / both[..., -1:].clamp_min(torch.finfo(both.dtype).tiny)
