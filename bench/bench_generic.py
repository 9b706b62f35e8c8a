"""Benchmark of the generic path (`hf_centered.correct`) against the stock model of the same family, and on BERT
against the dedicated `CenteredBertModel`.

For each family (a small random model: 4 layers, width 256, 8 heads; batch 4 of 320 tokens, the second half of one
sequence padded) and each correction, one training step (forward and backward) of the stock model and of the
corrected one run back to back, in alternating order, on the same weights and batch. Reported per case:

- saved for backward: the bytes of the distinct tensors autograd keeps, ours / stock (deterministic), and the part of
  them shaped (queries × keys), ours / stock (1.000: the corrections keep no attention-sized tensor of their own);
- time: the median over the rounds of the per-round ratio ours / stock, with its min–max.

    PYTHONPATH=. python bench/bench_generic.py            # 3 rounds of 2 steps
    PYTHONPATH=. python bench/bench_generic.py --quick    # 2 rounds of 1 step, 128 tokens
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import transformers
from torch import nn

import hf_centered
from hf_centered.corrections import available_corrections
from hf_centered.reporting import machine_description

SIZES = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1024)
FAMILIES = {
    "bert": ("BertConfig", {}),
    "roberta": ("RobertaConfig", dict(pad_token_id=0)),
    "modernbert": ("ModernBertConfig", dict(local_attention=64, global_attn_every_n_layers=2, pad_token_id=0)),
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, pad_token_id=0)),
    "gpt2": ("GPT2Config", {}),
    "vit": ("ViTConfig", dict(image_size=256, patch_size=16)),
}
DECODERS = ("llama", "gpt2")
CORRECTIONS = [name for name in available_corrections() if name != "none"]


def stock_model(family: str, seq_len: int) -> nn.Module:
    config_name, fields = FAMILIES[family]
    sizes = dict(SIZES)
    if family == "gpt2":
        sizes = dict(n_embd=256, n_layer=4, n_head=8, n_inner=1024)
    if family != "vit":
        fields = dict(fields, vocab_size=1000, max_position_embeddings=seq_len + 2)
    config = getattr(transformers, config_name)(**sizes, **fields)
    config.attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    return without_dropout(model).train()


def without_dropout(model: nn.Module) -> nn.Module:
    """Dropout off (its masks are not the corrections' cost, and the attention's sends SDPA to its unfused kernel)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def batch_of(family: str, seq_len: int) -> dict[str, torch.Tensor]:
    if family == "vit":
        return {"pixel_values": torch.randn(4, 3, 256, 256)}
    attention_mask = torch.ones(4, seq_len, dtype=torch.long)
    attention_mask[1, seq_len // 2 :] = 0
    if family in DECODERS:
        attention_mask = attention_mask.flip(-1)  # decoders pad on the left
    return {"input_ids": torch.randint(1, 1000, (4, seq_len)), "attention_mask": attention_mask}


def saved_bytes(model: nn.Module, batch: dict[str, torch.Tensor], num_tokens: int) -> tuple[int, int]:
    """(all bytes, bytes of (queries × keys) tensors) that one forward keeps for backward, distinct storages."""
    saved: dict[tuple, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)), tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch).last_hidden_state.sum()
    sizes = [(t.numel() * t.element_size(), t.dim() >= 2 and t.shape[-2:] == (num_tokens,) * 2) for t in saved.values()]
    return sum(size for size, _ in sizes), sum(size for size, square in sizes if square)


def step_seconds(model: nn.Module, batch: dict[str, torch.Tensor], steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        model(**batch).last_hidden_state.square().mean().backward()
        model.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


def compare(stock: nn.Module, ours: nn.Module, batch: dict, rounds: int, steps: int, num_tokens: int) -> dict:
    step_seconds(stock, batch, 1), step_seconds(ours, batch, 1)  # warm-up
    ratios = []
    for index in range(rounds):
        order = (stock, ours) if index % 2 == 0 else (ours, stock)
        seconds = {id(model): step_seconds(model, batch, steps) for model in order}
        ratios.append(seconds[id(ours)] / seconds[id(stock)])
    stock_bytes, stock_square = saved_bytes(stock, batch, num_tokens)
    our_bytes, our_square = saved_bytes(ours, batch, num_tokens)
    return {
        "saved": our_bytes / stock_bytes,
        "square": our_square / stock_square if stock_square else float(our_square == 0),
        "time": statistics.median(ratios),
        "time_min": min(ratios),
        "time_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 step at 128 tokens")
    args = parser.parse_args()
    rounds, steps, seq_len = (2, 1, 128) if args.quick else (3, 2, 320)  # never the width: (n, n) must mean (q × k)
    print(machine_description())
    print(
        f"one training step, batch 4 × {seq_len} tokens (ViT: 256 patches + [CLS]), 4 layers, width 256; "
        f"{rounds} rounds of {steps} step(s)"
    )
    print("| family | correction | saved for backward ours/stock | (q × k) part ours/stock | time ours/stock |")
    print("|---|---|---:|---:|---:|")
    for family in FAMILIES:
        stock = stock_model(family, seq_len)
        batch = batch_of(family, seq_len)
        num_tokens = 257 if family == "vit" else seq_len
        for correction in CORRECTIONS:
            ours = hf_centered.correct(copy.deepcopy(stock), correction=correction).train()
            result = compare(stock, ours, batch, rounds, steps, num_tokens)
            print(
                f"| {family} | {correction} | {result['saved']:.3f} | {result['square']:.3f} | "
                f"{result['time']:.2f} ({result['time_min']:.2f}–{result['time_max']:.2f}) |",
                flush=True,
            )
        if family == "bert":  # the generic path against the dedicated class, same weights
            for correction in CORRECTIONS:
                ours = hf_centered.correct(copy.deepcopy(stock), correction=correction).train()
                config = hf_centered.CenteredBertConfig(**{**stock.config.to_dict(), "correction": correction})
                dedicated = without_dropout(hf_centered.CenteredBertModel(config)).train()
                renamed = {
                    name.replace(".output_corrections.", ".corrections.").replace(
                        ".norm_corrections.", ".attention.output.corrections."
                    ): value
                    for name, value in ours.state_dict().items()
                }
                dedicated.load_state_dict(renamed)
                result = compare(dedicated, ours, batch, rounds, steps, num_tokens)
                print(
                    f"| bert: generic / dedicated | {correction} | {result['saved']:.3f} | {result['square']:.3f} | "
                    f"{result['time']:.2f} ({result['time_min']:.2f}–{result['time_max']:.2f}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
