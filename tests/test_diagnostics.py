"""Over-smoothing diagnostics: known answers, agreement with naive formulas, models, plots and the CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from hf_centered.data import minilm_dir
from hf_centered.diagnose_cli import main as diagnose_main
from hf_centered.diagnostics import (
    MAIN_METRICS,
    METRICS,
    Profile,
    group_distance_ratio,
    hidden_state_metrics,
    oversmoothing_profile,
    plot_profiles,
)
from hf_centered.tasks import TASKS

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLS_ID, SEP_ID, PAD_ID = 2, 3, 0


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)
    return BertModel(config).eval()


def tiny_vit_config() -> ViTConfig:
    return ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
    )


def tiny_gpt2() -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64)).eval()


def token_sequences(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """[CLS] w1 .. wk [SEP] with random word ids that avoid the special ids."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.cat(
            [torch.tensor([CLS_ID]), torch.randint(4, 99, (length - 2,), generator=generator), torch.tensor([SEP_ID])]
        )
        for length in lengths
    ]


def padded_batch(sequences: list[torch.Tensor], extra_padding: int = 0) -> dict[str, torch.Tensor]:
    width = max(len(sequence) for sequence in sequences) + extra_padding
    input_ids = torch.full((len(sequences), width), PAD_ID)
    attention_mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# --------------------------------------------------------------------------------------------------------------------
# Naive reference implementations (n×n matrices, full SVD, explicit norms)


def naive_effective_rank(matrix: np.ndarray) -> float:
    singular_values = np.linalg.svd(matrix, compute_uv=False)
    if singular_values.sum() == 0:
        return 0.0
    p = singular_values / singular_values.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def naive_metrics(tokens: np.ndarray) -> dict[str, float]:
    n = len(tokens)
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    cosine = unit @ unit.T
    centered = tokens - tokens.mean(axis=0)

    def norm_1_inf(a: np.ndarray) -> float:
        return math.sqrt(np.abs(a).sum(axis=0).max() * np.abs(a).sum(axis=1).max())

    return {
        "cosine_similarity": float(cosine[~np.eye(n, dtype=bool)].mean()),
        "effective_rank": naive_effective_rank(tokens),
        "effective_rank_centered": naive_effective_rank(centered),
        "rank_collapse_residual": norm_1_inf(centered) / norm_1_inf(tokens),
        "rank_collapse_residual_fro": float(np.linalg.norm(centered) / np.linalg.norm(tokens)),
    }


def metrics_of(tokens: np.ndarray | torch.Tensor) -> dict[str, float]:
    values = hidden_state_metrics(torch.as_tensor(tokens).unsqueeze(0))
    return {name: float(values[name][0]) for name in METRICS}


# --------------------------------------------------------------------------------------------------------------------
# Known answers


