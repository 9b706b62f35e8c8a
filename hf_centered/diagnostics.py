r"""Over-smoothing diagnostics for any Hugging Face model that returns ``hidden_states``.

For every hidden state :math:`X^{(l)}` (index 0 = embeddings) and every sequence, the metrics below are computed over
the **real tokens only** (padding removed through ``attention_mask``; optionally special tokens or position 0 too),
then averaged over sequences (mean and population standard deviation). Notation: :math:`X\in\mathbb R^{n_r\times d}`
holds the :math:`n_r` real tokens of one sequence as rows, :math:`\bar x=\frac1{n_r}\sum_i x_i` is their mean and
:math:`\hat x_i = x_i/\max(\|x_i\|,\epsilon)`.

``cosine_similarity``
    Mean cosine similarity over the :math:`n_r(n_r-1)/2` distinct pairs of tokens,
    :math:`\mathrm{Sim}(X)=\big(\|\sum_i\hat x_i\|^2-\sum_i\|\hat x_i\|^2\big)/\big(n_r(n_r-1)\big)`, which equals
    :math:`\frac{2}{n_r(n_r-1)}\sum_{i<j}\hat x_i^\top\hat x_j` in :math:`O(n_r d)` without any :math:`n\times n`
    matrix. :math:`\sum_i\|\hat x_i\|^2` is :math:`n_r` unless a token is exactly zero (a zero token has similarity 0
    with every other token).
``effective_rank`` and ``effective_rank_centered``
    Roy & Vetterli's effective rank :math:`\exp\big(-\sum_k p_k\log p_k\big)`, :math:`p_k=\sigma_k/\sum_j\sigma_j`, of
    the uncentred :math:`X` and of the centred :math:`X-\mathbf 1\bar x^\top`. It lies in :math:`[1,\mathrm{rank}(X)]`;
    an all-zero matrix (e.g. the centred matrix of identical tokens) has effective rank 0, its rank. Singular values
    come from the eigenvalues of the smaller Gram matrix in float64; those below
    :math:`\sigma_1(X)\sqrt{10\,k\,\varepsilon_{64}}` (:math:`k` = Gram size, about :math:`5\cdot10^{-7}\sigma_1`
    for :math:`k=128`), i.e. at the rounding noise of the Gram matrix and below the resolution of float32 inputs,
    count as 0.
``rank_collapse_residual``
    Dong et al.'s relative residual, measured as in the authors' plotting code with the token mean in place of the
    best rank-1 approximation: :math:`\|X-\mathbf 1\bar x^\top\|_{1,\infty}/\|X\|_{1,\infty}` with
    :math:`\|A\|_{1,\infty}=\sqrt{\|A\|_1\|A\|_\infty}`, :math:`\|A\|_1` the largest column absolute sum and
    :math:`\|A\|_\infty` the largest row absolute sum. 0 for an all-zero :math:`X`.
``rank_collapse_residual_fro``
    :math:`\|X-\mathbf 1\bar x^\top\|_F/\|X\|_F` (here the mean is the exact minimiser). 0 for an all-zero :math:`X`.

Sequences with fewer than two real tokens have no token pairs and are skipped for every metric; the profile records
how many were skipped. :func:`group_distance_ratio` measures class separation of labelled representations (DGN).

References:
    Y. Dong, J.-B. Cordonnier, A. Loukas. Attention is not all you need: pure attention loses rank doubly
    exponentially with depth. ICML 2021, arXiv:2103.03404.
    O. Roy, M. Vetterli. The effective rank: a measure of effective dimensionality. EUSIPCO 2007.
    K. Zhou, X. Huang, Y. Li, D. Zha, R. Chen, X. Hu. Towards deeper graph neural networks with differentiable group
    normalization. NeurIPS 2020, arXiv:2006.06972.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "MAIN_METRICS",
    "METRICS",
    "Profile",
    "group_distance_ratio",
    "hidden_state_metrics",
    "oversmoothing_profile",
    "plot_profiles",
]

METRICS = (
    "cosine_similarity",
    "effective_rank",
    "effective_rank_centered",
    "rank_collapse_residual",
    "rank_collapse_residual_fro",
)
MAIN_METRICS = ("cosine_similarity", "effective_rank", "rank_collapse_residual")
METRIC_TITLES = {
    "cosine_similarity": "mean pairwise cosine similarity",
    "effective_rank": "effective rank",
    "effective_rank_centered": "effective rank (centred)",
    "rank_collapse_residual": "rank-collapse residual (ℓ1,∞)",
    "rank_collapse_residual_fro": "rank-collapse residual (Frobenius)",
}
GROUP_DISTANCE_MODES = ("dgn_ref", "pyg", "formula")

# Inputs that are targets or tokenizer by-products, never model inputs.
_NON_INPUT_KEYS = frozenset({"labels", "label", "label_ids", "special_tokens_mask"})
_NORM_EPS = 1e-12
# Relative eigenvalue tolerance factor of the Gram matrices (see the module docstring).
_GRAM_TOLERANCE_FACTOR = 10.0
_AUTO_PROGRESS_MIN_BATCHES = 5


# --------------------------------------------------------------------------------------------------------------------
# Per-sequence metrics


def hidden_state_metrics(hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every metric of the module docstring for each sequence of one hidden state.

    Args:
        hidden_states: ``[batch, tokens, features]`` (any floating dtype; computed in float32, float64 for the
            spectra, or fully in float64 for float64 input).
        mask: ``[batch, tokens]``, true/1 for real tokens; ``None`` means every token is real.

    Returns:
        ``{metric: tensor [batch]}`` in float64 plus ``"num_real_tokens"``; metrics of sequences with fewer than two
        real tokens are NaN.
    """
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be [batch, tokens, features], got shape {tuple(hidden_states.shape)}")
    batch_size, num_tokens = hidden_states.shape[:2]
    if mask is None:
        mask = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=hidden_states.device)
    if mask.shape != (batch_size, num_tokens):
        raise ValueError(
            f"mask must have shape {(batch_size, num_tokens)} (batch, tokens of the hidden states), "
            f"got {tuple(mask.shape)}"
        )
    real = mask.to(device=hidden_states.device, dtype=torch.bool).unsqueeze(-1)
    compute_dtype = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
    # Padded positions may hold anything (even NaN), so they are replaced rather than multiplied by 0.
    x = torch.where(real, hidden_states.to(compute_dtype), 0.0)
    num_real = real.sum(dim=(1, 2)).to(torch.float64)

    cosine = _mean_pairwise_cosine(x, num_real)
    residual_l1inf = _rank_collapse_residual_l1inf(x, real, num_real)
    erank, erank_centered, residual_fro = _spectral_metrics(x.double(), real, num_real)

    too_short = num_real < 2
    metrics = {
        "cosine_similarity": cosine,
        "effective_rank": erank,
        "effective_rank_centered": erank_centered,
        "rank_collapse_residual": residual_l1inf,
        "rank_collapse_residual_fro": residual_fro,
    }
    metrics = {name: value.masked_fill(too_short, math.nan) for name, value in metrics.items()}
    metrics["num_real_tokens"] = num_real
    return metrics


