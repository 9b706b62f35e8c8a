"""Benchmark suite: every correction and fusion against stock `transformers` and against its reference-style twin.

    python bench/run.py --quick                 # MiniLM-size BERT at 128 tokens, 3 rounds (~7 min on 2 cores)
    python bench/run.py                         # every case of docs/PERFORMANCE.md (long on a 2-core CPU)
    python bench/run.py --device cuda --dtype bfloat16

For each case (model size × sequence length × forward or forward+backward) and each method, one round times the
stock `BertModel`/`ViTModel` on SDPA, our corrected model and the reference-style twin of `bench/reference_style.py`
back to back, in an order that rotates from round to round, on the same weights and inputs. Reported: the median over
the rounds (after warm-up) of the per-round ratios ours/stock, reference/stock and ours/reference, with their min and
max. Peak memory is measured in a fresh process per case and variant: the rise of the peak resident set size (CPU) or
of the allocator's peak (GPU) during one iteration, over what the model and inputs already occupy; ratios against the
stock model's rise. Results go to a JSON file and to the markdown tables of `docs/PERFORMANCE.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))

from reference_style import to_reference_style  # noqa: E402

from hf_centered import CenteredBertConfig, CenteredBertModel, CenteredViTConfig, CenteredViTModel  # noqa: E402
from hf_centered.corrections import available_corrections  # noqa: E402
from hf_centered.fusion import available_fusions  # noqa: E402
from hf_centered.reporting import machine_description, write_generated_section  # noqa: E402

MODEL_SIZES = {
    "minilm": ("bert", dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)),
    "base": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    "vit-small": (
        "vit",
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16),
    ),
}
BATCH_SIZES = {128: 8, 512: 8, 2048: 2}  # fewer sequences at 2048 tokens
CORRECTION_METHODS = [name for name in available_corrections() if name != "none"]
# Each correction with correction_strength="learned" (gates at their initial 0: the cost, not the effect, is timed).
LEARNED_METHODS = [f"learned:{name}" for name in CORRECTION_METHODS]
METHODS = [
    *CORRECTION_METHODS,
    *LEARNED_METHODS,
    *(f"fusion:{name}" for name in available_fusions() if name != "none"),
]
ALL_METHODS = ["none", *METHODS]  # in the order the reports list them
MODES = ("forward", "forward+backward")
VARIANTS = ("stock", "ours", "reference")


@dataclass(frozen=True)
class Case:
    model: str
    seq_len: int  # tokens per sequence (ViT: the image size giving closest to this many patches + [CLS])
    batch_size: int
    mode: str


def correction_kwargs(method: str) -> dict:
    if method == "none":
        return {"correction": "none"}
    if method.startswith("fusion:"):
        return {"correction": "none", "fusion": method.removeprefix("fusion:")}
    if method.startswith("learned:"):
        return {"correction": method.removeprefix("learned:"), "correction_strength": "learned"}
    return {"correction": method}


def build_models(
    case: Case, method: str, device: str, dtype: torch.dtype, variants: tuple[str, ...] = VARIANTS
) -> dict[str, torch.nn.Module]:
    """Stock, ours and reference-style (or the `variants` asked for), sharing the stock model's weights."""
    family, sizes = MODEL_SIZES[case.model]
    common = dict(sizes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "bert":
        common["max_position_embeddings"] = max(512, case.seq_len)
        stock_class, stock_config = BertModel, BertConfig(**common)
        ours_class, ours_config = CenteredBertModel, CenteredBertConfig
    else:
        common["image_size"] = vit_image_size(case.seq_len, sizes["patch_size"])
        stock_class, stock_config = ViTModel, ViTConfig(**common)
        ours_class, ours_config = CenteredViTModel, CenteredViTConfig
    torch.manual_seed(0)
    models = {"stock": stock_class(stock_config, add_pooling_layer=False)} if "stock" in variants else {}
    for variant in [name for name in ("ours", "reference") if name in variants]:
        model = ours_class(ours_config(**common, **correction_kwargs(method)), add_pooling_layer=False)
        if "stock" in models:  # the corrections' own parameters stay initial
            model.load_state_dict(models["stock"].state_dict(), strict=False)
        models[variant] = to_reference_style(model) if variant == "reference" else model
    for model in models.values():
        model.to(device=device, dtype=dtype).train(case.mode != "forward")
    return models


def vit_image_size(seq_len: int, patch_size: int) -> int:
    """Image side whose patches plus [CLS] come closest to `seq_len` tokens."""
    patches_per_side = max(1, round((seq_len - 1) ** 0.5))
    return patches_per_side * patch_size


def make_inputs(case: Case, model: torch.nn.Module, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    config = model.config
    if MODEL_SIZES[case.model][0] == "bert":
        ids = torch.randint(1, config.vocab_size, (case.batch_size, case.seq_len), generator=generator)
        return {"input_ids": ids.to(device)}
    shape = (case.batch_size, config.num_channels, config.image_size, config.image_size)
    return {"pixel_values": torch.randn(shape, generator=generator).to(device=device, dtype=dtype)}


def step_function(model: torch.nn.Module, inputs: dict, mode: str) -> Callable[[], None]:
    if mode == "forward":

        def step() -> None:
            with torch.no_grad():
                model(**inputs)

    else:

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(**inputs).last_hidden_state.float().square().mean().backward()

    return step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step: Callable[[], None], device: str, repeats: int = 1) -> float:
    """Seconds per step, averaged over `repeats` back-to-back steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def time_case(case: Case, method: str, args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    models = build_models(case, method, args.device, dtype)
    inputs = make_inputs(case, models["stock"], args.device, dtype)
    steps = {name: step_function(model, inputs, case.mode) for name, model in models.items()}
    names = list(steps)
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    # Short steps are repeated within a sample so that timer and scheduler noise stay small against it.
    repeats = max(1, math.ceil(args.min_sample_seconds / timed(steps["stock"], args.device)))
    rounds: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        rounds.append({name: timed(steps[name], args.device, repeats) for name in order})
    return {
        "stock_seconds": spread([r["stock"] for r in rounds]),
        "ours_over_stock": spread([r["ours"] / r["stock"] for r in rounds]),
        "reference_over_stock": spread([r["reference"] / r["stock"] for r in rounds]),
        "ours_over_reference": spread([r["ours"] / r["reference"] for r in rounds]),
    }


def peak_memory_rise(case: Case, method: str, variant: str, args: argparse.Namespace) -> float:
    """Bytes by which one iteration raises the peak memory, measured in this (fresh) process.

    Only the measured model is built (its weights' values do not change its memory), so every probe process has the
    same history.
    """
    dtype = getattr(torch, args.dtype)
    model = build_models(case, method, args.device, dtype, variants=(variant,))[variant]
    inputs = make_inputs(case, model, args.device, dtype)
    step = step_function(model, inputs, case.mode)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    # The high-water mark would still hold the model construction's peak: reset it to the current RSS first.
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_kib("VmRSS")
    step()
    return float((_proc_status_kib("VmHWM") - before) * 1024)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(case: Case, method: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak-memory rise of each variant in a fresh process (the CPU high-water mark never goes down)."""
    # A fixed mmap threshold makes every large tensor its own mapping, returned to the system when freed, so the
    # resident set follows the live tensors (glibc's dynamic threshold would recycle freed heap unseen).
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MALLOC_MMAP_THRESHOLD_": "65536"}
    rises = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--memory-probe", json.dumps([asdict(case), method, variant])]
        command += ["--device", args.device, "--dtype", args.dtype]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        rises[variant] = float(result.stdout.strip().splitlines()[-1])
    return {
        "stock_bytes": rises["stock"],
        "ours_over_stock": rises["ours"] / rises["stock"],
        "reference_over_stock": rises["reference"] / rises["stock"],
    }


def cases_for(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        return [Case("minilm", 128, 8, mode) for mode in MODES]
    cases = []
    for model in args.models:
        seq_lens = [197] if MODEL_SIZES[model][0] == "vit" else args.seq_lens
        for seq_len in seq_lens:
            batch_size = BATCH_SIZES.get(seq_len, 8)
            if model == "base" and seq_len >= 2048:
                batch_size = 1
            cases.extend(Case(model, seq_len, batch_size, mode) for mode in MODES)
    return cases


def format_ratio(entry: dict[str, float]) -> str:
    return f"{entry['median']:.3f} ({entry['min']:.2f}–{entry['max']:.2f})"


# (methods, mode, sequence lengths, measured quantity, limit): the goals of the performance issues, checked on the
# figures measured; "time" and "memory" are ours / stock, "speedup" is reference / ours; for a learned method, time
# and memory are relative to the same correction with fixed strength (the ratio of their ratios to stock).
CHEAP_METHODS = ["centered", "neutreno", "fusion:concat", "fusion:max", "fusion:gate"]
GOALS = [
    (CHEAP_METHODS, "forward+backward", (128, 512), "time", 1.03),
    (CHEAP_METHODS, "forward+backward", (128, 512), "memory", 1.02),
    (["contranorm"], "forward+backward", (512,), "time", 1.25),
    (["contranorm"], "forward+backward", (2048,), "memory", 1.10),
    (["dgn"], "forward+backward", (128, 512, 2048), "time", 1.10),
    (METHODS, "forward+backward", (512,), "speedup", 1.2),
    (LEARNED_METHODS, "forward+backward", (128, 512), "time", 1.01),
    (LEARNED_METHODS, "forward+backward", (128, 512), "memory", 1.01),
]  # fmt: skip


def goal_rows(results: dict) -> list[str]:
    """One markdown row per goal and measured case: the figure and whether it meets the goal."""
    rows = []
    for methods, mode, seq_lens, quantity, limit in GOALS:
        for case_result in results["cases"]:
            case = case_result["case"]
            if case["mode"] != mode or case["seq_len"] not in seq_lens or case["model"].startswith("vit"):
                continue
            timings = {timing["method"]: timing["result"] for timing in case_result["timing"]}
            for method, timing in timings.items():
                if method not in methods:
                    continue
                fixed = method.removeprefix("learned:") if method.startswith("learned:") else None
                if quantity == "time":
                    value = timing["ours_over_stock"]["median"]
                    if fixed is not None:
                        if fixed not in timings:
                            continue
                        value /= timings[fixed]["ours_over_stock"]["median"]
                elif quantity == "speedup":
                    value = 1 / timing["ours_over_reference"]["median"]
                else:
                    memory = case_result["memory"].get(method)
                    if memory is None or (fixed is not None and fixed not in case_result["memory"]):
                        continue
                    value = memory["ours_over_stock"]
                    if fixed is not None:
                        value /= case_result["memory"][fixed]["ours_over_stock"]
                met = value >= limit if quantity == "speedup" else value <= limit
                baseline = "the fixed strength" if fixed is not None else "stock"
                goal = (
                    f"≥ {limit}× faster than reference"
                    if quantity == "speedup"
                    else f"{quantity} ≤ {limit}× {baseline}"
                )
                rows.append(
                    f"| {method} | {case['model']} {case['seq_len']}×{case['batch_size']} | {goal} | {value:.3f} | "
                    f"{'yes' if met else '**no**'} |"
                )
    return rows


def markdown_report(results: dict) -> str:
    settings = results["settings"]
    lines = [
        "Generated by `python bench/run.py"
        + (" --quick" if settings["quick"] else "")
        + f"` (device {settings['device']}, {settings['dtype']}, {settings['rounds']} rounds after "
        f"{settings['warmup']} warm-up; each sample ≥ {settings.get('min_sample_seconds', 0)} s). Ratios are "
        "medians of per-round ratios, with min–max; < 1 means faster. Peak memory: rise of the peak resident set "
        "size during one iteration, in a fresh process per variant.",
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in results["machine"].items()) + ".",
        "",
    ]
    rows = goal_rows(results)
    if rows:
        lines += ["## Goals", "", "| method | case | goal | measured | met |", "|---|---|---|---|---|", *rows, ""]
    for case_result in results["cases"]:
        case = case_result["case"]
        stock = case_result["timing"][0]["result"]["stock_seconds"]["median"] if case_result["timing"] else 0
        lines += [
            f"## {case['model']}, {case['seq_len']} tokens × {case['batch_size']}, {case['mode']}",
            "",
            f"Stock `{'ViTModel' if case['model'].startswith('vit') else 'BertModel'}` on SDPA: {stock * 1000:.1f} ms "
            "per iteration (median of the first method's rounds).",
            "",
            "| method | time ours / stock | time reference / stock | time ours / reference | peak memory ours / stock "
            "| peak memory reference / stock |",
            "|---|---|---|---|---|---|",
        ]
        for timing in case_result["timing"]:
            memory = case_result["memory"].get(timing["method"])
            memory_cells = (
                f"{memory['ours_over_stock']:.3f} | {memory['reference_over_stock']:.3f}" if memory else "– | –"
            )
            result = timing["result"]
            lines.append(
                f"| {timing['method']} | {format_ratio(result['ours_over_stock'])} | "
                f"{format_ratio(result['reference_over_stock'])} | {format_ratio(result['ours_over_reference'])} | "
                f"{memory_cells} |"
            )
        lines.append("")
    return "\n".join(lines)


RECORDED_SETTINGS = ("quick", "device", "dtype", "rounds", "warmup", "min_sample_seconds", "no_memory")
SAME_SETTINGS = tuple(key for key in RECORDED_SETTINGS if key != "quick")  # what --resume requires unchanged
REPORT_BEGIN, REPORT_END = "<!-- bench/run.py: begin -->", "<!-- bench/run.py: end -->"


def write_markdown(path: Path, results: dict) -> None:
    """Writes the report; in an existing file only the part between the markers is replaced (analysis stays)."""
    write_generated_section(path, markdown_report(results), REPORT_BEGIN, REPORT_END)


def report_order(results: dict) -> dict:
    """The results with cases ordered by model (as in `MODEL_SIZES`), length and mode, and methods as listed in
    `--methods`' choices, whatever order `--resume` runs added them in."""
    model_order = list(MODEL_SIZES)

    def by_method(timing: dict) -> int:
        return ALL_METHODS.index(timing["method"])

    def by_case(case_result: dict) -> tuple[int, int, int]:
        case = case_result["case"]
        return model_order.index(case["model"]), case["seq_len"], MODES.index(case["mode"])

    cases = [{**result, "timing": sorted(result["timing"], key=by_method)} for result in results["cases"]]
    return {**results, "cases": sorted(cases, key=by_case)}


def save_results(results: dict, args: argparse.Namespace) -> None:
    ordered = report_order(results)
    if args.json is not None:
        args.json.write_text(json.dumps(ordered, indent=2) + "\n")
    if args.markdown is not None:
        write_markdown(args.markdown, ordered)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MiniLM-size BERT at 128 tokens only, 3 rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on CPU, bfloat16 on GPU")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=list(MODEL_SIZES), choices=list(MODEL_SIZES))
    parser.add_argument("--seq-lens", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method (default 7; quick 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-sample-seconds", type=float, default=0.25, help="repeat short steps up to this long")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: none for --quick)")
    parser.add_argument("--markdown", type=Path, default=None, help="e.g. docs/PERFORMANCE.md")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cases and methods already in --json, measure the rest")  # fmt: skip
    parser.add_argument("--report-from", type=Path, default=None, help="only rewrite --markdown from a results JSON")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.rounds = args.rounds or (3 if args.quick else 7)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.memory_probe is not None:
        case_fields, method, variant = json.loads(args.memory_probe)
        print(peak_memory_rise(Case(**case_fields), method, variant, args))
        return {}
    if args.report_from is not None:
        if args.markdown is None:
            raise SystemExit("--report-from needs --markdown")
        results = report_order(json.loads(args.report_from.read_text()))
        write_markdown(args.markdown, results)
        return results
    settings = {key: value for key, value in vars(args).items() if key in RECORDED_SETTINGS}
    results = {"settings": settings, "machine": machine_description(args.device), "cases": []}
    if args.resume and args.json is not None and args.json.is_file():
        previous = json.loads(args.json.read_text())
        different = [key for key in SAME_SETTINGS if previous["settings"].get(key) != settings[key]]
        if different:
            raise SystemExit(f"--resume: {args.json} was measured with other {', '.join(different)}")
        results["cases"] = previous["cases"]
    for case in cases_for(args):
        case_result = next((result for result in results["cases"] if result["case"] == asdict(case)), None)
        if case_result is None:
            case_result = {"case": asdict(case), "timing": [], "memory": {}}
            results["cases"].append(case_result)
        measured = {timing["method"] for timing in case_result["timing"]}
        for method in args.methods:  # "none": its reference-style twin is the stock model on eager attention
            if method in measured:
                continue
            timing = time_case(case, method, args)
            if not args.no_memory:
                case_result["memory"][method] = measure_memory(case, method, args)
            case_result["timing"].append({"method": method, "result": timing})
            ours_over_stock = timing["ours_over_stock"]["median"]
            ours_over_reference = timing["ours_over_reference"]["median"]
            print(
                f"{case.model:>9} {case.seq_len:>5}×{case.batch_size} {case.mode:<17} {method:<14} "
                f"ours/stock {ours_over_stock:.3f}  ours/reference {ours_over_reference:.3f}",
                flush=True,
            )
            # Saved after every method: a long run that is stopped keeps what it measured (`--resume` goes on).
            save_results(results, args)
    return report_order(results)


if __name__ == "__main__":
    main()