def test_identical_tokens_are_fully_collapsed():
    tokens = torch.randn(1, 24).repeat(10, 1)
    values = metrics_of(tokens)
    assert values["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert values["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert values["effective_rank_centered"] == 0.0
    assert values["rank_collapse_residual"] == pytest.approx(0.0, abs=1e-6)
    assert values["rank_collapse_residual_fro"] == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_tokens_against_closed_forms():
    n, d = 5, 9
    norms = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    tokens = np.zeros((n, d))
    tokens[np.arange(n), np.arange(n)] = norms
    values = metrics_of(tokens)
    assert values["cosine_similarity"] == pytest.approx(0.0, abs=1e-12)
    # The singular values of mutually orthogonal rows are their norms.
    p = norms / norms.sum()
    assert values["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)

    identity = metrics_of(np.eye(n))
    assert identity["effective_rank"] == pytest.approx(n, rel=1e-12)
    # I - 11ᵀ/n: every row and column has abs-sum 2(n-1)/n; its squared Frobenius norm is n-1.
    assert identity["rank_collapse_residual"] == pytest.approx(2 * (n - 1) / n, rel=1e-12)
    assert identity["rank_collapse_residual_fro"] == pytest.approx(math.sqrt((n - 1) / n), rel=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_rank_k_matrix_effective_rank(rank):
    rng = np.random.default_rng(rank)
    tokens = rng.normal(size=(20, rank)) @ rng.normal(size=(rank, 30))
    values = metrics_of(tokens)
    assert 1.0 <= values["effective_rank"] <= rank + 1e-9
    assert values["effective_rank"] == pytest.approx(naive_effective_rank(tokens), rel=1e-9)
    assert values["effective_rank_centered"] == pytest.approx(
        naive_effective_rank(tokens - tokens.mean(axis=0)), rel=1e-9
    )


def test_all_zero_matrix_is_defined():
    values = metrics_of(torch.zeros(6, 8))
    assert values == {
        "cosine_similarity": 0.0,
        "effective_rank": 0.0,
        "effective_rank_centered": 0.0,
        "rank_collapse_residual": 0.0,
        "rank_collapse_residual_fro": 0.0,
    }


@pytest.mark.parametrize(("num_tokens", "num_features"), [(9, 32), (40, 12)])
def test_metrics_match_naive_implementation_with_padding(num_tokens, num_features):
    rng = np.random.default_rng(num_tokens)
    lengths = [num_tokens, num_tokens - 3, 2, 1, 5]
    hidden = rng.normal(size=(len(lengths), num_tokens, num_features)).astype(np.float32) + 0.3
    mask = np.arange(num_tokens)[None, :] < np.array(lengths)[:, None]
    # Padded positions hold garbage that must not leak into any metric.
    garbage = hidden.copy()
    garbage[~mask] = np.nan
    values = hidden_state_metrics(torch.from_numpy(garbage), torch.from_numpy(mask))
    for row, length in enumerate(lengths):
        if length < 2:
            assert all(math.isnan(float(values[name][row])) for name in METRICS)
            continue
        expected = naive_metrics(hidden[row, :length].astype(np.float64))
        for name in METRICS:
            assert float(values[name][row]) == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


def test_zero_token_counts_as_dissimilar():
    tokens = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # Pairs: (a, b) = 1, (a, 0) = 0, (b, 0) = 0.
    assert metrics_of(tokens)["cosine_similarity"] == pytest.approx(1 / 3)


def test_hidden_state_metrics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch, tokens, features"):
        hidden_state_metrics(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        hidden_state_metrics(torch.zeros(2, 3, 4), torch.ones(2, 4))


# --------------------------------------------------------------------------------------------------------------------
# Profiles of models


def test_profile_of_bert_and_training_mode_restored():
    model = tiny_bert().train()
    batch = padded_batch(token_sequences([7, 5, 9]))
    profile = oversmoothing_profile(model, [batch, {**batch, "labels": torch.zeros(3)}])
    assert model.training
    assert profile.num_layers == 3 and profile.num_sequences == 6 and profile.num_skipped_sequences == 0
    assert profile.model_class == "BertModel"
    for name in METRICS:
        assert len(profile.metrics[name]) == len(profile.metrics[f"{name}_std"]) == 4
        assert all(math.isfinite(value) for value in profile.metrics[name])
    assert all(-1 <= value <= 1 for value in profile.metrics["cosine_similarity"])
    assert all(1 <= value <= 9 for value in profile.metrics["effective_rank"])


def test_profile_equals_mean_of_hidden_state_metrics():
    model = tiny_bert()
    batch = padded_batch(token_sequences([6, 9, 4]))
    profile = oversmoothing_profile(model, [batch])
    assert oversmoothing_profile(model, batch).metrics == profile.metrics  # a single dict is one batch
    with torch.no_grad():
        hidden_states = model(**batch, output_hidden_states=True).hidden_states
    for layer, hidden in enumerate(hidden_states):
        values = hidden_state_metrics(hidden, batch["attention_mask"])
        for name in METRICS:
            assert profile.metrics[name][layer] == pytest.approx(float(values[name].mean()), rel=1e-12)
            assert profile.metrics[f"{name}_std"][layer] == pytest.approx(
                float(values[name].std(correction=0)), rel=1e-9, abs=1e-12
            )


def test_profile_is_invariant_to_padding():
    model = tiny_bert()
    sequences = token_sequences([5, 9, 3, 7])
    one_by_one = oversmoothing_profile(model, [{"input_ids": sequence[None]} for sequence in sequences])
    padded = oversmoothing_profile(model, [padded_batch(sequences[:3], extra_padding=6), padded_batch(sequences[3:])])
    assert padded.num_sequences == one_by_one.num_sequences == 4
    for name, values in one_by_one.metrics.items():
        np.testing.assert_allclose(padded.metrics[name], values, rtol=1e-5, atol=1e-5, err_msg=name)


def test_special_token_exclusion():
    model = tiny_bert()
    batch = padded_batch(token_sequences([6, 8]))
    with torch.no_grad():
        hidden_states = model(**batch, output_hidden_states=True).hidden_states
    words_only = batch["attention_mask"].bool() & (batch["input_ids"] != CLS_ID) & (batch["input_ids"] != SEP_ID)
    by_ids = oversmoothing_profile(model, [batch], exclude_special_tokens=True, special_token_ids=[CLS_ID, SEP_ID])
    by_mask = oversmoothing_profile(
        model,
        [{**batch, "special_tokens_mask": ~words_only & batch["attention_mask"].bool()}],
        exclude_special_tokens=True,
    )
    with_specials = oversmoothing_profile(model, [batch])
    for layer, hidden in enumerate(hidden_states):
        expected = float(hidden_state_metrics(hidden, words_only)["cosine_similarity"].mean())
        assert by_ids.metrics["cosine_similarity"][layer] == pytest.approx(expected, rel=1e-12)
        assert by_mask.metrics["cosine_similarity"][layer] == pytest.approx(expected, rel=1e-12)
    assert by_ids.metrics["effective_rank"] != with_specials.metrics["effective_rank"]
    with pytest.raises(ValueError, match="special_token_ids"):
        oversmoothing_profile(model, [batch], exclude_special_tokens=True)


def test_profile_of_vit_with_and_without_cls():
    torch.manual_seed(0)
    model = ViTModel(tiny_vit_config()).eval()
    pixel_values = torch.randn(5, 1, 8, 8)
    profile = oversmoothing_profile(model, [{"pixel_values": pixel_values}])
    without_cls = oversmoothing_profile(model, [{"pixel_values": pixel_values}], exclude_cls=True)
    assert profile.num_layers == 2 and profile.num_sequences == 5
    with torch.no_grad():
        last = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1]
    expected = hidden_state_metrics(last[:, 1:])["effective_rank"].mean()
    assert without_cls.metrics["effective_rank"][-1] == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match="exclude_cls"):
        oversmoothing_profile(model, [{"pixel_values": pixel_values}], exclude_special_tokens=True)


def test_profile_of_gpt2_with_left_padding():
    model = tiny_gpt2()
    sequences = token_sequences([6, 4], seed=3)
    input_ids = torch.zeros(2, 6, dtype=torch.long)
    attention_mask = torch.zeros(2, 6, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, 6 - len(sequence) :] = sequence
        attention_mask[row, 6 - len(sequence) :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    profile = oversmoothing_profile(model, [batch])
    assert profile.num_layers == 2 and profile.num_sequences == 2
    assert_profile_matches_naive(profile, model, batch, rel=1e-4)


def assert_profile_matches_naive(profile: Profile, model, batch: dict[str, torch.Tensor], rel: float) -> None:
    """Every layer's metrics equal the mean over sequences of `naive_metrics` on the real tokens, in float64."""
    with torch.no_grad():
        hidden_states = model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    for layer, hidden in enumerate(hidden_states):
        per_sequence = [naive_metrics(hidden[row][real[row]].double().numpy()) for row in range(len(hidden))]
        for name in METRICS:
            expected = float(np.mean([values[name] for values in per_sequence]))
            assert profile.metrics[name][layer] == pytest.approx(expected, rel=rel, abs=1e-6), (layer, name)


def test_bf16_model_is_measured_in_full_precision():
    model = tiny_bert().to(torch.bfloat16)
    batch = padded_batch(token_sequences([7, 4, 9]))
    profile = oversmoothing_profile(model, [batch])
    assert_profile_matches_naive(profile, model, batch, rel=1e-4)  # bf16 maths would be off by ~1e-2


def test_dataset_and_dataloader_inputs():
    import datasets

    model = tiny_bert()
    sequences = token_sequences([5, 8, 3, 6, 7])
    expected = oversmoothing_profile(
        model, [padded_batch(sequences[:2]), padded_batch(sequences[2:4]), padded_batch(sequences[4:])]
    )
    dataset = datasets.Dataset.from_dict(
        {"input_ids": [s.tolist() for s in sequences], "label": [0, 1, 0, 1, 0], "text": ["a"] * 5}
    )
    from_dataset = oversmoothing_profile(model, dataset, batch_size=2)
    for name, values in expected.metrics.items():
        np.testing.assert_allclose(from_dataset.metrics[name], values, rtol=1e-5, atol=1e-6, err_msg=name)

    same_length = [{"input_ids": s, "labels": torch.tensor(0)} for s in token_sequences([6] * 5)]
    loader = torch.utils.data.DataLoader(same_length, batch_size=2)
    from_loader = oversmoothing_profile(model, loader)
    from_dicts = oversmoothing_profile(model, [{"input_ids": torch.stack([d["input_ids"] for d in same_length])}])
    np.testing.assert_allclose(from_loader.metrics["effective_rank"], from_dicts.metrics["effective_rank"], rtol=1e-5)


def test_limits_and_skipped_sequences():
    model = tiny_bert()
    sequences = token_sequences([5, 6, 7, 8, 4, 5, 6, 7, 9, 3])
    batches = [padded_batch(sequences[start : start + 4]) for start in range(0, 10, 4)]
    assert oversmoothing_profile(model, batches, max_batches=2).num_sequences == 8
    limited = oversmoothing_profile(model, batches, max_sequences=6)
    first_six = oversmoothing_profile(model, [padded_batch(sequences[:4]), padded_batch(sequences[4:6])])
    assert limited.num_sequences == 6
    np.testing.assert_allclose(limited.metrics["cosine_similarity"], first_six.metrics["cosine_similarity"], rtol=1e-5)

    with_single_token = padded_batch([sequences[0], torch.tensor([CLS_ID])])
    profile = oversmoothing_profile(model, [with_single_token])
    assert (profile.num_sequences, profile.num_skipped_sequences) == (1, 1)


def test_bad_inputs_raise_clear_errors():
    model = tiny_bert()
    with pytest.raises(ValueError, match="empty"):
        oversmoothing_profile(model, [])
    with pytest.raises(ValueError, match="dict of model inputs"):
        oversmoothing_profile(model, [(torch.zeros(1, 3, dtype=torch.long),)])
    with pytest.raises(ValueError, match="max_sequences"):
        oversmoothing_profile(model, [], max_sequences=0)
    with pytest.raises(ValueError, match="two or more real tokens"):
        oversmoothing_profile(model, [{"input_ids": torch.tensor([[CLS_ID]])}])


# --------------------------------------------------------------------------------------------------------------------
# Profile object: JSON, tables, plots


@pytest.fixture(scope="module")
def two_profiles() -> tuple[Profile, Profile]:
    model = tiny_bert()
    batch = padded_batch(token_sequences([6, 8, 5]))
    torch.manual_seed(1)
    vit = ViTModel(tiny_vit_config()).eval()
    return oversmoothing_profile(model, [batch]), oversmoothing_profile(
        vit, [{"pixel_values": torch.randn(4, 1, 8, 8)}]
    )


def test_json_round_trip(tmp_path, two_profiles):
    profile = two_profiles[0]
    profile.dataset = "toy"
    path = tmp_path / "profile.json"
    profile.save_json(path)
    data = json.loads(path.read_text())
    assert {"cosine_similarity", "effective_rank", "rank_collapse_residual", "num_sequences", "num_layers"} <= set(data)
    assert all(type(value) is float for value in data["effective_rank"])
    assert Profile.load_json(path) == profile


def test_markdown_table(two_profiles):
    table = two_profiles[0].to_markdown_table()
    lines = table.splitlines()
    assert len(lines) == 2 + two_profiles[0].num_layers + 1
    assert lines[0].startswith("| layer |") and "effective rank" in lines[0]
    assert lines[2].startswith("| 0 (embeddings) |")


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    content = path.read_bytes()
    assert content[:8] == PNG_MAGIC
    assert len(content) > min_bytes


def test_profile_plot_writes_png(tmp_path, two_profiles):
    path = tmp_path / "single.png"
    two_profiles[0].plot(path, title="tiny BERT")
    assert_png(path)


def test_plot_profiles_compares_models(tmp_path, two_profiles):
    plot_profiles(list(two_profiles), tmp_path / "list.png", labels=["bert", "vit"], title="comparison")
    plot_profiles(dict(zip(["bert", "vit"], two_profiles, strict=True)), tmp_path / "dict.png")
    assert_png(tmp_path / "list.png")
    assert_png(tmp_path / "dict.png")
    with pytest.raises(ValueError, match="labels"):
        plot_profiles(list(two_profiles), tmp_path / "bad.png", labels=["only one"])


# --------------------------------------------------------------------------------------------------------------------
# Group distance ratio against explicit loops


def loop_group_distance_ratio(x: np.ndarray, y: np.ndarray, mode: str, eps: float = 1e-5) -> float:
    classes = sorted(set(y.tolist()))
    num_classes = len(classes)

    def mean_distance(a: np.ndarray, b: np.ndarray, squared: bool) -> float:
        total = 0.0
        for u, v in itertools.product(a, b):
            distance = float(((u - v) ** 2).sum())
            total += distance if squared else math.sqrt(distance)
        return total / (len(a) * len(b))

    if mode == "dgn_ref":
        squared_norms = (x**2).sum(axis=1, keepdims=True)
        squared_norms[squared_norms == 0] = 1e-3
        x = x / np.sqrt(squared_norms)
        members = {c: x[y == c] for c in classes}
        intra = sum(mean_distance(members[c], members[c], True) for c in classes) / num_classes
        pairs = list(itertools.combinations(classes, 2))
        inter = sum(mean_distance(members[a], members[b], True) for a, b in pairs) / len(pairs)
        return 1.0 if intra == inter == 0 else inter / intra
    members = {c: x[y == c] for c in classes}
    intra = sum(mean_distance(members[c], members[c], False) for c in classes) / num_classes
    if mode == "pyg":
        inter = sum(mean_distance(members[c], x[y != c], False) for c in classes)
    else:
        inter = sum(mean_distance(members[a], members[b], False) for a, b in itertools.permutations(classes, 2))
    return inter / (num_classes - 1) ** 2 / (intra + eps)


@pytest.mark.parametrize("mode", ["dgn_ref", "pyg", "formula"])
def test_group_distance_ratio_matches_loops(mode):
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 2, 2, 5, 5, 5, 5, 0, 2, 5])
    x = rng.normal(size=(len(y), 6)) + 2.0 * y[:, None]
    x[4] = 0.0  # a zero row: the DGN reference replaces its squared norm by 1e-3
    expected = loop_group_distance_ratio(x, y, mode)
    assert group_distance_ratio(torch.tensor(x), torch.tensor(y), mode=mode) == pytest.approx(expected, rel=1e-10)
    assert group_distance_ratio(x, y, mode=mode) == pytest.approx(expected, rel=1e-10)


def test_group_distance_ratio_modes_differ_and_edge_cases():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 4)
    x = rng.normal(size=(12, 3)) + 3.0 * y[:, None]
    values = {mode: group_distance_ratio(x, y, mode=mode) for mode in ("dgn_ref", "pyg", "formula")}
    assert len(set(values.values())) == 3
    assert group_distance_ratio(np.ones((4, 3)), np.array([0, 0, 1, 1]), mode="dgn_ref") == 1.0
    with pytest.raises(ValueError, match="two classes"):
        group_distance_ratio(x, np.zeros(12))
    with pytest.raises(ValueError, match="mode"):
        group_distance_ratio(x, y, mode="other")
    with pytest.raises(ValueError, match="one label per row"):
        group_distance_ratio(x, y[:5])