def _mean_pairwise_cosine(x: torch.Tensor, num_real: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    clamped = norms.clamp_min(_NORM_EPS)
    unit_sum = (x / clamped).sum(dim=1).double()
    self_similarity = ((norms / clamped).squeeze(-1).double() ** 2).sum(dim=1)
    pairs = num_real * (num_real - 1)
    return (unit_sum.pow(2).sum(dim=-1) - self_similarity) / pairs.clamp_min(1)


def _rank_collapse_residual_l1inf(x: torch.Tensor, real: torch.Tensor, num_real: torch.Tensor) -> torch.Tensor:
    mean = x.sum(dim=1, keepdim=True) / num_real.clamp_min(1).to(x.dtype).view(-1, 1, 1)
    residual = torch.where(real, x - mean, 0.0)
    return _safe_ratio(_norm_1_inf(residual), _norm_1_inf(x))


def _norm_1_inf(matrices: torch.Tensor) -> torch.Tensor:
    """sqrt(max column abs-sum · max row abs-sum) per matrix; zero (padded) rows change neither."""
    magnitudes = matrices.abs()
    max_column_sum = magnitudes.sum(dim=1).amax(dim=-1).double()
    max_row_sum = magnitudes.sum(dim=2).amax(dim=-1).double()
    return (max_column_sum * max_row_sum).sqrt()


def _spectral_metrics(
    x: torch.Tensor, real: torch.Tensor, num_real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Effective ranks (uncentred, centred) and the Frobenius residual from the Gram matrices of one batch.

    Zero rows add nothing to a Gram matrix, so padded sequences share one batched eigen-solve; the centred Gram matrix
    is derived from the uncentred one, which restricts the centring to real rows and needs no second product.
    """
    num_tokens, num_features = x.shape[1], x.shape[2]
    count = num_real.clamp_min(1).view(-1, 1, 1)
    if num_tokens <= num_features:
        weights = real.squeeze(-1).to(x.dtype).unsqueeze(-1)
        gram = x @ x.mT
        # X_c = X - m x̄ᵀ on real rows, so X_c X_cᵀ = G - m gᵀ - g mᵀ + (mᵀ g / n_r) m mᵀ with g = G m / n_r: an
        # O(n²) update instead of a second product.
        token_gram_mean = gram @ weights / count
        centered_gram = (
            gram
            - weights * token_gram_mean.mT
            - token_gram_mean * weights.mT
            + (weights.mT @ token_gram_mean) / count * (weights * weights.mT)
        )
    else:
        gram = x.mT @ x
        token_sum = x.sum(dim=1).unsqueeze(-1)
        # X_cᵀX_c = XᵀX - n_r x̄ x̄ᵀ = XᵀX - s sᵀ / n_r with s the sum of real tokens.
        centered_gram = gram - token_sum * token_sum.mT / count
    eigenvalues = _symmetric_eigenvalues(torch.stack([gram, centered_gram]))
    largest = eigenvalues[0, :, -1:].clamp_min(0)
    tolerance = largest * (_GRAM_TOLERANCE_FACTOR * gram.shape[-1] * torch.finfo(torch.float64).eps)
    singular_values = torch.where(eigenvalues > tolerance, eigenvalues, 0.0).sqrt()
    erank, erank_centered = _effective_rank(singular_values)
    residual_fro = _safe_ratio(
        torch.diagonal(centered_gram, dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt(),
        torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1).sqrt(),
    )
    return erank, erank_centered, residual_fro


def _symmetric_eigenvalues(matrices: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of a batch of symmetric matrices, one single-threaded LAPACK solve per CPU thread.

    MKL's own threading is slower than one thread on 128×128 matrices (median 183 ms against 42 ms for 64 of them on
    2 busy cores), while independent solves in parallel threads halve the time (34 ms → 19 ms, 2 idle cores).
    """
    if matrices.device.type != "cpu":
        return torch.linalg.eigvalsh(matrices)
    num_threads = torch.get_num_threads()
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    workers = min(num_threads, len(flat))
    torch.set_num_threads(1)
    try:
        if workers <= 1:
            return torch.linalg.eigvalsh(matrices)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            chunks = list(pool.map(torch.linalg.eigvalsh, flat.chunk(workers)))
        return torch.cat(chunks).reshape(matrices.shape[:-1])
    finally:
        torch.set_num_threads(num_threads)


def _effective_rank(singular_values: torch.Tensor) -> torch.Tensor:
    total = singular_values.sum(dim=-1, keepdim=True)
    probabilities = singular_values / total.clamp_min(torch.finfo(singular_values.dtype).tiny)
    entropy = -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), 0.0)


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where the denominator is 0 (an all-zero matrix has no residual)."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny), 0.0)


