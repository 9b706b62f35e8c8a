"""Configurations of the corrected BERT and ViT models: the stock configurations plus the correction fields."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

from huggingface_hub.dataclasses import strict, validated_field
from transformers import BertConfig, ViTConfig
from transformers.utils import logging

from .correction_base import FIXED_STRENGTH, LEARNED_STRENGTH, STRENGTH_MODES
from .corrections import CORRECTIONS, NO_CORRECTION, available_corrections
from .fusion import NO_FUSION, available_fusions

logger = logging.get_logger(__name__)


# DGN keeps a (G, hidden_size) scale, shift and two running statistics: a crafted config.json must not allocate
# gigabytes (the papers use 10 groups; PyG's examples up to 10).
MAX_DGN_GROUPS = 1024


def _is_number(value) -> bool:
    """A finite int or float (bools, NaN and ±inf are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _allowed(names) -> str:
    return ", ".join(repr(name) for name in names)


def _check_ignore_index(value) -> None:
    """Validator of `semantic_loss_ignore_index` (the file's postponed annotations leave its `int` unchecked)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"semantic_loss_ignore_index={value!r} is not valid: allowed values are integers (a label no pixel class "
            "uses, e.g. 255)."
        )


def field_help(name: str) -> str:
    """One line on a correction field, for command-line help."""
    for correction in CORRECTIONS.values():
        if name == correction.strength_field:
            return f"strength of {correction.name} (0 = the stock model)"
        if name in correction.hyperparameters:
            return f"{correction.name}'s {name.split('_', 1)[1]}"
    return {
        "correction_strength": f"{_allowed(STRENGTH_MODES)}: fixed strengths, or learned gates that start at 0",
        "strength_gate_scale": "a learned gate is this times its parameter: its learning-rate multiplier",
    }.get(name, name)


@dataclass(repr=False)
class CorrectionConfigMixin:
    """The fields of api.md shared by both configurations, their validation and normalisation.

    Args:
        correction (`str` or `list[str]`, defaults to `"centered"`):
            One of `available_corrections()`, or a list of several to combine them (`"none"` stands alone).
        correction_layers (`list[int]`, *optional*):
            0-based indices of the layers the corrections act in; `None` means every layer. NeuTRENO's V⁰ always
            comes from layer 0, whether or not layer 0 is listed.
        centered_scale (`float`, defaults to 1.0): γ of centered attention.
        neutreno_lambda (`float`, defaults to 0.6): λ of NeuTRENO.
        contranorm_scale (`float`, defaults to 0.1): s of ContraNorm.
        contranorm_tau (`float`, defaults to 1.0): τ of ContraNorm.
        dgn_groups (`int`, defaults to 10): G of differentiable group normalisation.
        dgn_lambda (`float`, defaults to 0.01): λ of differentiable group normalisation.
        dgn_momentum (`float`, defaults to 0.1): momentum of DGN's running statistics (PyG's default).
        fusion (`str`, defaults to `"none"`): one of `available_fusions()`, applied to the layer outputs before
            the head.
        correction_strength (`str`, defaults to `"fixed"`): `"fixed"` applies each correction at its configured
            strength; `"learned"` multiplies it by learnable gates that start at exactly 0 (one per corrected layer,
            one per head for the attention-site corrections), so that a converted pretrained model equals the stock
            one until training moves the gates. A gate may turn negative (the opposite correction).
        strength_gate_scale (`float`, defaults to 100.0): a learned gate is `strength_gate_scale` × its parameter.
            Under Adam-type optimisers this multiplies the gates' effective learning rate by the same factor, without
            a parameter group: at the model's learning rate the gates barely move in a fine-tuning run.
    """

    correction: str | list[str] = "centered"
    correction_layers: list[int] | None = None
    centered_scale: float | int = 1.0
    neutreno_lambda: float | int = 0.6
    contranorm_scale: float | int = 0.1
    contranorm_tau: float | int = 1.0
    dgn_groups: int = 10
    dgn_lambda: float | int = 0.01
    dgn_momentum: float | int = 0.1
    fusion: str = "none"
    correction_strength: str = FIXED_STRENGTH
    strength_gate_scale: float | int = 100.0

    # hidden_states[-1] stays the raw last layer when a fusion replaces last_hidden_state.
    tie_last_hidden_states = False
    stock_model_type: ClassVar[str]

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a stock config's model_type must not survive on the instance
        self.validate_corrections()  # before the parent's validation, which would wrap the ValueError
        super().__post_init__(**kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == cls.stock_model_type:
            logger.info(f"Converting a stock `{cls.stock_model_type}` configuration into `{cls.model_type}`.")
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`from_pretrained(path, **fields)` and `AutoConfig` set the keyword arguments after construction, past the
        validation of `__post_init__`: they are checked here."""
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).validate_corrections()
        return loaded

    def validate_corrections(self) -> None:
        """Checks every correction field; strict dataclasses call every `validate_*` method at construction."""
        layers = self.num_hidden_layers
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"num_hidden_layers={layers!r} is not valid: allowed values are integers >= 1.")
        if isinstance(self.correction, str):
            names = [self.correction]
        elif isinstance(self.correction, (list, tuple)):
            names = list(self.correction)
        else:
            names = [None]
        unknown = [name for name in names if name not in available_corrections()]
        if unknown or not names:
            raise ValueError(
                f"correction={self.correction!r} is not valid: allowed values are {_allowed(available_corrections())} "
                "or a non-empty list of them."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"correction={self.correction!r} lists a correction twice.")
        if NO_CORRECTION in names and len(names) > 1:
            raise ValueError(f"correction={self.correction!r} combines {NO_CORRECTION!r} with other corrections.")
        if self.correction_layers is not None:
            if not isinstance(self.correction_layers, (list, tuple)):
                raise ValueError(
                    f"correction_layers={self.correction_layers!r} is not valid: allowed values are a list of layer "
                    f"indices 0..{self.num_hidden_layers - 1} or None for all."
                )
            layers = list(self.correction_layers)
            bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int)]
            bad += [i for i in layers if i not in bad and not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(
                    f"correction_layers={self.correction_layers!r} is not valid: allowed values are layer indices "
                    f"0..{self.num_hidden_layers - 1} (num_hidden_layers={self.num_hidden_layers}) or None for all."
                )
            if len(set(layers)) != len(layers):
                raise ValueError(f"correction_layers={self.correction_layers!r} lists a layer twice.")
        for field in ("centered_scale", "neutreno_lambda", "contranorm_scale", "dgn_lambda"):
            value = getattr(self, field)
            if not _is_number(value) or not value >= 0:
                raise ValueError(f"{field}={value!r} is not valid: allowed values are finite numbers >= 0.")
        if not _is_number(self.contranorm_tau) or not self.contranorm_tau > 0:
            raise ValueError(
                f"contranorm_tau={self.contranorm_tau!r} is not valid: allowed values are finite numbers > 0."
            )
        if (
            not isinstance(self.dgn_groups, int)
            or isinstance(self.dgn_groups, bool)
            or not 1 <= self.dgn_groups <= MAX_DGN_GROUPS
        ):
            raise ValueError(
                f"dgn_groups={self.dgn_groups!r} is not valid: allowed values are integers 1..{MAX_DGN_GROUPS} (each "
                "group has a (hidden_size,) scale, shift and running statistics)."
            )
        if not _is_number(self.dgn_momentum) or not 0 <= self.dgn_momentum <= 1:
            raise ValueError(f"dgn_momentum={self.dgn_momentum!r} is not valid: allowed values are in [0, 1].")
        if self.correction_strength not in STRENGTH_MODES:
            raise ValueError(
                f"correction_strength={self.correction_strength!r} is not valid: allowed values are "
                f"{_allowed(STRENGTH_MODES)}."
            )
        if not _is_number(self.strength_gate_scale) or not self.strength_gate_scale > 0:
            raise ValueError(
                f"strength_gate_scale={self.strength_gate_scale!r} is not valid: allowed values are finite numbers > 0."
            )
        if self.correction_strength == LEARNED_STRENGTH:
            # A learned gate multiplies the configured strength: at 0 it would never receive a gradient.
            for name in names:
                field = CORRECTIONS[name].strength_field if name in CORRECTIONS else None
                if field is not None and getattr(self, field) == 0:
                    raise ValueError(
                        f"{field}=0 is not valid with correction_strength='learned': the learned gates scale it, so "
                        "allowed values are finite numbers > 0."
                    )
        if self.fusion not in available_fusions():
            raise ValueError(
                f"fusion={self.fusion!r} is not valid: allowed values are {_allowed(available_fusions())}."
            )
        if getattr(self, "is_decoder", False) or getattr(self, "add_cross_attention", False):
            raise ValueError(
                "is_decoder=True / add_cross_attention=True are not valid: the corrected models are encoders; "
                "allowed values are False."
            )

    def structure(self) -> dict[str, object]:
        """The fields that decide which modules and parameters a model builds (and `strength_gate_scale`, which a
        fusion's gate keeps from its construction); the others (the strengths, τ, DGN's momentum) are read at every
        call. A model compares it with its own at each forward and save."""
        fields = (
            "correction",
            "correction_layers",
            "fusion",
            "correction_strength",
            "strength_gate_scale",
            "dgn_groups",
        )
        fields += ("num_hidden_layers", "hidden_size", "num_attention_heads")
        return {name: copy.deepcopy(getattr(self, name)) for name in fields}

    def check_structure(self, built: dict[str, object]) -> None:
        """Raises when a field of `structure()` differs from `built`, the structure a model was built with."""
        changed = [name for name, value in built.items() if getattr(self, name) != value]
        if changed:
            described = ", ".join(f"{name}={getattr(self, name)!r} (built with {built[name]!r})" for name in changed)
            raise ValueError(
                f"{described}: the model was built for that value, so it cannot change on a built model; "
                "allowed: build a new one, e.g. from_pretrained(folder, **fields) with the new value."
            )

    @property
    def corrections(self) -> list[str]:
        """The active correction names, in a canonical order (`[]` for `"none"`)."""
        names = {self.correction} if isinstance(self.correction, str) else set(self.correction)
        return [name for name in CORRECTIONS if name in names]

    def is_corrected_layer(self, layer_idx: int) -> bool:
        return self.correction_layers is None or layer_idx in self.correction_layers

    @property
    def has_fusion(self) -> bool:
        return self.fusion != NO_FUSION


@strict
class CenteredBertConfig(CorrectionConfigMixin, BertConfig):
    r"""[`BertConfig`] plus the anti-over-smoothing fields of [`CorrectionConfigMixin`].

    A plain BERT `config.json` (`model_type: "bert"`) loads into this class and becomes `centered_bert`.

    Args:
        sparse_prediction (`bool`, defaults to `False`):
            Given labels, [`CenteredBertForMaskedLM`] scores only the positions whose label is not -100 and returns
            their logits, `(labelled positions, vocab_size)`, as ModernBERT's option of the same name: the loss is
            the same, and the vocabulary projection, which dominates the cost of small models, runs on the masked
            ~15 % of the tokens. Without labels (inference, pipelines) the logits cover every position.

    Example:

    ```python
    >>> from hf_centered import CenteredBertConfig
    >>> config = CenteredBertConfig(correction=["centered", "contranorm"], contranorm_scale=0.05, fusion="gate")
    ```
    """

    model_type = "centered_bert"
    stock_model_type = "bert"

    sparse_prediction: bool = False


@strict
class CenteredViTConfig(CorrectionConfigMixin, ViTConfig):
    r"""[`ViTConfig`] plus the anti-over-smoothing fields of [`CorrectionConfigMixin`].

    A plain ViT `config.json` (`model_type: "vit"`) loads into this class and becomes `centered_vit`.

    Args:
        semantic_loss_ignore_index (`int`, defaults to 255):
            The label of the pixels that [`CenteredViTForSemanticSegmentation`]'s loss ignores (255, as the stock
            segmentation configurations, e.g. Segformer's, BEiT's and DPT's).

    Example:

    ```python
    >>> from hf_centered import CenteredViTConfig
    >>> config = CenteredViTConfig(correction="neutreno", neutreno_lambda=0.6, correction_layers=[4, 5, 6])
    ```
    """

    model_type = "centered_vit"
    stock_model_type = "vit"

    semantic_loss_ignore_index: int = validated_field(_check_ignore_index, default=255)
