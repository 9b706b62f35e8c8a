"""The registry of corrections: adding a method is one file and one entry in `CORRECTIONS`."""

from __future__ import annotations

from torch import nn

from .correction_base import Correction
from .correction_centered import CenteredAttention
from .correction_contranorm import ContraNorm
from .correction_dgn import DifferentiableGroupNorm
from .correction_neutreno import NeuTRENO

NO_CORRECTION = "none"

CORRECTIONS: dict[str, type[Correction]] = {
    cls.name: cls for cls in (CenteredAttention, NeuTRENO, ContraNorm, DifferentiableGroupNorm)
}


def available_corrections() -> list[str]:
    """Names accepted by `config.correction`: `"none"` and every registered correction."""
    return [NO_CORRECTION, *CORRECTIONS]


def build_corrections(config, layer_idx: int, site: str) -> nn.ModuleDict:
    """The corrections of `config` that act at `site` in layer `layer_idx`, keyed by name, in canonical order."""
    if not config.is_corrected_layer(layer_idx):
        return nn.ModuleDict()
    return nn.ModuleDict(
        {
            name: CORRECTIONS[name](config, layer_idx)
            for name in config.corrections
            if CORRECTIONS[name].site == site and CORRECTIONS[name].acts_in_layer(config, layer_idx)
        }
    )


def needs_first_values(config) -> bool:
    """Whether some corrected layer reads the first layer's values (NeuTRENO)."""
    return any(
        CORRECTIONS[name].needs_first_values
        and any(
            config.is_corrected_layer(i) and CORRECTIONS[name].acts_in_layer(config, i)
            for i in range(config.num_hidden_layers)
        )
        for name in config.corrections
    )