# --------------------------------------------------------------------------------------------------------------------
# Profile


@dataclasses.dataclass
class Profile:
    """Per-layer over-smoothing metrics of one model on one set of inputs.

    ``metrics[name][l]`` is the mean over sequences at hidden state ``l`` (0 = embeddings) and
    ``metrics[name + "_std"][l]`` the population standard deviation.
    """

    metrics: dict[str, list[float]]
    num_sequences: int
    num_layers: int
    num_skipped_sequences: int = 0
    model_name: str | None = None
    model_class: str | None = None
    dataset: str | None = None

    _METADATA_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_sequences",
        "num_layers",
        "num_skipped_sequences",
        "model_name",
        "model_class",
        "dataset",
    )

    def __getitem__(self, metric: str) -> list[float]:
        return self.metrics[metric]

    @property
    def label(self) -> str:
        """A short name for legends: the model's name or path, else its class."""
        return self.model_name or self.model_class or "model"

    def to_dict(self) -> dict[str, Any]:
        """Metric series then metadata, as plain Python values (JSON-safe)."""
        result: dict[str, Any] = {name: [float(value) for value in values] for name, values in self.metrics.items()}
        for field in self._METADATA_FIELDS:
            result[field] = getattr(self, field)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        missing = [field for field in ("num_sequences", "num_layers") if field not in data]
        if missing:
            raise ValueError(f"not a profile dictionary: missing {missing}")
        metadata = {field: data[field] for field in cls._METADATA_FIELDS if field in data}
        metrics = {name: [float(v) for v in values] for name, values in data.items() if name not in metadata}
        return cls(metrics=metrics, **metadata)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> Profile:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path: str | Path, title: str | None = None) -> None:
        """PNG with one panel per main metric against the layer, with a ±std band."""
        plot_profiles([self], path, labels=[self.label], title=title)

    def to_markdown_table(self, metrics: Sequence[str] = METRICS, digits: int = 3) -> str:
        """Layer × metric table of means, e.g. for a model card."""
        unknown = [name for name in metrics if name not in self.metrics]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; this profile has {sorted(self.metrics)}")
        header = "| layer | " + " | ".join(METRIC_TITLES.get(name, name) for name in metrics) + " |"
        rule = "|---:|" + "---:|" * len(metrics)
        rows = []
        for layer in range(self.num_layers + 1):
            name = "0 (embeddings)" if layer == 0 else str(layer)
            values = " | ".join(f"{self.metrics[metric][layer]:.{digits}f}" for metric in metrics)
            rows.append(f"| {name} | {values} |")
        return "\n".join([header, rule, *rows])


