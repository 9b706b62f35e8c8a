"""Benchmark of `sparse_prediction` in `CenteredBertForMaskedLM`: a masked-LM training step with the dense head
(every position scored, stock BERT) against the sparse one (only the masked positions), same weights, same batch.

Each size is a randomly initialised BERT with the MiniLM tokenizer's vocabulary (30,522 tokens), trained on random
sequences of which 15 % carry labels. The two heads' steps (forward, backward, AdamW) alternate, so both see the same
machine state. Reported per size: seconds per step of each, and the dense / sparse time ratio (median, with min–max
over the repeats).

    PYTHONPATH=. python bench/bench_sparse_prediction.py            # 10 steps per repeat, 3 repeats
    PYTHONPATH=. python bench/bench_sparse_prediction.py --quick    # 2 steps, 2 repeats, the smallest size
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_centered import CenteredBertConfig, CenteredBertForMaskedLM
from hf_centered.reporting import machine_description

VOCAB_SIZE = 30522
MASKED_SHARE = 0.15
# (layers, hidden size, sequence length, batch size): the masked-LM depth sweep's widths, and MiniLM's.
SIZES = [(2, 128, 64, 32), (8, 128, 64, 32), (6, 384, 128, 32)]


def step_seconds(model: CenteredBertForMaskedLM, optimizer, batch: dict[str, torch.Tensor], steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / steps


def compare(size: tuple[int, int, int, int], steps: int, repeats: int) -> dict[str, float]:
    layers, hidden, length, batch_size = size
    fields = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        max_position_embeddings=length,
        correction="none",
    )
    torch.manual_seed(0)
    dense = CenteredBertForMaskedLM(CenteredBertConfig(**fields))
    sparse = CenteredBertForMaskedLM(CenteredBertConfig(**fields, sparse_prediction=True))
    sparse.load_state_dict(dense.state_dict())
    input_ids = torch.randint(1000, VOCAB_SIZE, (batch_size, length))
    labels = torch.where(torch.rand(batch_size, length) < MASKED_SHARE, input_ids, -100)
    batch = {"input_ids": input_ids, "labels": labels}
    optimizers = {model: torch.optim.AdamW(model.parameters(), lr=1e-4) for model in (dense, sparse)}
    for model in (dense, sparse):  # warm-up: allocator and thread pools
        step_seconds(model, optimizers[model], batch, 1)
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for repeat in range(repeats):
        order = [("dense", dense), ("sparse", sparse)]
        for name, model in order if repeat % 2 == 0 else reversed(order):
            times[name].append(step_seconds(model, optimizers[model], batch, steps))
    ratios = [d / s for d, s in zip(times["dense"], times["sparse"], strict=True)]
    return {
        "dense_s": statistics.median(times["dense"]),
        "sparse_s": statistics.median(times["sparse"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 steps, 2 repeats, the smallest size")
    args = parser.parse_args()
    steps, repeats, sizes = (2, 2, SIZES[:1]) if args.quick else (10, 3, SIZES)
    print(machine_description())
    print("layers hidden length batch   dense s/step  sparse s/step  dense/sparse (min-max)")
    for size in sizes:
        result = compare(size, steps, repeats)
        layers, hidden, length, batch_size = size
        print(
            f"{layers:>6} {hidden:>6} {length:>6} {batch_size:>5}   {result['dense_s']:>12.3f}  "
            f"{result['sparse_s']:>13.3f}  {result['ratio']:.2f}x ({result['ratio_min']:.2f}-{result['ratio_max']:.2f})"
        )


if __name__ == "__main__":
    main()