# --------------------------------------------------------------------------------------------------------------------
# Command line


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_centered.diagnose_cli", "diagnose", *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )


@pytest.mark.parametrize("dataset", TASKS["text-classification"].builtin_datasets)  # finetune.py's text datasets
def test_cli_on_pretrained_minilm(tmp_path, dataset):
    result = run_cli(
        str(minilm_dir()),
        "--dataset",
        dataset,
        "--max-sequences",
        "16",
        "--out",
        str(tmp_path),
        "--labels",
        "minilm",
    )
    assert result.returncode == 0, result.stderr
    profiles = json.loads((tmp_path / "profile.json").read_text())
    assert list(profiles) == ["minilm"]
    minilm = profiles["minilm"]
    assert minilm["num_sequences"] == 16 and minilm["num_layers"] == 6 and minilm["dataset"] == dataset
    for name in METRICS:
        assert len(minilm[name]) == 7
    assert_png(tmp_path / "profile.png")
    assert "effective rank" in result.stdout and "minilm" in result.stdout


def test_cli_on_vit_models_with_digits(tmp_path):
    torch.manual_seed(0)
    config = tiny_vit_config()
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit_plain")
    ViTModel(config).save_pretrained(tmp_path / "vit_processor")
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(
        tmp_path / "vit_processor"
    )
    out = tmp_path / "out"
    result = run_cli(
        str(tmp_path / "vit_plain"),
        str(tmp_path / "vit_processor"),
        "--dataset",
        "digits",
        "--max-sequences",
        "24",
        "--batch-size",
        "10",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    profiles = json.loads((out / "profile.json").read_text())
    assert len(profiles) == 2
    for profile in profiles.values():
        assert profile["num_sequences"] == 24 and profile["num_layers"] == 2
        assert set(MAIN_METRICS) <= set(profile)
    assert_png(out / "profile.png")


def test_cli_bad_input_exits_with_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    torch.manual_seed(0)
    ViTModel(tiny_vit_config()).save_pretrained(tmp_path / "vit")
    cases = {
        "unknown dataset 'imagenet'": ["any", "--dataset", "imagenet"],
        "does not exist": ["any", "--text-file", str(tmp_path / "missing.txt")],
        "no non-empty line": ["any", "--text-file", str(empty)],
        "2 labels for 1 models": ["any", "--dataset", "digits", "--labels", "a", "b"],
        "takes images": [str(tmp_path / "vit"), "--dataset", "rotten_tomatoes", "--max-sequences", "2"],
    }
    for message, arguments in cases.items():
        assert diagnose_main(["diagnose", *arguments, "--out", out]) == 2
        # Other stderr lines are transformers' progress bars when a model gets loaded.
        errors = [line for line in capsys.readouterr().err.splitlines() if "hf-centered diagnose: error:" in line]
        assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_cli_text_file_on_an_exported_checkpoint(tmp_path, trust_remote_code):
    """Our Hub export, read with its own tokenizer from a text file, with or without --trust-remote-code; its learned
    correction strengths come out as a map."""
    from transformers import AutoModel, BertTokenizer

    from hf_centered import CenteredBertConfig, CenteredBertForSequenceClassification, export_for_hub

    words = ["good", "bad", "plot", "film", "slow", "fun", "actor", "the"]
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    config = CenteredBertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        correction=["centered", "contranorm"], fusion="gate", correction_strength="learned",
    )  # fmt: skip
    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab=vocab)
    trained = CenteredBertForSequenceClassification(config)
    with torch.no_grad():  # gates away from 0, as after training
        for name, parameter in trained.named_parameters():
            if "strength_gate" in name:
                parameter.normal_(std=0.01)
    folder = export_for_hub(trained, tmp_path / "exported", tokenizer)
    texts = ["good film", "the plot is slow", "fun actor fun film", "bad"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n\n")
    out = tmp_path / "out"
    argv = ["diagnose", str(folder), "--text-file", str(tmp_path / "texts.txt"), "--batch-size", "3", "--out", str(out)]
    assert diagnose_main(argv + (["--trust-remote-code"] if trust_remote_code else [])) == 0

    (profile,) = json.loads((out / "profile.json").read_text()).values()
    assert profile["num_sequences"] == 4 and profile["num_layers"] == 2
    model = AutoModel.from_pretrained(folder).eval()
    label = "/".join(Path(folder).resolve().parts[-2:])
    assert json.loads((out / "strengths.json").read_text()) == {label: trained.correction_strengths()}
    assert_png(out / "strengths-1.png", min_bytes=2_000)
    assert_profile_matches_naive(
        Profile.from_dict(profile), model, dict(tokenizer(texts, padding=True, return_tensors="pt")), rel=1e-4
    )


@pytest.mark.parametrize("family", ["roberta", "llama", "gpt2"])
def test_cli_on_a_generically_corrected_checkpoint(tmp_path, family):
    """A model of another family corrected through the generic path: its profile and learned strength map. The
    saved tokenizer pads on the left, as a decoder's often does: the texts are still measured right-padded (GPT-2's
    absolute positions would otherwise shift)."""
    import transformers
    from transformers import BertTokenizer

    import hf_centered

    words = ["good", "bad", "plot", "film", "slow", "fun", "actor", "the"]
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    sizes = dict(
        vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    if family == "roberta":
        config, auto_class = transformers.RobertaConfig(**sizes, pad_token_id=0), transformers.AutoModel
    elif family == "llama":
        config, auto_class = transformers.LlamaConfig(**sizes, num_key_value_heads=2), transformers.AutoModelForCausalLM
    else:
        config, auto_class = transformers.GPT2Config(**sizes), transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    model = hf_centered.correct(
        auto_class.from_config(config), correction=["neutreno", "dgn"], correction_strength="learned"
    )
    with torch.no_grad():  # gates away from 0, as after training
        for name, parameter in model.named_parameters():
            if "strength_gate" in name:
                parameter.normal_(std=0.01)
    tokenizer = BertTokenizer(vocab=vocab, padding_side="left")
    folder = hf_centered.export_for_hub(model, tmp_path / "exported", tokenizer)
    texts = ["good film", "the plot is slow", "fun actor fun film", "bad"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    argv = ["diagnose", str(folder), "--text-file", str(tmp_path / "texts.txt"), "--batch-size", "3", "--out", str(out)]
    assert diagnose_main(argv) == 0

    (profile,) = json.loads((out / "profile.json").read_text()).values()
    assert profile["num_sequences"] == 4 and profile["num_layers"] == 2
    label = "/".join(Path(folder).resolve().parts[-2:])
    assert json.loads((out / "strengths.json").read_text()) == {label: model.correction_strengths()}
    right_padded = tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
    assert_profile_matches_naive(Profile.from_dict(profile), model.eval(), dict(right_padded), rel=1e-4)