# --------------------------------------------------------------------------------------------------------------------
# Running a model


def oversmoothing_profile(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    exclude_special_tokens: bool = False,
    special_token_ids: Iterable[int] | None = None,
    exclude_cls: bool = False,
    batch_size: int = 32,
    max_batches: int | None = None,
    max_sequences: int | None = None,
    progress: bool | None = None,
) -> Profile:
    """Per-layer over-smoothing metrics of ``model`` over ``batches`` (see the module docstring for the definitions).

    Args:
        model: any Hugging Face model whose output has ``hidden_states`` when called with
            ``output_hidden_states=True`` (BERT, RoBERTa, ViT, DeiT, GPT-2, ...). It runs in eval mode under
            ``torch.no_grad()``; its training mode is restored afterwards.
        batches: an iterable of input dicts (what ``model(**batch)`` takes; ``labels`` keys are dropped), a
            ``DataLoader`` yielding such dicts, or a ``datasets.Dataset`` (cut into ``batch_size`` rows; columns
            that are not arguments of ``model.forward`` are ignored and ragged ones padded). A single dict, e.g. a
            tokenizer's output, is one batch.
        exclude_special_tokens: also drop special tokens ([CLS], [SEP], ...) from every metric: those flagged by a
            ``special_tokens_mask`` in the batch (``tokenizer(..., return_special_tokens_mask=True)``) or, otherwise,
            those whose ``input_ids`` are in ``special_token_ids``.
        special_token_ids: ids treated as special, e.g. ``tokenizer.all_special_ids``.
        exclude_cls: drop position 0 of every sequence ([CLS] of ViT/DeiT, also of right-padded text inputs).
        batch_size: rows per batch when ``batches`` is a ``datasets.Dataset``.
        max_batches: stop after this many batches.
        max_sequences: stop after this many sequences (the last batch is cut).
        progress: tqdm progress bar; ``None`` shows it only when stderr is a terminal and there are at least
            five batches (or an unknown number).
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    special_ids = None if special_token_ids is None else torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)

    accepted_inputs = _forward_parameter_names(model)
    if isinstance(batches, Mapping):
        batches = [batches]
    elif _is_hf_dataset(batches):
        batches = _dataset_batches(batches, batch_size, accepted_inputs, getattr(model.config, "pad_token_id", None))
    device = _model_device(model)
    per_layer: list[dict[str, list[torch.Tensor]]] = []
    num_skipped = 0
    sequences_seen = 0
    was_training = model.training
    model.eval()
    batch_iterator = _progress(batches, max_batches, progress)
    try:
        with torch.no_grad():
            for batches_done, batch in enumerate(batch_iterator, start=1):
                inputs, real = _prepare_batch(
                    batch, device, model, exclude_special_tokens, special_ids, accepted_inputs
                )
                rows = _batch_size_of(inputs)
                if max_sequences is not None and sequences_seen + rows > max_sequences:
                    rows = max_sequences - sequences_seen
                    inputs = _take_rows(inputs, rows)
                    real = None if real is None else real[:rows]
                sequences_seen += rows
                hidden_states = _hidden_states(model, inputs)
                if not per_layer:
                    per_layer = [{name: [] for name in METRICS} for _ in hidden_states]
                elif len(hidden_states) != len(per_layer):
                    raise ValueError(f"model returned {len(hidden_states)} hidden states, earlier {len(per_layer)}")
                for layer, hidden in enumerate(hidden_states):
                    values = hidden_state_metrics(hidden, _mask_for(real, hidden, exclude_cls))
                    keep = values["num_real_tokens"] >= 2
                    for name in METRICS:
                        per_layer[layer][name].append(values[name][keep].cpu())
                num_skipped += int((~keep).sum())
                if batches_done == max_batches or sequences_seen == max_sequences:
                    break
    finally:
        model.train(was_training)
        if isinstance(batch_iterator, tqdm):
            batch_iterator.close()

    if not per_layer:
        raise ValueError("batches is empty: no sequence was run through the model")
    used = sum(len(chunk) for chunk in per_layer[0][METRICS[0]])
    if used == 0:
        raise ValueError(f"none of the {num_skipped} sequences has two or more real tokens to compare")
    metrics: dict[str, list[float]] = {}
    for name in METRICS:
        stacked = [torch.cat(layer_values[name]) for layer_values in per_layer]
        metrics[name] = [float(values.mean()) for values in stacked]
        metrics[f"{name}_std"] = [float(values.std(correction=0)) for values in stacked]
    config = getattr(model, "config", None)
    return Profile(
        metrics=metrics,
        num_sequences=used,
        num_layers=len(per_layer) - 1,
        num_skipped_sequences=num_skipped,
        model_name=getattr(config, "_name_or_path", None) or None,
        model_class=type(model).__name__,
    )


def _forward_parameter_names(model: torch.nn.Module) -> frozenset[str]:
    parameters = inspect.signature(model.forward).parameters.values()
    return frozenset(p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _is_hf_dataset(batches: Any) -> bool:
    # Duck-typed so that `datasets` stays an optional import.
    return hasattr(batches, "column_names") and hasattr(batches, "iter")


def _dataset_batches(
    dataset: Any, batch_size: int, accepted_inputs: frozenset[str], pad_token_id: int | None
) -> Iterable[dict[str, torch.Tensor]]:
    columns = [name for name in dataset.column_names if name in accepted_inputs and name not in _NON_INPUT_KEYS]
    if not columns:
        raise ValueError(
            f"the dataset has no column the model takes: columns {dataset.column_names}, "
            f"model inputs {sorted(accepted_inputs)}"
        )
    selected = dataset.select_columns(columns)
    num_batches = math.ceil(len(dataset) / batch_size)
    return _SizedIterable((_collate(rows, pad_token_id) for rows in selected.iter(batch_size=batch_size)), num_batches)


class _SizedIterable:
    """A generator that knows its length, so the progress bar can show a total."""

    def __init__(self, items: Iterable[Any], length: int):
        self._items = items
        self._length = length

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return self._length


def _collate(columns: Mapping[str, Any], pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """Tensors from a dataset batch; ragged token columns are right-padded and get an attention mask if missing."""
    batch: dict[str, torch.Tensor] = {}
    lengths = None
    for name, values in columns.items():
        if isinstance(values, torch.Tensor):
            batch[name] = values
            continue
        rows = [torch.as_tensor(np.asarray(row)) for row in values]
        if len({tuple(row.shape) for row in rows}) == 1:
            batch[name] = torch.stack(rows)
            continue
        if any(row.dim() != 1 for row in rows):
            raise ValueError(f"dataset column {name!r} has ragged rows that are not 1-D token sequences")
        pad_value = (pad_token_id or 0) if name == "input_ids" else 0
        batch[name] = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_value)
        lengths = torch.tensor([len(row) for row in rows])
    if lengths is not None and "attention_mask" not in batch:
        width = max(tensor.shape[1] for tensor in batch.values() if tensor.dim() > 1)
        batch["attention_mask"] = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return batch


def _progress(batches: Iterable[Any], max_batches: int | None, progress: bool | None) -> Iterable[Any]:
    try:
        total: int | None = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    if progress is None:
        progress = sys.stderr.isatty() and (total is None or total >= _AUTO_PROGRESS_MIN_BATCHES)
    if not progress:
        return batches
    return tqdm(batches, total=total, desc="over-smoothing profile", unit="batch")


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _prepare_batch(
    batch: Any,
    device: torch.device,
    model: torch.nn.Module,
    exclude_special_tokens: bool,
    special_ids: torch.Tensor | None,
    accepted_inputs: frozenset[str],
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Model inputs on the model's device, and the [batch, tokens] real-token mask when the inputs define one."""
    if not isinstance(batch, Mapping):
        raise ValueError(f"each batch must be a dict of model inputs (what model(**batch) takes), got {type(batch)}")
    model_dtype = getattr(model, "dtype", None)
    inputs: dict[str, Any] = {}
    for name, value in batch.items():
        if name in _NON_INPUT_KEYS:
            continue
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            # Float inputs (pixel_values, inputs_embeds) must match a bf16/fp16 model.
            if value.is_floating_point() and model_dtype is not None and name != "attention_mask":
                value = value.to(model_dtype)
        inputs[name] = value

    attention_mask = inputs.get("attention_mask")
    input_ids = inputs.get("input_ids")
    real = None
    if isinstance(attention_mask, torch.Tensor):
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be [batch, tokens], got shape {tuple(attention_mask.shape)}")
        real = attention_mask.bool()
    elif isinstance(input_ids, torch.Tensor):
        real = torch.ones_like(input_ids, dtype=torch.bool)

    if exclude_special_tokens:
        if not isinstance(input_ids, torch.Tensor) or real is None:
            raise ValueError(
                "exclude_special_tokens needs input_ids in the batch; for image models use exclude_cls=True"
            )
        special_mask = batch.get("special_tokens_mask")
        if isinstance(special_mask, torch.Tensor):
            is_special = special_mask.to(device).bool()
        elif special_ids is not None:
            is_special = torch.isin(input_ids, special_ids.to(device))
        else:
            raise ValueError(
                "exclude_special_tokens=True needs special_token_ids (e.g. tokenizer.all_special_ids) or a "
                "special_tokens_mask in each batch (tokenizer(..., return_special_tokens_mask=True))"
            )
        real = real & ~is_special
    if "use_cache" in accepted_inputs:
        # Decoder models would otherwise build a key/value cache that the metrics never read.
        inputs["use_cache"] = False
    return inputs, real


