"""Tiny odd-sized configurations, inputs and registries shared by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import hf_centered
from hf_centered import CenteredBertConfig, CenteredViTConfig

CORRECTIONS = [name for name in hf_centered.available_corrections() if name != "none"]
FUSIONS = hf_centered.available_fusions()
ALL_CORRECTIONS = list(CORRECTIONS)

BERT_SIZES = dict(
    vocab_size=99,
    hidden_size=36,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
)
VIT_SIZES = dict(
    image_size=10,
    patch_size=2,
    num_channels=3,
    hidden_size=36,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
)
# A ViT for the 8×8 one-channel digits, small enough for a few training steps in a test.
TINY_DIGITS_VIT = dict(
    image_size=8,
    patch_size=4,
    num_channels=1,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=20,
)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Strengths large enough for every correction to change the outputs visibly.
STRONG = dict(
    centered_scale=0.7, neutreno_lambda=0.6, contranorm_scale=0.3, contranorm_tau=0.7, dgn_groups=3, dgn_lambda=0.5
)


def save_tiny_pretrained_bert(folder: Path, tokenizer, **config_fields) -> Path:
    """A seeded tiny stock `BertModel` (a 2-layer, 4-head default size; `config_fields` override it) saved to `folder`
    with `tokenizer`, its vocabulary size taken from the tokenizer: the "pretrained checkpoint" of fine-tuning tests."""
    from transformers import BertConfig, BertModel

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    sizes.update(max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer.get_vocab()), **{**sizes, **config_fields})).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bert_config(**overrides) -> CenteredBertConfig:
    return CenteredBertConfig(**{**BERT_SIZES, **NO_DROPOUT, **STRONG, "num_labels": 3, **overrides})


def vit_config(**overrides) -> CenteredViTConfig:
    return CenteredViTConfig(**{**VIT_SIZES, **NO_DROPOUT, **STRONG, "num_labels": 3, **overrides})


def bert_inputs(batch_size: int = 3, seq_len: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch: row 0 full, the others shorter (lengths 7, 4, 2, ...)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, BERT_SIZES["vocab_size"], (batch_size, seq_len), generator=generator)
    lengths = [seq_len] + [max(2, seq_len - 3 * i) for i in range(1, batch_size)]
    attention_mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    input_ids = input_ids * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def vit_inputs(batch_size: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = VIT_SIZES["image_size"]
    return {"pixel_values": torch.randn(batch_size, VIT_SIZES["num_channels"], size, size, generator=generator)}


def pad_more(inputs: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """The same batch with `extra` more padding positions (arbitrary token ids there)."""
    batch_size = inputs["input_ids"].shape[0]
    filler = torch.full((batch_size, extra), 7, dtype=torch.long)
    return {
        "input_ids": torch.cat([inputs["input_ids"], filler], dim=1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.zeros_like(filler)], dim=1),
    }


def max_real_token_diff(first: torch.Tensor, second: torch.Tensor, attention_mask: torch.Tensor) -> float:
    seq_len = attention_mask.shape[1]
    real = attention_mask.bool()
    return (first[:, :seq_len][real] - second[:, :seq_len][real]).abs().max().item()


def stock_config(config):
    """The stock BertConfig / ViTConfig with the same sizes as one of ours (for the stock twin of a model)."""
    from transformers import BertConfig, ViTConfig

    stock_class = BertConfig if isinstance(config, CenteredBertConfig) else ViTConfig
    fields = {k: v for k, v in config.to_dict().items() if k in stock_class().to_dict() and k != "model_type"}
    return stock_class(**fields)


def run_without_the_package(tmp_path: Path, script: str, *args: str) -> dict:
    """Runs `script` in a fresh process where hf_centered cannot be imported (what a Hub user without the package
    has); returns its last line of output, parsed as JSON."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    prelude = 'import sys\nsys.modules["hf_centered"] = None  # an editable install would otherwise stay importable\n'
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    # test_transformers_suite.py keeps transformers' own test suite in pytest's cache between runs (`--cache-clear`
    # drops it); without the cache plugin (`-p no:cacheprovider`) it uses a temporary folder.
    if getattr(config, "cache", None) is not None:
        os.environ.setdefault("HF_CENTERED_TRANSFORMERS_TESTS", str(config.cache.mkdir("transformers-tests")))
    # The marks transformers' own conftest registers that its test_modeling_common.py uses.
    for mark in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' test suite")
