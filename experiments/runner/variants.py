"""The methods the experiments compare: variant names, the `finetune.py` options of each, the corrections' defaults.

A variant is every registered correction alone and every registered fusion alone, so a new method joins the
experiments without an edit here. `all` combines every registered correction; the `@learned` suffix turns a variant's
strengths into learned ones (`correction_strength="learned"`).
"""

from __future__ import annotations

from hf_centered.configuration_centered import CorrectionConfigMixin
from hf_centered.corrections import available_corrections
from hf_centered.fusion import NO_FUSION, available_fusions

BASELINE = "none"
ALL_AT_ONCE = "all"
LEARNED = "@learned"
# The main hyper-parameter of each correction: swept by the ViT depth sweep, its default named in the report's setup.
MAIN_FIELD = {
    "centered": "centered_scale",
    "neutreno": "neutreno_lambda",
    "contranorm": "contranorm_scale",
    "dgn": "dgn_lambda",
}


def variants() -> dict[str, tuple[str, str]]:
    """Every registered correction alone and every registered fusion alone: name → (correction, fusion)."""
    table = {name: (name, NO_FUSION) for name in available_corrections()}
    table.update({name: (BASELINE, name) for name in available_fusions() if name != NO_FUSION})
    return table


def is_fusion(variant: str) -> bool:
    return variants()[variant][1] != NO_FUSION


def corrections() -> list[str]:
    """Every registered correction except the stock baseline: what `all` combines."""
    return [name for name in available_corrections() if name != BASELINE]


def variant_options(variant: str) -> tuple[str, ...]:
    """Options of a variant name: `<variant>` of `variants()`, `all`, either with the `@learned` suffix."""
    name = variant.removesuffix(LEARNED)
    if name == ALL_AT_ONCE:
        options: tuple[str, ...] = ("--correction", *corrections(), "--fusion", NO_FUSION)
    else:
        correction, fusion = variants()[name]
        options = ("--correction", correction, "--fusion", fusion)
    return (*options, "--correction_strength", "learned") if variant.endswith(LEARNED) else options


def default_value(field_name: str) -> float:
    """The configuration's default of a correction hyper-parameter."""
    return CorrectionConfigMixin.__dataclass_fields__[field_name].default