def _batch_size_of(inputs: Mapping[str, Any]) -> int:
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"the batch has no tensor input to run the model on (keys: {sorted(inputs)})")


def _take_rows(inputs: Mapping[str, Any], rows: int) -> dict[str, Any]:
    size = _batch_size_of(inputs)
    return {
        name: value[:rows] if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size else value
        for name, value in inputs.items()
    }


def _hidden_states(model: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    outputs = model(**inputs, output_hidden_states=True)
    hidden_states = getattr(outputs, "hidden_states", None)
    if hidden_states is None:
        raise ValueError(
            f"{type(model).__name__} returned no hidden_states with output_hidden_states=True; "
            "encoder-decoder outputs (encoder_hidden_states/decoder_hidden_states) are not supported"
        )
    return tuple(hidden_states)


def _mask_for(real: torch.Tensor | None, hidden: torch.Tensor, exclude_cls: bool) -> torch.Tensor:
    batch_size, num_tokens = hidden.shape[:2]
    if real is None:
        real = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=hidden.device)
    elif real.shape != (batch_size, num_tokens):
        raise ValueError(
            f"the input mask has shape {tuple(real.shape)} but the hidden states have {num_tokens} tokens; "
            "models that add or drop tokens are not supported"
        )
    if exclude_cls:
        real = real.clone()
        real[:, 0] = False
    return real


