"""Each method written the way the authors' code does it: the baseline `bench/run.py` compares ours against.

Benchmark-only; never imported by the package. The same model (same weights, same inputs) is turned into its
reference-style twin by switching to eager attention (explicit softmax matrices, as every reference repository does)
and swapping each correction module for one that does the arithmetic the authors' way:

- centered (Ali et al., `centered-attention`): the centering matrix (A − 1/n·11ᵀ) applied to V, with the n×n
  averaging matrix materialised per head;
- neutreno (Nguyen et al., `NeuTRENO_NeurIPS2024`): `attn @ v + λ(v0 − v)` on eager attention, then the output
  projection (the same arithmetic as ours, which computes the sum with the projection and keeps less for backward);
- contranorm (Guo et al., `PKU-ML/ContraNorm`): explicit n×n cosine-similarity matrix, softmax and matmul;
- dgn (Zhou et al., `DGN`): the N×G×d grouped tensor through `BatchNorm1d(G·d)`, summed over the groups;
- fusions (Shi et al.): all layer outputs collected, then `torch.cat` → linear, `torch.stack(...).amax(0)`, and the
  gate's softmax over the stacked layers.

Padding: the benchmark feeds full-length sequences, so the reference code's missing padding masks change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from hf_centered.correction_base import Correction, CorrectionState
from hf_centered.fusion import LayerFusion


class ReferenceCorrection(nn.Module):
    """The authors' code computes each correction where it acts: nothing is folded into the attention's V, and the
    output projection is a separate call on the corrected context."""

    def value_shift(self, value: torch.Tensor, state: CorrectionState) -> None:
        return None

    def project(
        self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState, projection: nn.Linear
    ) -> None:
        return None


class ReferenceCentered(ReferenceCorrection):
    """(A − 1/n·11ᵀ)V = AV − (1/n·11ᵀ)V with the averaging matrix built explicitly, per head."""

    def __init__(self, ours: Correction):
        super().__init__()
        # Our module's strength (with its learned gates): a bound method, so that ours is not a submodule here.
        self.head_strength = ours.head_strength

    def forward(self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        seq_len = value.shape[2]
        averaging = torch.full((seq_len, seq_len), 1.0 / seq_len, dtype=value.dtype, device=value.device)
        return context - (self.head_strength() * (averaging @ value)).transpose(1, 2)


class ReferenceNeuTRENO(ReferenceCorrection):
    def __init__(self, ours: Correction):
        super().__init__()
        self.head_strength = ours.head_strength

    def forward(self, context: torch.Tensor, value: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        return context + (self.head_strength() * (state.first_values - value)).transpose(1, 2)


class ReferenceContraNorm(ReferenceCorrection):
    """PKU-ML/ContraNorm: `x_norm = normalize(x); sim = softmax(x_norm @ x_norm.T / tau); x - s * sim @ x`."""

    def __init__(self, ours: Correction):
        super().__init__()
        self.strength, self.tau = ours.strength, ours.config.contranorm_tau

    def forward(self, hidden: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        normalized = F.normalize(hidden, dim=-1)
        similarity = torch.softmax(normalized @ normalized.transpose(-1, -2) / self.tau, dim=-1)
        return hidden - self.strength() * (similarity @ hidden)


class ReferenceDGN(ReferenceCorrection):
    """DGN's reference layer: soft cluster assignment, N×G×d grouped features, one BatchNorm1d over G·d channels."""

    def __init__(self, ours: Correction):
        super().__init__()
        self.strength, self.assign = ours.strength, ours.assign
        self.groups = ours.config.dgn_groups
        hidden_size = ours.weight.shape[1]
        self.batch_norm = nn.BatchNorm1d(self.groups * hidden_size, momentum=ours.config.dgn_momentum, eps=ours.eps)
        with torch.no_grad():
            self.batch_norm.weight.copy_(ours.weight.flatten())
            self.batch_norm.bias.copy_(ours.bias.flatten())

    def forward(self, hidden: torch.Tensor, state: CorrectionState) -> torch.Tensor:
        tokens = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
        assignment = torch.softmax(self.assign(tokens), dim=-1)  # (N, G)
        grouped = assignment.unsqueeze(-1) * tokens.unsqueeze(-2)  # (N, G, d)
        normalized = self.batch_norm(grouped.reshape(tokens.shape[0], -1)).view_as(grouped)
        return hidden + self.strength() * normalized.sum(dim=1).view_as(hidden)


class ReferenceFusion(nn.Module):
    """Shi et al.'s fusions with every layer output at hand: all L are collected first, then stacked."""

    def __init__(self, ours: LayerFusion):
        super().__init__()
        self.ours = ours  # shares the parameters

    def forward(self, layer_outputs: Iterable[torch.Tensor]) -> torch.Tensor:
        layers = list(layer_outputs)
        if self.ours.name == "concat":
            return F.linear(torch.cat(layers, dim=-1), self.ours.weight, self.ours.bias)
        stacked = torch.stack(layers)
        if self.ours.name == "max":
            return stacked.amax(dim=0)
        if self.ours.name == "gate":
            return (self.ours.layer_weights(stacked) * stacked).sum(dim=0)
        raise ValueError(f"no reference-style implementation of fusion {self.ours.name!r}")


def _reference_module(correction: nn.Module) -> nn.Module:
    references = {
        "centered": ReferenceCentered,
        "neutreno": ReferenceNeuTRENO,
        "contranorm": ReferenceContraNorm,
        "dgn": ReferenceDGN,
    }
    if correction.name in references:
        return references[correction.name](correction)
    raise ValueError(f"no reference-style implementation of correction {correction.name!r}")


def to_reference_style(model: nn.Module) -> nn.Module:
    """Turns one of our models, in place, into its reference-style twin (eager attention, authors' arithmetic)."""
    model.set_attn_implementation("eager")
    for module in list(model.modules()):
        if isinstance(getattr(module, "fusion", None), LayerFusion):
            module.fusion = ReferenceFusion(module.fusion)
        if isinstance(module, nn.ModuleDict):
            for key, child in list(module.items()):
                if isinstance(child, Correction):
                    module[key] = _reference_module(child)
    return model
