"""Benchmark of ``oversmoothing_profile`` against the bare forward pass it needs anyway.

A randomly initialised BERT-base (12 layers, hidden 768, 12 heads, intermediate 3072) runs over random 128-token
sequences, once without padding and once with random lengths padded to 128. For every batch the bare forward
(``output_hidden_states=True``) and the full profile call are timed back to back, in alternating order, so both see the
same machine state. Reported: total profile seconds, sequences per second, and the profile / forward time ratio
(total, and median with min–max over the per-batch ratios of all repeats), plus the share of the metrics alone.

    PYTHONPATH=. python bench/bench_diagnostics.py            # 1000 sequences
    PYTHONPATH=. python bench/bench_diagnostics.py --quick    # 64 sequences, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

from hf_centered.diagnostics import hidden_state_metrics, oversmoothing_profile

QUICK_SEQUENCES = 64
QUICK_REPEATS = 3
MIN_PADDED_LENGTH = 32


def build_batches(num_sequences: int, batch_size: int, length: int, padded: bool, vocab_size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, num_sequences, batch_size):
        rows = min(batch_size, num_sequences - start)
        input_ids = torch.randint(1, vocab_size, (rows, length), generator=generator)
        if padded:
            lengths = torch.randint(MIN_PADDED_LENGTH, length + 1, (rows,), generator=generator)
            attention_mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
            input_ids = input_ids.masked_fill(attention_mask == 0, 0)
        else:
            attention_mask = torch.ones(rows, length, dtype=torch.long)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return batches


def timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def bench_variant(model: BertModel, batches: list[dict], repeats: int) -> dict:
    def forward(batch: dict) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return model(**batch, output_hidden_states=True).hidden_states

    def profile(batch: dict) -> None:
        oversmoothing_profile(model, [batch], progress=False)

    def metrics_only(hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> None:
        for hidden in hidden_states:
            hidden_state_metrics(hidden, mask)

    profile(batches[0])  # warm-up (allocator, kernels)
    forward_seconds, profile_seconds, metric_seconds, ratios = [], [], [], []
    for repeat in range(repeats):
        forward_total = profile_total = metric_total = 0.0
        for index, batch in enumerate(batches):
            if (index + repeat) % 2 == 0:
                forward_time, hidden_states = timed(forward, batch)
                profile_time, _ = timed(profile, batch)
            else:
                profile_time, _ = timed(profile, batch)
                forward_time, hidden_states = timed(forward, batch)
            metric_time, _ = timed(metrics_only, hidden_states, batch["attention_mask"])
            del hidden_states
            metric_total += metric_time
            forward_total += forward_time
            profile_total += profile_time
            ratios.append(profile_time / forward_time)
        forward_seconds.append(forward_total)
        profile_seconds.append(profile_total)
        metric_seconds.append(metric_total)
    num_sequences = sum(len(batch["input_ids"]) for batch in batches)
    profile_median = statistics.median(profile_seconds)
    return {
        "sequences": num_sequences,
        "batches": len(batches),
        "repeats": repeats,
        "profile_seconds": profile_median,
        "forward_seconds": statistics.median(forward_seconds),
        "metrics_seconds": statistics.median(metric_seconds),
        "sequences_per_second": num_sequences / profile_median,
        "ratio_total": statistics.median(p / f for p, f in zip(profile_seconds, forward_seconds, strict=True)),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-sequences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=1, help="passes over all batches")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEQUENCES} sequences, {QUICK_REPEATS} repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.num_sequences, args.repeats = QUICK_SEQUENCES, QUICK_REPEATS

    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    model = BertModel(config).eval()
    print(
        f"BERT-base (random init), {args.num_sequences} sequences × {args.length} tokens, batch {args.batch_size}, "
        f"{args.repeats} repeat(s), {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    results = {}
    for variant, padded in (("no padding", False), ("padding", True)):
        batches = build_batches(args.num_sequences, args.batch_size, args.length, padded, config.vocab_size)
        result = bench_variant(model, batches, args.repeats)
        results[variant] = result
        print(
            f"{variant:>10}: profile {result['profile_seconds']:.1f} s ({result['sequences_per_second']:.1f} seq/s), "
            f"bare forward {result['forward_seconds']:.1f} s, metrics alone {result['metrics_seconds']:.2f} s; "
            f"profile/forward {result['ratio_total']:.3f} (per batch: median {result['ratio_median']:.3f}, "
            f"min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