# --------------------------------------------------------------------------------------------------------------------
# Plots


def plot_profiles(
    profiles: Sequence[Profile] | Mapping[str, Profile],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """One PNG comparing models: a panel per main metric against the layer, one curve (±std band) per profile.

    ``profiles`` is a list (legend from ``labels`` or each profile's model name) or a ``{label: profile}`` dict.
    """
    # The object-oriented Figure API renders without pyplot, so the caller's backend (e.g. a notebook's) is untouched.
    from matplotlib.figure import Figure

    if isinstance(profiles, Mapping):
        if labels is not None:
            raise ValueError("pass labels either as the keys of a profiles dict or as labels=, not both")
        labels, profiles = list(profiles.keys()), list(profiles.values())
    profiles = list(profiles)
    if not profiles:
        raise ValueError("plot_profiles needs at least one profile")
    labels = [profile.label for profile in profiles] if labels is None else list(labels)
    if len(labels) != len(profiles):
        raise ValueError(f"got {len(labels)} labels for {len(profiles)} profiles")

    figure = Figure(figsize=(4.2 * len(MAIN_METRICS), 3.6), layout="constrained")
    axes = figure.subplots(1, len(MAIN_METRICS))
    for axis, metric in zip(axes, MAIN_METRICS, strict=True):
        for profile, label in zip(profiles, labels, strict=True):
            layers = np.arange(profile.num_layers + 1)
            mean = np.asarray(profile.metrics[metric])
            std = np.asarray(profile.metrics[f"{metric}_std"])
            (line,) = axis.plot(layers, mean, marker="o", markersize=3, label=label)
            axis.fill_between(layers, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        axis.set_title(METRIC_TITLES[metric])
        axis.set_xlabel("layer (0 = embeddings)")
        axis.grid(alpha=0.3)
    if len(profiles) > 1:
        axes[0].legend(fontsize="small")
    elif title is None:  # one curve: its label is the title (a legend box would cover the first panel)
        title = labels[0]
    if title:
        figure.suptitle(title)
    figure.savefig(path, format="png", dpi=120)


# --------------------------------------------------------------------------------------------------------------------
# Group distance ratio


def group_distance_ratio(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, mode: str = "dgn_ref", eps: float = 1e-5
) -> float:
    r"""DGN's group distance ratio: mean inter-class over mean intra-class distance (larger = better separated).

    ``x`` is ``[N, d]`` (tokens, patches or pooled samples), ``y`` the ``N`` class labels. Classes are the labels
    present in ``y``. Computed in float64. Three variants, which give different numbers:

    * ``"dgn_ref"``: as the DGN authors' ``trainer.dis_cluster`` (Kaixiong-Zhou/DGN). Rows L2-normalised first
      (a zero row's squared norm is replaced by 1e-3), **squared** Euclidean distances; intra = mean over classes of
      the mean over all ordered pairs of the class, self-pairs included; inter = mean over the :math:`C(C-1)/2`
      unordered class pairs of the mean distance between them; ratio = inter / intra, and 1 where it is NaN
      (both distances 0). ``eps`` is not used.
    * ``"pyg"``: as PyG's ``DiffGroupNorm.group_distance_ratio``. Plain Euclidean distances; numerator
      :math:`\frac{1}{(C-1)^2}\sum_i \mathrm{mean}_{x\in X_i, x'\notin X_i}\|x-x'\|` (each class against all other
      classes pooled), denominator :math:`\frac1C\sum_i\mathrm{mean}_{x,x'\in X_i}\|x-x'\|`; ratio = num / (den + eps).
    * ``"formula"``: the paper's formula, :math:`\frac{1}{(C-1)^2}\sum_{i\ne j}\mathrm{mean}_{x\in X_i,x'\in X_j}
      \|x-x'\|` over :math:`\frac1C\sum_i\mathrm{mean}_{x,x'\in X_i}\|x-x'\|`, Euclidean, ratio = num / (den + eps).
    """
    if mode not in GROUP_DISTANCE_MODES:
        raise ValueError(f"mode must be one of {GROUP_DISTANCE_MODES}, got {mode!r}")
    points = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y))
    if points.dim() != 2:
        raise ValueError(f"x must be [N, d], got shape {tuple(points.shape)}")
    if labels.shape != (points.shape[0],):
        raise ValueError(f"y must hold one label per row of x ({points.shape[0]}), got shape {tuple(labels.shape)}")
    classes = labels.unique()
    if len(classes) < 2:
        raise ValueError(f"group_distance_ratio needs at least two classes, y has {len(classes)}")
    groups = [points[labels == label] for label in classes]
    num_classes = len(groups)

    if mode == "dgn_ref":
        squared_norms = points.pow(2).sum(dim=1, keepdim=True)
        normalised = points / torch.where(squared_norms == 0, 1e-3, squared_norms).sqrt()
        groups = [normalised[labels == label] for label in classes]
        intra = sum(_squared_distances(g, g).mean() for g in groups) / num_classes
        inter = sum(
            _squared_distances(groups[i], groups[j]).mean()
            for i in range(num_classes)
            for j in range(i + 1, num_classes)
        ) / (num_classes * (num_classes - 1) / 2)
        ratio = float(inter / intra)
        return 1.0 if math.isnan(ratio) else ratio

    intra = sum(_distances(g, g).mean() for g in groups) / num_classes
    if mode == "pyg":
        inter = sum(_distances(points[labels == label], points[labels != label]).mean() for label in classes)
    else:
        inter = sum(
            _distances(groups[i], groups[j]).mean() for i in range(num_classes) for j in range(num_classes) if i != j
        )
    return float(inter / (num_classes - 1) ** 2 / (intra + eps))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The reference's expansion ‖a‖² + ‖b‖² − 2ab, kept (without clamping) so that values match it.
    return a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1, keepdim=True).T - 2 * a @ b.T


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Direct differences: the matrix-product shortcut leaves ~1e-8 on the zero self-distances.
    return torch.cdist(a.unsqueeze(0), b.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
